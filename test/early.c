/* early.c: allocation outside the comfortable middle of a program's life:
 * in constructors before main (including a thread started there), in
 * thread-specific-data destructors (keys created before and after the
 * allocator's own, several destructor rounds, and the main thread's own
 * destructors after pthread_exit from main), in atexit handlers (one of
 * them registering another and one starting a thread), and in destructors.
 *
 *   early exit           main returns normally
 *   early pthread-exit   main leaves through pthread_exit, so the main
 *                        thread's TSD destructors run and the process ends
 *                        when its last thread does
 *
 * Either way it re-executes itself as the child ("child" or
 * "child-pthread-exit") and checks that the child ended in time, exited 0
 * and printed every marker: the interesting parts run after main, where the
 * child's exit status alone could not tell whether they ran. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef TEST_ALLOT
#include "allot.h"
#endif

static int failed;

/* Exit-time code cannot rely on stdio: write(2) directly. */
static void say(int fd, const char *s) {
  size_t n = strlen(s);
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

static int quiet; /* the checking parent also runs the exit-time code */

static void marker(const char *m) {
  if (quiet) return;
  say(1, m);
  say(1, "\n");
}

static void fail(const char *what) {
  say(2, "early: FAILED: ");
  say(2, what);
  say(2, "\n");
  failed = 1;
}

#define CHECK(cond, what)                                                      \
  do {                                                                         \
    if (!(cond)) fail(what " (" #cond ")");                                    \
  } while (0)

static uint8_t pat(uint64_t seed, size_t i) {
  return (uint8_t)(((seed + 1) * 0x9E3779B97F4A7C15ull) >> ((i & 7) * 8)) ^
         (uint8_t)(i >> 3);
}

static void fill(void *p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++)
    ((uint8_t *)p)[i] = pat(seed, i);
}

static int intact(const void *p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++)
    if (((const uint8_t *)p)[i] != pat(seed, i)) return 0;
  return 1;
}

static int is_ours(const void *p) {
#ifdef TEST_ALLOT
  return allot_owns(p);
#else
  return p != NULL;
#endif
}

/* A round of everything: returns 1 if all went well. */
static int exercise(uint64_t seed) {
  static const size_t sizes[] = {1, 24, 200, 3000, 9000, 100000, 3 << 20};
  int ok = 1;
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = sizes[i];
    uint8_t *p = malloc(n);
    if (!p || !is_ours(p) || ((uintptr_t)p & 15)) {
      ok = 0;
      continue;
    }
    fill(p, n, seed + i);
    uint8_t *q = realloc(p, n * 2 + 5);
    if (!q || !intact(q, n, seed + i)) {
      ok = 0;
      free(q ? q : p);
      continue;
    }
    free(q);
    uint8_t *c = calloc(n, 1);
    if (!c) {
      ok = 0;
      continue;
    }
    for (size_t k = 0; k < n; k++)
      if (c[k]) {
        ok = 0;
        break;
      }
    free(c);
    void *a = aligned_alloc(256, n);
    if (!a || ((uintptr_t)a & 255)) ok = 0;
    free(a);
  }
  char *s = strdup("early allocation");
  if (!s || strcmp(s, "early allocation") != 0 || !is_ours(s)) ok = 0;
  free(s);
  return ok;
}

/* ---- before main ---------------------------------------------------------*/

enum { KEEP = 5000 };
static uint8_t *ctor_block; /* allocated before main, freed in main */
static uint8_t *dtor_block; /* allocated before main, freed in a destructor */
static uint8_t *exit_block; /* allocated in main, freed in an atexit handler */
static int ctor_ok, ctor_thread_ok, ctor_default_ok;
static pthread_key_t early_key, late_key;
static int early_key_ok;

static void *ctor_thread(void *arg) {
  (void)arg;
  ctor_thread_ok = exercise(300);
  return NULL;
}

static void tsd_destructor(void *v);

static void atexit_from_ctor(void);

__attribute__((constructor(101))) static void early_ctor(void) {
  ctor_ok = exercise(100);
  ctor_block = malloc(KEEP);
  dtor_block = calloc(1, KEEP);
  if (ctor_block) fill(ctor_block, KEEP, 1);
  if (dtor_block) fill(dtor_block, KEEP, 2);
  early_key_ok = pthread_key_create(&early_key, tsd_destructor) == 0;
  pthread_t t;
  if (pthread_create(&t, NULL, ctor_thread, NULL) == 0) pthread_join(t, NULL);
  atexit(atexit_from_ctor);
}

__attribute__((constructor)) static void default_ctor(void) {
  ctor_default_ok = exercise(200);
}

/* ---- thread-specific data ------------------------------------------------*/

/* Values set on a key carry a tag, so a destructor can tell which key and
 * round it came from and check the block's contents. */
typedef struct {
  int key;   /* 0 early_key, 1 late_key */
  int round; /* destructor rounds so far */
  size_t size;
  uint8_t data[];
} tsd_val;

