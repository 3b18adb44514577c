/* threads.c: thousands of threads created and exiting.
 *
 * THREADS threads run in batches of BATCH at a time (joinable and detached
 * mixed). Each allocates small, medium and now and then large blocks, frees
 * some itself, frees blocks that earlier threads — most of them exited by now
 * — left in a shared mailbox (frees into abandoned heaps), and leaves some of
 * its own there before exiting. Every block carries a pattern checked before
 * it is freed. At the end the main thread frees what is left, trims, and
 * checks that the process's resident memory is bounded: exited threads'
 * heaps must be reused or given back, not kept one per thread. Standard
 * names, through liballot.so.
 *
 *   hostile_threads [threads]   (default 5000) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define BATCH 48
#define MAILBOX 4096
#define PER_THREAD 40

typedef struct {
  unsigned char *p;
  size_t size;
  uint32_t tag;
} blk_t;

static pthread_mutex_t mail_lock = PTHREAD_MUTEX_INITIALIZER;
static blk_t mailbox[MAILBOX];
static int mail_n;
static atomic_int failures;
static atomic_int running;
static atomic_long freed_foreign;

static void fail(const char *what) {
  if (atomic_fetch_add(&failures, 1) < 20)
    fprintf(stderr, "threads: FAILED: %s\n", what);
}

static void stamp(blk_t *b) {
  for (size_t i = 0; i < b->size; i += 61)
    b->p[i] = (unsigned char)(b->tag + i);
  b->p[b->size - 1] = (unsigned char)(b->tag + b->size - 1);
}

static void check_free(blk_t *b) {
  for (size_t i = 0; i < b->size; i += 61)
    if (b->p[i] != (unsigned char)(b->tag + i)) {
      fail("block corrupted");
      break;
    }
  if (b->p[b->size - 1] != (unsigned char)(b->tag + b->size - 1))
    fail("block end corrupted");
  free(b->p);
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static size_t pick_size(uint64_t *s, long id) {
  uint64_t r = rnd(s) % 100;
  if (r < 80) return 1 + rnd(s) % 1024;
  if (r < 95) return 1024 + rnd(s) % (7 * KIB);
  if (r < 99 || id % 50) return 9 * KIB + rnd(s) % (200 * KIB);
  return 2 * MIB; /* one thread in fifty, now and then */
}

static void *worker(void *arg) {
  long id = (long)(intptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(id + 1);
  blk_t mine[PER_THREAD];
  for (int i = 0; i < PER_THREAD; i++) {
    mine[i].size = pick_size(&s, id);
    mine[i].tag = (uint32_t)(id * PER_THREAD + i);
    mine[i].p = malloc(mine[i].size);
    if (!mine[i].p) {
      fail("malloc returned NULL");
      mine[i].size = 0;
      continue;
    }
    stamp(&mine[i]);
  }
  /* blocks of threads that have probably exited */
  blk_t got[8];
  int ngot = 0;
  pthread_mutex_lock(&mail_lock);
  while (ngot < 8 && mail_n > 0)
    got[ngot++] = mailbox[--mail_n];
  pthread_mutex_unlock(&mail_lock);
  for (int i = 0; i < ngot; i++)
    check_free(&got[i]);
  atomic_fetch_add(&freed_foreign, ngot);
  /* free half, leave a quarter behind, free the rest */
  for (int i = 0; i < PER_THREAD; i += 2)
    if (mine[i].size) check_free(&mine[i]);
  pthread_mutex_lock(&mail_lock);
  int i = 1;
  for (; i < PER_THREAD && mail_n < MAILBOX; i += 4)
    if (mine[i].size) mailbox[mail_n++] = mine[i];
  pthread_mutex_unlock(&mail_lock);
  for (int k = 1; k < PER_THREAD; k += 2)
    if (mine[k].size && ((k - 1) % 4 != 0 || k >= i)) check_free(&mine[k]);
  atomic_fetch_sub(&running, 1);
  return NULL;
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

int main(int argc, char **argv) {
  int total = argc > 1 ? atoi(argv[1]) : 5000;
  pthread_attr_t detached;
  pthread_attr_init(&detached);
  pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
  pthread_attr_t small_stack;
  pthread_attr_init(&small_stack);
  pthread_attr_setstacksize(&small_stack, 128 * KIB);
  long rss_start = rss_kib(), rss_first = 0;
  int created = 0;
  while (created < total) {
    pthread_t tid[BATCH];
    int joinable[BATCH];
    int n = 0;
    for (; n < BATCH && created < total; n++, created++) {
      joinable[n] = created % 3 != 0;
      atomic_fetch_add(&running, 1);
      int e = pthread_create(&tid[n], joinable[n] ? &small_stack : &detached,
                             worker, (void *)(intptr_t)created);
      if (e) {
        atomic_fetch_sub(&running, 1);
        fail("pthread_create");
        joinable[n] = 0;
      }
    }
    for (int i = 0; i < n; i++)
      if (joinable[i]) pthread_join(tid[i], NULL);
    while (atomic_load(&running) > BATCH)
      usleep(100); /* detached ones */
    if (created == 10 * BATCH) rss_first = rss_kib();
  }
  while (atomic_load(&running) > 0)
    usleep(1000);
  usleep(10000); /* the last detached threads are past their last free, but
                    their exit (heap abandonment) may still be running */
  for (int i = 0; i < mail_n; i++)
    check_free(&mailbox[i]);
  mail_n = 0;
  malloc_trim(0);
  long rss_end = rss_kib();
  printf("threads: %d threads, %ld frees of exited threads' blocks, RSS %ld "
         "KiB at start, %ld after %d threads, %ld at the end\n",
         total, atomic_load(&freed_foreign), rss_start, rss_first, 10 * BATCH,
         rss_end);
  /* A heap kept per exited thread with even one page would be 64 KiB each:
   * 5000 threads, over 300 MiB. Bounded means: not much above what the first
   * few hundred threads needed. */
  if (total >= 20 * BATCH && rss_end > rss_first + 64 * 1024) {
    fprintf(stderr,
            "threads: FAILED: resident memory grew from %ld to %ld KiB "
            "with the number of threads\n",
            rss_first, rss_end);
    atomic_fetch_add(&failures, 1);
  }
  return atomic_load(&failures) ? 1 : 0;
}
