/* forkheld.c: fork while one of allot's locks is held, for certain.
 *
 * hostile_forklocks forks while workers run through allot's locked paths
 * and catches a lock the fork handlers leave out only when a fork happens
 * to land while it is held: for the locks held a few instructions at a
 * time (the segment list's, the zero-size blocks') it rarely does. Here the
 * test hooks (src/os.c, allot_test_hold_lock) make the next thread that
 * takes the named lock keep it for HOLD_MS while the main thread forks. If
 * fork_prepare takes that lock, fork waits until it is let go and the child
 * gets it free; if not, the child inherits it held by a thread it does not
 * have, and the same call in the child hangs until the alarm kills it.
 * A case whose call never takes its lock fails too, so the test cannot turn
 * into one that checks nothing.
 *
 *   hostile_forkheld LOCK   (spare set zero seg_list large heaps brk; brk
 *                            with ALLOT_USE_BRK=1)
 * Prefixed API, linked with allot-testhooks. Exit 0 pass, 1 fail. */
#include <allot.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void *allot_test_lock(const char *name);
void allot_test_hold_lock(void *lock, long us);
int allot_test_holding(void);

#define HOLD_MS 300
#define MIB ((size_t)1 << 20)

static const char *lock_name;
static int flip;

static void *touch(void *p, size_t n) {
  if (!p) {
    printf("forkheld %s: allocation failed\n", lock_name);
    exit(1);
  }
  memset(p, 0x5a, n < 4096 ? n : 4096);
  return p;
}

static void *thread_mallocs(void *arg) {
  (void)arg;
  allot_free(touch(allot_malloc(100), 100));
  return NULL;
}

/* One call that takes the lock (and whatever else its path takes). */
static void call(void) {
  if (!strcmp(lock_name, "spare")) {
    allot_heap_t *h = allot_heap_new();
    if (!h) exit(1);
    allot_free(touch(allot_heap_malloc(h, 64), 64));
    allot_heap_destroy(h);
  } else if (!strcmp(lock_name, "set")) {
    flip = !flip;
    if (allot_option_set(ALLOT_OPTION_PURGE_DELAY, flip ? 40 : 60) != 0) {
      printf("forkheld set: allot_option_set failed\n");
      exit(1);
    }
  } else if (!strcmp(lock_name, "zero")) {
    allot_free(allot_malloc(0));
  } else if (!strcmp(lock_name, "seg_list") || !strcmp(lock_name, "large")) {
    /* a large block: a mapping registered in the segment list, cached when
     * freed */
    allot_free(touch(allot_malloc(9 * MIB), 9 * MIB));
  } else if (!strcmp(lock_name, "brk")) {
    /* with ALLOT_USE_BRK=1, a new mapping comes from brk: each call asks
     * for more than any mapping the cache holds */
    static size_t grow;
    grow += 8 * MIB;
    allot_free(touch(allot_malloc(grow + MIB), grow + MIB));
  } else if (!strcmp(lock_name, "heaps")) {
    pthread_t t; /* a thread's first malloc makes its heap */
    if (pthread_create(&t, NULL, thread_mallocs, NULL) != 0) exit(1);
    pthread_join(t, NULL);
  } else {
    printf("forkheld: unknown lock %s\n", lock_name);
    exit(2);
  }
}

static void *holder(void *arg) {
  (void)arg;
  call();
  return NULL;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: hostile_forkheld LOCK\n");
    return 2;
  }
  lock_name = argv[1];
  setvbuf(stdout, NULL, _IONBF, 0);
  /* start-up done, and each path run once, so that the held call takes
   * the lock on its usual path (a spare heap to reuse, a cached mapping) */
  call();
  call();
  void *lock = allot_test_lock(lock_name);
  if (!lock) {
    printf("forkheld: no lock named %s\n", lock_name);
    return 2;
  }
  allot_test_hold_lock(lock, HOLD_MS * 1000L);
  pthread_t t;
  if (pthread_create(&t, NULL, holder, NULL) != 0) return 1;
  double t0 = now_ms();
  while (allot_test_holding() != 1 && now_ms() - t0 < 5000)
    usleep(1000);
  if (allot_test_holding() != 1) {
    printf("forkheld %s: FAILED: the call never took the lock\n", lock_name);
    allot_test_hold_lock(NULL, 0);
    pthread_join(t, NULL);
    return 1;
  }
  double tf = now_ms();
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    call(); /* hangs on the lock if fork left it held */
    call();
    _exit(0);
  }
  double waited = now_ms() - tf;
  if (pid < 0) {
    perror("fork");
    return 1;
  }
  int st = 0;
  waitpid(pid, &st, 0);
  pthread_join(t, NULL);
  if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
    printf("forkheld %s: FAILED: the child hung on the lock (fork_prepare "
           "does not take it)\n",
           lock_name);
    return 1;
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    printf("forkheld %s: FAILED: child status %#x\n", lock_name, st);
    return 1;
  }
  printf("forkheld %s: ok (fork waited %.0f ms for the lock held %d ms)\n",
         lock_name, waited, HOLD_MS);
  return 0;
}
