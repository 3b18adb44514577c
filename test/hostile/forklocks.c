/* forklocks.c: fork from a thread while every allot lock is being taken.
 *
 * test/fork.c forks while threads allocate in general; this test aims at
 * allot's locks one by one. Each worker keeps one locked path busy: medium
 * blocks freed by another thread (the owner heap's medium lock), large blocks
 * and their reallocs (the large-mapping cache lock), zero-size blocks and
 * fresh segments (the zero and segment-list locks), malloc_trim (purging
 * under the heap's segment lock), and thread creation and exit (the heap
 * list lock). Meanwhile a forking thread — not the main thread — forks
 * repeatedly. Each child, under an alarm that turns a deadlock into a
 * failure, goes through every one of those paths itself, frees blocks the
 * parent allocated before the fork, runs a thread, and forks a grandchild
 * from that thread which does the same; any lock left held by fork hangs it.
 * Standard names, through liballot.so.
 *
 *   hostile_forklocks [forks]   (default 150) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker_priority.h"

#include "allot.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define FORKS 150
#define STABLE 64

static atomic_int stop;
static atomic_int failures;

/* Blocks allocated before any fork and never touched by the workers: every
 * child checks and frees them. */
static unsigned char *stable[STABLE];
static size_t stable_size[STABLE];

static void failf(const char *what) {
  fprintf(stderr, "forklocks: FAILED: %s (pid %d)\n", what, (int)getpid());
  atomic_fetch_add(&failures, 1);
}

static size_t stable_len(int i) {
  static const size_t sizes[] = {24, 700, 5000, 40 * KIB, 300 * KIB, 2 * MIB};
  return sizes[i % 6];
}

static void stable_make(void) {
  for (int i = 0; i < STABLE; i++) {
    stable_size[i] = stable_len(i);
    stable[i] = malloc(stable_size[i]);
    if (!stable[i]) {
      failf("malloc of a stable block");
      exit(1);
    }
    memset(stable[i], i + 1, stable_size[i]);
  }
}

/* ---- the workers: one locked path each ----------------------------------- */

/* Medium blocks allocated here, freed by the next worker: cross-thread medium
 * frees take the owner heap's lock. */
#define HANDOFF 64
static void *_Atomic handoff[HANDOFF];

static void *w_medium_alloc(void *arg) {
  (void)arg;
  worker_priority();
  unsigned i = 0;
  while (!atomic_load(&stop)) {
    void *p = malloc(16 * KIB + (i % 50) * KIB);
    if (!p) {
      failf("medium malloc");
      continue;
    }
    memset(p, 0x3c, 64);
    void *old = atomic_exchange(&handoff[i++ % HANDOFF], p);
    free(old);
  }
  return NULL;
}

static void *w_medium_free(void *arg) {
  (void)arg;
  worker_priority();
  unsigned i = 0;
  while (!atomic_load(&stop)) {
    void *p = atomic_exchange(&handoff[i++ % HANDOFF], NULL);
    if (p && ((unsigned char *)p)[63] != 0x3c) failf("medium block corrupted");
    free(p);
    if (!p) sched_yield();
  }
  return NULL;
}

static void *w_large(void *arg) {
  (void)arg;
  worker_priority();
  unsigned i = 0;
  while (!atomic_load(&stop)) {
    size_t sz = 2 * MIB + (i++ % 7) * 300 * KIB;
    unsigned char *p = malloc(sz);
    if (!p) {
      failf("large malloc");
      continue;
    }
    p[0] = 7;
    p[sz - 1] = 9;
    unsigned char *q = realloc(p, sz * 2);
    if (!q) {
      failf("large realloc");
      free(p);
      continue;
    }
    if (q[0] != 7 || q[sz - 1] != 9) failf("large realloc lost data");
    free(q);
  }
  return NULL;
}

static void *w_zero_and_segments(void *arg) {
  (void)arg;
  worker_priority();
  void *keep[256];
  unsigned i = 0;
  while (!atomic_load(&stop)) {
    void *z = malloc(0);
    if (!z) failf("malloc(0)");
    /* 256 blocks of 8 KiB: a new segment's pages, then given back */
    for (int k = 0; k < 256; k++)
      keep[k] = malloc(8 * KIB);
    for (int k = 0; k < 256; k++)
      free(keep[k]);
    free(z);
    if (++i % 8 == 0) malloc_trim(0);
  }
  return NULL;
}

