/* fork_lazy.c: allot registers its fork handlers only once the process has
 * a second thread (src/os.c, "fork handlers"), and fork stays safe on both
 * sides of that moment.
 *
 * The program defines __register_atfork, which pthread_atfork calls, and
 * exports it, so that liballot.so's registration reaches it first; it counts
 * the registrations from liballot.so (dladdr on the DSO handle) and passes
 * them on to libc's. Checked, in this order:
 *   - single-threaded, after small, medium, large and aligned blocks,
 *     realloc and calloc: no registration (where glibc has
 *     __libc_single_threaded; else one, at start-up), when run as
 *     `fork_lazy single` with ALLOT_PURGE_THREAD=0 (the purge thread is a
 *     second thread: starting it registers them);
 *   - a fork then: the child frees the parent's blocks, allocates, starts a
 *     thread that allocates, forks a grandchild, and exits 0;
 *   - the first thread finds them registered when it starts: the thread
 *     that created it did it (pthread_create's calloc);
 *   - a thread that only frees the main thread's blocks while the main
 *     thread forks, and one that allocates and frees while it forks again:
 *     every child exits 0 within its alarm (a lock held across fork would
 *     deadlock it);
 *   - exactly one registration in the end, however many threads came.
 * Without TEST_ALLOT (the system malloc) only the fork checks apply. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int registrations; /* by liballot.so */
static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fork_lazy:%d: FAILED: %s: ", __LINE__, #cond);          \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      failures++;                                                              \
    }                                                                          \
  } while (0)

typedef int (*register_fn)(void (*)(void), void (*)(void), void (*)(void),
                           void *);

__attribute__((visibility("default"))) int
__register_atfork(void (*prepare)(void), void (*parent)(void),
                  void (*child)(void), void *dso) {
  static register_fn next;
  if (!next) next = (register_fn)dlsym(RTLD_NEXT, "__register_atfork");
  Dl_info info;
  if (dso && dladdr(dso, &info) && info.dli_fname &&
      strstr(info.dli_fname, "liballot"))
    atomic_fetch_add(&registrations, 1);
  return next ? next(prepare, parent, child, dso) : -1;
}

enum { BLOCKS = 600 };
static void *blocks[BLOCKS];
static const size_t sizes[] = {16,   48,    200,    1000,   3000,
                               9000, 40000, 300000, 2 << 20};

static void fill(void) {
  for (int i = 0; i < BLOCKS; i++) {
    size_t n = sizes[i % (sizeof sizes / sizeof *sizes)];
    blocks[i] = malloc(n);
    if (!blocks[i]) abort();
    memset(blocks[i], (unsigned char)i, n < 64 ? n : 64);
  }
}

static int check_and_free(void) {
  int bad = 0;
  for (int i = 0; i < BLOCKS; i++) {
    if (!blocks[i]) continue;
    unsigned char *p = blocks[i];
    if (p[0] != (unsigned char)i) bad++;
    free(p);
    blocks[i] = NULL;
  }
  return bad;
}

static void *churn_once(void *arg) {
  (void)arg;
  for (int i = 0; i < 2000; i++) {
    void *p = malloc(sizes[i % (sizeof sizes / sizeof *sizes)]);
    if (!p) abort();
    free(p);
  }
  return NULL;
}

static atomic_int stop;
static void *churn_until_stopped(void *arg) {
  while (!atomic_load(&stop))
    churn_once(arg);
  return NULL;
}

static void *free_all(void *arg) {
  (void)arg;
  for (int i = 0; i < BLOCKS; i++) {
    free(blocks[i]);
    blocks[i] = NULL;
  }
  return NULL;
}

/* the process's first thread: the registration must be done before it
 * runs, by the thread that creates it (calloc in pthread_create) */
static int seen_at_start = -1;
static void *note_registrations(void *arg) {
  seen_at_start = atomic_load(&registrations);
  return free_all(arg);
}

/* fork; the child runs `body` under an alarm and exits with its result */
static void forked(const char *what, int (*body)(void)) {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    _exit(body());
  }
  CHECK(pid > 0, "%s: fork failed", what);
  if (pid <= 0) return;
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: child %s %d", what,
        WIFEXITED(st) ? "exited" : "killed by signal",
        WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

static int grandchild(void) {
  churn_once(NULL);
  return 0;
}

static int child_of_single(void) {
  if (check_and_free()) return 2;
  churn_once(NULL);
  pthread_t t;
  if (pthread_create(&t, NULL, churn_once, NULL)) return 3;
  pthread_join(t, NULL);
  pid_t pid = fork(); /* registered now: the child had a thread */
  if (pid == 0) _exit(grandchild());
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 4;
}

static int child_churn(void) {
  churn_once(NULL);
  return 0;
}

int main(int argc, char **argv) {
  /* "single": run with ALLOT_PURGE_THREAD=0, since the purge thread, once
   * started, is a second thread and registers the handlers first */
  int single = argc > 1 && strcmp(argv[1], "single") == 0;
  /* single-threaded: every kind of block, and no registration */
  fill();
  void *a = aligned_alloc(4096, 5000), *c = calloc(100, 100);
  void *r = realloc(malloc(100), 100000);
  CHECK(a && c && r, "allocations");
  free(a);
  free(c);
  free(r);
#if defined(TEST_ALLOT) && __has_include(<sys/single_threaded.h>)
  if (single)
    CHECK(atomic_load(&registrations) == 0,
          "%d registrations in a single-threaded process",
          atomic_load(&registrations));
  else /* at most the purge thread's */
    CHECK(atomic_load(&registrations) <= 1, "%d registrations",
          atomic_load(&registrations));
#endif
  forked("single-threaded parent", child_of_single);

  /* a thread that only frees what the main thread allocated */
  pthread_t t;
  /* every small size with a free block at hand, so that pthread_create's
   * own calloc takes no lock (which would register them too) */
  for (size_t n = 16; n <= 4096; n += 16) {
    void *w = calloc(1, n);
    if (!w) abort();
    free(w);
  }
  if (pthread_create(&t, NULL, note_registrations, NULL)) abort();
  for (int i = 0; i < 5; i++)
    forked("while another thread frees", child_churn);
  pthread_join(t, NULL);
#ifdef TEST_ALLOT
  CHECK(seen_at_start == 1,
        "%d registrations when the first thread started (want 1)",
        seen_at_start);
#endif

  /* a thread that allocates and frees all along */
  if (pthread_create(&t, NULL, churn_until_stopped, NULL)) abort();
  for (int i = 0; i < 20; i++)
    forked("while another thread allocates", child_churn);
  atomic_store(&stop, 1);
  pthread_join(t, NULL);
  for (int i = 0; i < 4; i++) {
    if (pthread_create(&t, NULL, churn_once, NULL)) abort();
    pthread_join(t, NULL);
  }
#ifdef TEST_ALLOT
  CHECK(atomic_load(&registrations) == 1,
        "%d registrations after threads (want 1)", atomic_load(&registrations));
#endif
  if (failures) return 1;
  printf("fork_lazy: ok\n");
  return 0;
}
