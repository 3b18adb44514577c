/* forkcheck.c: fork while other threads allocate and free, in debug or
 * secure mode (run with ALLOT_DEBUG=1 or ALLOT_SECURE=1): the child's heap
 * check must not take a block the parent's threads were making or freeing
 * at the moment of the fork for a damaged one.
 *
 * Workers allocate blocks of every kind (small, medium, large), fill them,
 * hand half of them to the next worker (which checks and frees them: frees
 * into other heaps' pages, through the quarantine) and free the rest. A
 * forking thread (not the main thread) forks FORKS times; each child runs
 * allot_check(), checks and frees blocks made before the fork, and exits
 * through exit(), where debug mode checks the whole heap again. A child
 * that dies (allot's abort on "damage") or whose check fails is a failure;
 * its first lines of stderr that are not the leak report are shown.
 *
 *   hostile_forkcheck [--vary] [forks] */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
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
#define WORKERS 3
#define FORKS 60
#define SLOTS 64
#define STABLE 24

static atomic_int stop;
static _Atomic(unsigned char *) handoff[WORKERS][SLOTS];
/* blocks of the forking thread's heap, which the child examines whole:
 * the workers free them, scrubbing them in its pages as it forks */
#define GIFTS 48
static _Atomic(unsigned char *) gift[GIFTS];
static unsigned char *stable[STABLE];

static size_t size_of(unsigned k) {
  static const size_t sizes[] = {24,        200,        3000,
                                 5000,      20 * KIB,   90 * KIB,
                                 300 * KIB, 1200 * KIB, 2 * MIB + 100};
  return sizes[k % (sizeof sizes / sizeof sizes[0])];
}

/* A block starts with its size and a seed; its bytes follow from them. */
static unsigned char *make(size_t n, unsigned seed) {
  unsigned char *p = malloc(n);
  if (!p) {
    fprintf(stderr, "forkcheck: malloc(%zu) failed\n", n);
    abort();
  }
  memcpy(p, &n, sizeof n);
  memcpy(p + 8, &seed, sizeof seed);
  for (size_t i = 12; i < n; i += 61)
    p[i] = (unsigned char)(seed + i);
  return p;
}

static void check_free(unsigned char *p) {
  size_t n;
  unsigned seed;
  memcpy(&n, p, sizeof n);
  memcpy(&seed, p + 8, sizeof seed);
  for (size_t i = 12; i < n; i += 61)
    if (p[i] != (unsigned char)(seed + i)) {
      fprintf(stderr, "forkcheck: block %p changed at %zu\n", (void *)p, i);
      abort();
    }
  free(p);
}

static void *worker(void *arg) {
  worker_priority();
  unsigned id = (unsigned)(uintptr_t)arg, k = id * 7;
  unsigned char *mine[8] = {0};
  while (!atomic_load(&stop)) {
    k++;
    unsigned char *p = make(size_of(k), k);
    /* to the next worker, which frees what it finds in its row */
    unsigned char *old = atomic_exchange(
        &handoff[(id + 1) % WORKERS][k % SLOTS], (k & 1) ? p : NULL);
    if (old) check_free(old);
    if (!(k & 1)) {
      unsigned char **slot = &mine[k % 8];
      if (*slot) check_free(*slot);
      *slot = p;
    }
    unsigned char *in = atomic_exchange(&handoff[id][(k * 5) % SLOTS], NULL);
    if (in) check_free(in);
    unsigned char *g = atomic_exchange(&gift[(k * 3 + id) % GIFTS], NULL);
    if (g) check_free(g);
  }
  for (int i = 0; i < 8; i++)
    if (mine[i]) check_free(mine[i]);
  return NULL;
}

/* Large blocks made and freed back to back: their making (canaries and
 * trailer on fresh pages) and their way through the quarantine are where a
 * fork most often lands. With --vary their sizes differ, so that a cached
 * mapping is resized for reuse: allot_check in the child then also meets a
 * mapping resized but not yet given its new bounds (docs/testing.md). */
static int vary;

static void *large_churn(void *arg) {
  (void)arg;
  worker_priority();
  for (unsigned k = 0; !atomic_load(&stop); k++) {
    volatile unsigned char *p =
        malloc(MIB + 100 + (vary ? 4096 * (size_t)(k % 64) : 0));
    if (!p) abort();
    p[0] = 1;
    free((void *)p);
  }
  return NULL;
}

static int child(void) {
  if (allot_check() != 0) {
    char line[256];
    allot_check_report(line, sizeof line);
    fprintf(stderr, "forkcheck: child: allot_check: %s\n", line);
    return 1;
  }
  for (int i = 0; i < STABLE; i++)
    check_free(stable[i]);
  for (unsigned k = 0; k < 30; k++)
    check_free(make(size_of(k), k));
  return 0;
}

/* Run a child to its end; its stderr comes back through a pipe. */
static int fork_one(int round) {
  int err[2];
  if (pipe(err) != 0) return 1;
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    dup2(err[1], 2);
    close(err[0]);
    close(err[1]);
    alarm(30);
    exit(child()); /* debug mode checks the heap here */
  }
  close(err[1]);
  static char buf[1 << 16];
  size_t len = 0;
  ssize_t r;
  char tmp[4096];
  while ((r = read(err[0], tmp, sizeof tmp)) > 0) {
    size_t take =
        (size_t)r < sizeof buf - 1 - len ? (size_t)r : sizeof buf - 1 - len;
    memcpy(buf + len, tmp, take);
    len += take;
  }
  buf[len] = 0;
  close(err[0]);
  int status;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
  fprintf(stderr, "forkcheck: child of fork %d failed (status 0x%x):\n", round,
          status);
  int shown = 0;
  for (char *l = buf; *l && shown < 5;) {
    char *end = strchr(l, '\n');
    if (end) *end = 0;
    if (!strstr(l, "leak report") && strncmp(l, "allot:   ", 9) != 0) {
      fprintf(stderr, "  %s\n", l);
      shown++;
    }
    if (!end) break;
    l = end + 1;
  }
  return 1;
}

static int forks = FORKS;

static void *forker(void *arg) {
  int *failed = arg;
  for (int i = 0; i < forks; i++) {
    for (unsigned k = 0; k < GIFTS; k++) {
      unsigned char *old = atomic_exchange(
          &gift[k], make(size_of(k % 6), (unsigned)i * 100 + k));
      if (old) check_free(old);
    }
    usleep(1000 + (unsigned)(i % 5) * 500);
    *failed += fork_one(i);
  }
  return NULL;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--vary"))
      vary = 1;
    else
      forks = atoi(argv[i]);
  }
  for (int i = 0; i < STABLE; i++)
    stable[i] = make(size_of((unsigned)i), 1000u + (unsigned)i);
  pthread_t w[WORKERS], f, l;
  for (unsigned i = 0; i < WORKERS; i++)
    pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)i);
  pthread_create(&l, NULL, large_churn, NULL);
  int failed = 0;
  pthread_create(&f, NULL, forker, &failed);
  pthread_join(f, NULL);
  atomic_store(&stop, 1);
  for (int i = 0; i < WORKERS; i++)
    pthread_join(w[i], NULL);
  pthread_join(l, NULL);
  for (int i = 0; i < WORKERS; i++)
    for (int s = 0; s < SLOTS; s++)
      if (handoff[i][s]) check_free(handoff[i][s]);
  for (int i = 0; i < GIFTS; i++)
    if (gift[i]) check_free(gift[i]);
  for (int i = 0; i < STABLE; i++)
    check_free(stable[i]);
  printf("forkcheck: %d forks, %d children failed\n", forks, failed);
  return failed ? 1 : 0;
}