static void *short_thread(void *arg) {
  free(malloc((size_t)(uintptr_t)arg));
  return NULL;
}

static void *w_threads(void *arg) {
  (void)arg;
  worker_priority();
  unsigned i = 0;
  while (!atomic_load(&stop)) {
    pthread_t t;
    if (pthread_create(&t, NULL, short_thread,
                       (void *)(uintptr_t)(16 + i++ % 4000)) == 0)
      pthread_join(t, NULL);
  }
  return NULL;
}

/* ---- the child ------------------------------------------------------------
 */

static void exercise(void) {
  for (int i = 0; i < 200; i++)
    free(malloc(16 + (size_t)i * 8));
  void *m = malloc(100 * KIB);
  void *l = malloc(3 * MIB);
  void *z = malloc(0);
  if (!m || !l || !z) failf("allocation in child");
  l = realloc(l, 9 * MIB);
  if (!l) failf("large realloc in child");
  free(m);
  free(l);
  free(z);
  void *keep[300];
  for (int k = 0; k < 300; k++)
    keep[k] = malloc(8 * KIB);
  for (int k = 0; k < 300; k++)
    free(keep[k]);
  malloc_trim(0);
}

static int child_body(int depth);

static void *child_thread(void *arg) {
  int depth = (int)(intptr_t)arg;
  exercise();
  if (depth == 0) {
    /* a grandchild forked from a thread of the child */
    pid_t pid = fork();
    if (pid == 0) _exit(child_body(1));
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 0)
      failf("grandchild failed");
  }
  return NULL;
}

static int child_body(int depth) {
  alarm(20); /* a lock left held by fork hangs here: SIGALRM ends it */
  exercise();
  if (depth == 0)
    for (int i = 0; i < STABLE; i++) {
      for (size_t k = 0; k < stable_size[i]; k += 97)
        if (stable[i][k] != (unsigned char)(i + 1)) {
          failf("block from before the fork corrupted in the child");
          break;
        }
      free(stable[i]);
    }
  pthread_t t;
  if (pthread_create(&t, NULL, child_thread, (void *)(intptr_t)depth) != 0)
    failf("pthread_create in child");
  else
    pthread_join(t, NULL);
  return atomic_load(&failures) ? 1 : 0;
}

static int forks = FORKS;

static void *forker(void *arg) {
  (void)arg;
  for (int i = 0; i < forks; i++) {
    usleep(500 + (unsigned)(i % 5) * 300);
    pid_t pid = fork();
    if (pid == 0) _exit(child_body(0));
    if (pid < 0) {
      failf("fork");
      continue;
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) {
      failf("waitpid");
      continue;
    }
    if (WIFSIGNALED(st)) {
      fprintf(stderr, "forklocks: FAILED: child %d killed by signal %d%s\n", i,
              WTERMSIG(st),
              WTERMSIG(st) == SIGALRM ? " (deadlock: a lock held across fork)"
                                      : "");
      atomic_fetch_add(&failures, 1);
    } else if (WEXITSTATUS(st) != 0) {
      fprintf(stderr, "forklocks: FAILED: child %d exited %d\n", i,
              WEXITSTATUS(st));
      atomic_fetch_add(&failures, 1);
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) forks = atoi(argv[1]);
  stable_make();
  void *(*fns[])(void *) = {w_medium_alloc, w_medium_free, w_large,
                            w_zero_and_segments, w_threads};
  enum { NW = sizeof fns / sizeof fns[0] };
  pthread_t w[NW], f;
  for (int i = 0; i < NW; i++)
    if (pthread_create(&w[i], NULL, fns[i], NULL) != 0) {
      fprintf(stderr, "forklocks: pthread_create failed\n");
      return 1;
    }
  if (pthread_create(&f, NULL, forker, NULL) != 0) return 1;
  pthread_join(f, NULL);
  atomic_store(&stop, 1);
  for (int i = 0; i < NW; i++)
    pthread_join(w[i], NULL);
  for (int i = 0; i < HANDOFF; i++)
    free(atomic_exchange(&handoff[i], NULL));
  for (int i = 0; i < STABLE; i++)
    free(stable[i]);
  int n = atomic_load(&failures);
  printf("forklocks: %d forks from a thread, %d failures\n", forks, n);
  return n ? 1 : 0;
}