static pthread_mutex_t tsd_lock = PTHREAD_MUTEX_INITIALIZER;
static int tsd_calls[2], tsd_bad;
static volatile int main_tsd_phase; /* set once main's own destructors run */
static int main_tsd_calls;

static tsd_val *tsd_new(int key, int round, size_t size) {
  tsd_val *v = malloc(sizeof *v + size);
  if (!v) return NULL;
  v->key = key;
  v->round = round;
  v->size = size;
  fill(v->data, size, (uint64_t)key * 100 + (uint64_t)round);
  return v;
}

static void tsd_destructor(void *arg) {
  tsd_val *v = arg;
  int ok =
      intact(v->data, v->size, (uint64_t)v->key * 100 + (uint64_t)v->round);
  ok &= is_ours(v);
  /* allocate while the thread (and maybe its heap) is being torn down */
  ok &= exercise(500 + (uint64_t)v->round);
  int key = v->key, round = v->round;
  size_t size = v->size;
  free(v);
  pthread_mutex_lock(&tsd_lock);
  tsd_calls[key]++;
  if (!ok) tsd_bad++;
  if (main_tsd_phase) main_tsd_calls++;
  pthread_mutex_unlock(&tsd_lock);
  /* set the key again: the destructor must be called once more */
  if (round < 2) {
    tsd_val *again = tsd_new(key, round + 1, size * 3 + 100);
    pthread_setspecific(key ? late_key : early_key, again);
  }
}

static void *tsd_thread(void *arg) {
  size_t size = 64 + 4000 * (uintptr_t)arg;
  pthread_setspecific(early_key, tsd_new(0, 0, size));
  pthread_setspecific(late_key, tsd_new(1, 0, size + 7));
  /* some blocks the thread never frees */
  for (int i = 0; i < 20; i++) {
    void *leak = malloc(100 * (size_t)i + 1);
    if (!leak) fail("malloc in tsd thread");
  }
  return NULL;
}

/* ---- exit time ------------------------------------------------------------*/

static void *exit_thread(void *arg) {
  (void)arg;
  return exercise(700) ? (void *)1 : NULL;
}

static void atexit_nested(void) {
  CHECK(exercise(800), "allocation in an atexit handler registered at exit");
  marker("atexit-nested-ok");
}

static int via_pthread_exit; /* main leaves through pthread_exit */

static void atexit_from_main(void) {
  if (via_pthread_exit) {
    /* the main thread's own destructors ran before exit */
    CHECK(main_tsd_calls == 3, "main thread TSD destructors did not all run");
    if (main_tsd_calls == 3) marker("main-tsd-ok");
  }
  CHECK(exit_block && intact(exit_block, KEEP, 3),
        "block from main corrupted at atexit");
  free(exit_block);
  CHECK(exercise(900), "allocation in an atexit handler");
  /* Not after pthread_exit from main: there the thread count is already
   * zero, and this thread's end would itself exit the process. */
  if (!via_pthread_exit) {
    pthread_t t;
    void *r = NULL;
    if (pthread_create(&t, NULL, exit_thread, NULL) == 0) {
      pthread_join(t, &r);
      CHECK(r != NULL, "allocation in a thread started from an atexit handler");
    } else {
      fail("pthread_create in an atexit handler");
    }
  }
  if (atexit(atexit_nested) != 0) fail("atexit from an atexit handler");
  marker("atexit-main-ok");
}

static void atexit_from_ctor(void) {
  CHECK(exercise(1000), "allocation in an atexit handler from a constructor");
  marker("atexit-ctor-ok");
}

__attribute__((destructor)) static void default_dtor(void) {
  CHECK(exercise(1100), "allocation in a destructor");
  marker("dtor-ok");
}

/* Runs after the default-priority destructors of this program. */
__attribute__((destructor(101))) static void late_dtor(void) {
  CHECK(dtor_block && intact(dtor_block, KEEP, 2),
        "block from a constructor corrupted at exit");
  free(dtor_block);
  CHECK(exercise(1200), "allocation in the last destructor");
  if (failed) _exit(1);
  marker("dtor101-ok");
}

/* ---- main
 * ------------------------------------------------------------------*/

