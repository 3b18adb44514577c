/* signals.c: allocation from signal handlers, in the one form allot supports.
 *
 * malloc is not async-signal-safe in allot, as in glibc: its slow paths take
 * locks, and a handler that interrupts its own thread inside malloc can
 * deadlock or see a half-updated free list (docs/testing.md). What works,
 * and what programs rely on, is a handler that allocates in a thread that is
 * not inside the allocator when the signal arrives. This test checks that:
 *
 *  - a target thread computes without allocating (with an alternate signal
 *    stack), while other threads, with the signal blocked, allocate and free
 *    hard and hand blocks over; the main thread signals the target
 *    thousands of times, and its handler allocates small, medium and large
 *    blocks, reallocates, checks and frees them, and frees blocks allocated
 *    by the other threads;
 *  - fresh threads that have never allocated make their very first
 *    allocation in a signal handler (the thread heap is set up there).
 *
 * Errors are counted in the handler and reported afterwards. Standard names,
 * through liballot.so. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define SIGNALS 3000
#define FRESH 24
#define SLOTS 32

static atomic_int stop;
static atomic_long handled, handler_errors, foreign_freed;
/* blocks from the allocating threads: their size in the first word, then
 * 0x77 bytes */
static void *_Atomic slots[SLOTS];

static void handler(int sig) {
  (void)sig;
  int saved = errno;
  long n = atomic_fetch_add(&handled, 1);
  size_t sizes[4] = {24 + (size_t)(n % 200), 3000,
                     20 * KIB + (size_t)(n % 7) * KIB,
                     (n % 64 == 0) ? 2 * MIB : 512};
  unsigned char *b[4];
  for (int i = 0; i < 4; i++) {
    b[i] = malloc(sizes[i]);
    if (!b[i]) {
      atomic_fetch_add(&handler_errors, 1);
      continue;
    }
    memset(b[i], (int)(i + 1), sizes[i]);
  }
  unsigned char *r = b[0] ? realloc(b[0], sizes[0] * 3) : NULL;
  if (r) {
    for (size_t k = 0; k < sizes[0]; k++)
      if (r[k] != 1) {
        atomic_fetch_add(&handler_errors, 1);
        break;
      }
    b[0] = r;
  }
  for (int i = 1; i < 4; i++)
    if (b[i] && (b[i][0] != i + 1 || b[i][sizes[i] - 1] != i + 1))
      atomic_fetch_add(&handler_errors, 1);
  for (int i = 0; i < 4; i++)
    free(b[i]);
  /* a block another thread allocated */
  int s = (int)(n % SLOTS);
  unsigned char *p = atomic_exchange(&slots[s], NULL);
  if (p) {
    size_t sz;
    memcpy(&sz, p, sizeof sz);
    if (sz < 16 || sz > 8192 || p[8] != 0x77 || p[sz - 1] != 0x77)
      atomic_fetch_add(&handler_errors, 1);
    free(p);
    atomic_fetch_add(&foreign_freed, 1);
  }
  errno = saved;
}

static void block_signal(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *allocator(void *arg) {
  block_signal();
  uint64_t x = (uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
  void *keep[64] = {0};
  while (!atomic_load(&stop)) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    int i = (int)(x % 64);
    free(keep[i]);
    keep[i] = malloc(16 + x % 30000);
    size_t sz = 16 + (x >> 20) % 5000;
    unsigned char *p = malloc(sz);
    if (p) {
      memset(p, 0x77, sz);
      memcpy(p, &sz, sizeof sz);
      free(atomic_exchange(&slots[(x >> 40) % SLOTS], p));
    }
  }
  for (int i = 0; i < 64; i++)
    free(keep[i]);
  return NULL;
}

static atomic_int target_ready;

/* Computes and yields, never allocates: whenever the signal lands, it is
 * outside allot. */
static void *target(void *arg) {
  (void)arg;
  stack_t ss;
  ss.ss_size = 256 * KIB;
  ss.ss_sp = malloc(ss.ss_size); /* before any signal can arrive */
  ss.ss_flags = 0;
  if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0) {
    fprintf(stderr, "signals: sigaltstack failed\n");
    exit(1);
  }
  atomic_store(&target_ready, 1);
  volatile uint64_t acc = 1;
  /* computing with a system call now and then: a signal to a thread that
   * never enters the kernel can wait a whole scheduler tick */
  while (!atomic_load(&stop)) {
    for (int i = 0; i < 200; i++)
      acc = acc * 6364136223846793005ull + 1;
    sched_yield();
  }
  void *stack = ss.ss_sp;
  ss.ss_flags = SS_DISABLE;
  sigaltstack(&ss, NULL);
  free(stack);
  return NULL;
}

/* A thread whose first allocation happens in the handler. */
static atomic_int fresh_ready;
static void *fresh(void *arg) {
  (void)arg;
  sigset_t set; /* created by the main thread, which blocks the signal */
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  atomic_fetch_add(&fresh_ready, 1);
  while (!atomic_load(&stop))
    usleep(1000); /* interrupted by the signal */
  return NULL;
}

int main(int argc, char **argv) {
  int nsignals = argc > 1 ? atoi(argv[1]) : SIGNALS;
  alarm(100); /* a lost signal or a deadlock in a handler ends as a failure */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sa.sa_flags = SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, NULL);

  pthread_t tt, al[2];
  pthread_create(&tt, NULL, target, NULL);
  for (int i = 0; i < 2; i++)
    pthread_create(&al[i], NULL, allocator, (void *)(intptr_t)(i + 1));
  block_signal(); /* the main thread only sends */
  while (!atomic_load(&target_ready))
    usleep(100);

  for (int i = 0; i < nsignals; i++) {
    long before = atomic_load(&handled);
    pthread_kill(tt, SIGUSR1);
    /* wait for it to be handled (signals of one kind do not queue) */
    while (atomic_load(&handled) == before)
      sched_yield();
  }
  long main_handled = atomic_load(&handled);

  /* first allocation of a thread inside a handler */
  pthread_t ft[FRESH];
  for (int i = 0; i < FRESH; i++)
    pthread_create(&ft[i], NULL, fresh, NULL);
  while (atomic_load(&fresh_ready) < FRESH)
    usleep(100);
  for (int i = 0; i < FRESH; i++) {
    long before = atomic_load(&handled);
    pthread_kill(ft[i], SIGUSR1);
    while (atomic_load(&handled) == before)
      sched_yield();
  }

  atomic_store(&stop, 1);
  for (int i = 0; i < FRESH; i++)
    pthread_join(ft[i], NULL);
  pthread_join(tt, NULL);
  for (int i = 0; i < 2; i++)
    pthread_join(al[i], NULL);
  for (int i = 0; i < SLOTS; i++)
    free(atomic_exchange(&slots[i], NULL));

  long errs = atomic_load(&handler_errors);
  printf("signals: %ld handlers ran in a computing thread, %d in fresh "
         "threads; %ld blocks of other threads freed in handlers; %ld errors\n",
         main_handled, FRESH, atomic_load(&foreign_freed), errs);
  if (main_handled < nsignals) {
    fprintf(stderr, "signals: FAILED: only %ld of %d signals handled\n",
            main_handled, nsignals);
    return 1;
  }
  if (errs) fprintf(stderr, "signals: FAILED: %ld errors in handlers\n", errs);
  return errs ? 1 : 0;
}
