/* threadchurn.c: thread churn: many short-lived threads that each
 * allocate a little.
 *
 * Each generation the main thread allocates a batch of objects per thread,
 * starts BENCH_THREADS (default 4) threads and joins them. A thread frees
 * the batch it was handed (memory of the main thread), allocates 300
 * objects of 16..2048 bytes, frees half of them itself and hands the other
 * half back to the main thread, which frees them after the join. The cost of
 * setting up and tearing down per-thread state, and of returning memory
 * across threads, dominates.
 *
 *   threadchurn N     N generations */
#include "bench.h"

#include <pthread.h>

#define USAGE "GENERATIONS"
#define HANDED 100
#define OWN 300

typedef struct {
  void *p;
  uint32_t size;
  uint64_t tag;
} blk;

typedef struct {
  blk handed[HANDED];
  blk back[OWN / 2];
  uint64_t seed, sum;
} job;

static void blk_new(blk *b, uint64_t *seed) {
  b->size = (uint32_t)rng_range(seed, 16, 2048);
  b->tag = rng_next(seed);
  b->p = bench_nonnull(malloc(b->size), b->size);
  pattern_fill(b->p, b->size, b->tag);
}

static void blk_free(blk *b) {
  if (!pattern_check(b->p, b->size, b->tag))
    bench_fail("block of %u bytes was overwritten", b->size);
  free(b->p);
}

static void *worker(void *arg) {
  job *j = arg;
  blk own[OWN];
  for (int i = 0; i < HANDED; i++)
    blk_free(&j->handed[i]);
  for (int i = 0; i < OWN; i++) {
    blk_new(&own[i], &j->seed);
    j->sum += own[i].size;
  }
  for (int i = 0; i < OWN; i++) {
    if (i & 1)
      j->back[i / 2] = own[i];
    else
      blk_free(&own[i]);
  }
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "threadchurn";
  long gens = bench_arg(argc, argv, 1, 2000, USAGE);
  int n = bench_threads(4);
  pthread_t *th = bench_nonnull(malloc(n * sizeof *th), 1);
  job *jobs = bench_nonnull(calloc(n, sizeof *jobs), sizeof *jobs);
  uint64_t seed = 77, checksum = 0;
  for (long g = 0; g < gens; g++) {
    for (int t = 0; t < n; t++) {
      job *j = &jobs[t];
      j->seed = (uint64_t)g * 131 + (uint64_t)t;
      j->sum = 0;
      for (int i = 0; i < HANDED; i++) {
        blk_new(&j->handed[i], &seed);
        checksum += j->handed[i].size;
      }
      if (pthread_create(&th[t], NULL, worker, j))
        bench_fail("pthread_create failed");
    }
    for (int t = 0; t < n; t++) {
      pthread_join(th[t], NULL);
      checksum += jobs[t].sum;
      for (int i = 0; i < OWN / 2; i++)
        blk_free(&jobs[t].back[i]);
    }
  }
  free(jobs);
  free(th);
  bench_ok(checksum);
  return 0;
}