static int child(void) __attribute__((noinline));
static int child(void) {
  CHECK(ctor_ok, "allocation in constructor(101)");
  CHECK(ctor_thread_ok, "allocation in a thread started by a constructor");
  CHECK(ctor_default_ok, "allocation in a default constructor");
  CHECK(early_key_ok, "pthread_key_create in a constructor");
  CHECK(ctor_block && intact(ctor_block, KEEP, 1),
        "block from a constructor corrupted in main");
  free(ctor_block);
  if (!failed) marker("ctor-ok");

  if (pthread_key_create(&late_key, tsd_destructor) != 0) {
    fail("pthread_key_create");
    return 1;
  }
  enum { T = 8 };
  pthread_t t[T];
  for (int i = 0; i < T; i++)
    if (pthread_create(&t[i], NULL, tsd_thread, (void *)(uintptr_t)i)) {
      fail("pthread_create");
      return 1;
    }
  for (int i = 0; i < T; i++)
    pthread_join(t[i], NULL);
  /* three rounds per key per thread: the value is set again twice */
  CHECK(tsd_calls[0] == 3 * T && tsd_calls[1] == 3 * T,
        "TSD destructors did not run three rounds per key");
  CHECK(tsd_bad == 0, "allocation or contents wrong in a TSD destructor");
  if (!failed) marker("tsd-ok");

  exit_block = malloc(KEEP);
  if (exit_block) fill(exit_block, KEEP, 3);
  atexit(atexit_from_main);
  marker("main-ok");
  if (!via_pthread_exit) return failed;

  /* Leave main through pthread_exit: the main thread's TSD destructors run
   * (allocating), then, once no thread is left, the process exits from this
   * same thread. A helper thread that never ends would keep it alive. */
  main_tsd_phase = 1;
  pthread_setspecific(late_key, tsd_new(1, 0, 333));
  pthread_exit(NULL);
}

/* ---- the checker
 * -----------------------------------------------------------*/

enum { CHILD_TIMEOUT_MS = 20000 };

static int parent(const char *self, int pexit) {
  static const char *const markers[] = {
      "ctor-ok",        "tsd-ok",         "main-ok",
      "main-tsd-ok",    "atexit-main-ok", "atexit-nested-ok",
      "atexit-ctor-ok", "dtor-ok",        "dtor101-ok"};
  const char *mode = pexit ? "child-pthread-exit" : "child";
  int fds[2];
  if (pipe(fds) != 0) {
    perror("early: pipe");
    return 1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    /* cross-built tests run under an emulator (docs/testing.md, aarch64),
     * which needs the program's own path: its /proc/self/exe is itself */
    const char *emu = getenv("ALLOT_TEST_EMULATOR");
    char path[4096];
    ssize_t n = readlink(self, path, sizeof path - 1);
    if (emu && *emu && n > 0) {
      path[n] = 0;
      execlp(emu, emu, path, mode, (char *)NULL);
    }
    execl(self, self, mode, (char *)NULL);
    perror("early: exec");
    _exit(127);
  }
  close(fds[1]);
  static char out[4096];
  size_t len = 0;
  int timed_out = 0;
  for (;;) {
    struct pollfd pfd = {fds[0], POLLIN, 0};
    int r = poll(&pfd, 1, CHILD_TIMEOUT_MS);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      timed_out = 1;
      kill(pid, SIGKILL);
      break;
    }
    ssize_t n = read(fds[0], out + len, sizeof out - 1 - len);
    if (n <= 0) break;
    len += (size_t)n;
  }
  out[len] = 0;
  close(fds[0]);
  int status;
  waitpid(pid, &status, 0);
  fputs(out, stdout);
  int bad = 0;
  if (timed_out) {
    fprintf(stderr,
            "early: FAILED: the %s process did not end within %d s after "
            "main%s (a thread that never exits keeps it alive?)\n",
            mode, CHILD_TIMEOUT_MS / 1000,
            pexit ? " called pthread_exit" : " returned");
    bad = 1;
  } else if (WIFSIGNALED(status)) {
    fprintf(stderr, "early: FAILED: child killed by signal %d (%s)\n",
            WTERMSIG(status), strsignal(WTERMSIG(status)));
    bad = 1;
  } else if (WEXITSTATUS(status) != 0) {
    fprintf(stderr, "early: FAILED: child exited with status %d\n",
            WEXITSTATUS(status));
    bad = 1;
  }
  for (size_t i = 0; i < sizeof markers / sizeof *markers; i++) {
    if (!pexit && strcmp(markers[i], "main-tsd-ok") == 0) continue;
    char line[64];
    snprintf(line, sizeof line, "%s\n", markers[i]);
    if (!strstr(out, line)) {
      fprintf(stderr, "early: FAILED: the child never printed \"%s\"\n",
              markers[i]);
      bad = 1;
    }
  }
  if (!bad) printf("early (%s): all checks passed\n", mode);
  return bad;
}

int main(int argc, char **argv) {
  const char *arg = argc > 1 ? argv[1] : "exit";
  if (strcmp(arg, "child") == 0) return child();
  if (strcmp(arg, "child-pthread-exit") == 0) {
    via_pthread_exit = 1;
    return child();
  }
  quiet = 1;
  if (strcmp(arg, "exit") == 0) return parent("/proc/self/exe", 0);
  if (strcmp(arg, "pthread-exit") == 0) return parent("/proc/self/exe", 1);
  fprintf(stderr, "usage: early [exit | pthread-exit]\n");
  return 2;
}
