/* gens.c: power-of-two sizes with long-lived survivors across generations
 * of threads.
 *
 * Each generation starts BENCH_THREADS (default 4) threads. A thread churns
 * a working set of 256 blocks of power-of-two sizes (16 bytes .. 64 KiB,
 * small ones far more common), then leaves 512 survivors behind when it
 * exits. Survivors live for three generations: a thread of a later
 * generation checks and frees them, long after the thread that allocated
 * them is gone. This is the pattern of a program whose worker pools come and
 * go while caches and results outlive them; it stresses reclaiming the
 * memory and the heaps of threads that have exited.
 *
 *   gens N [OPS]   N generations; OPS churn steps per thread (default 20000) */
#include "bench.h"

#include <pthread.h>

#define USAGE "GENERATIONS [OPS]"
#define WORKING 256
#define SURVIVORS 512
#define LIFETIME 3 /* generations a survivor lives */

typedef struct {
  void *p;
  uint32_t size;
  uint64_t tag;
} blk;

typedef struct {
  int gen, idx, nthreads;
  blk *to_free;   /* survivors of generation gen-LIFETIME, or NULL */
  blk *survivors; /* filled by this thread */
  uint64_t sum;
} job;

static long ops;

static uint32_t pow2_size(uint64_t *seed) {
  /* 16 << k with k in 0..12, each step half as likely as the one below. */
  uint64_t r = rng_next(seed);
  int k = 0;
  while (k < 12 && (r & 1)) {
    r >>= 1;
    k++;
  }
  return 16u << k;
}

static void blk_new(blk *b, uint64_t *seed, uint64_t *sum) {
  b->size = pow2_size(seed);
  b->tag = rng_next(seed);
  b->p = bench_nonnull(malloc(b->size), b->size);
  pattern_fill(b->p, b->size, b->tag);
  *sum += b->size + (b->tag & 0xff);
}

static void blk_free(blk *b) {
  if (!pattern_check(b->p, b->size, b->tag))
    bench_fail("block of %u bytes was overwritten", b->size);
  free(b->p);
}

static void *worker(void *arg) {
  job *j = arg;
  uint64_t seed = (uint64_t)j->gen * 7919 + (uint64_t)j->idx, sum = 0;
  blk work[WORKING];
  for (int i = 0; i < WORKING; i++)
    blk_new(&work[i], &seed, &sum);
  for (long k = 0; k < ops; k++) {
    blk *b = &work[rng_next(&seed) % WORKING];
    blk_free(b);
    blk_new(b, &seed, &sum);
  }
  if (j->to_free) {
    for (int i = 0; i < SURVIVORS; i++)
      blk_free(&j->to_free[i]);
    free(j->to_free);
  }
  j->survivors = bench_nonnull(malloc(SURVIVORS * sizeof(blk)), 1);
  for (int i = 0; i < SURVIVORS; i++)
    blk_new(&j->survivors[i], &seed, &sum);
  for (int i = 0; i < WORKING; i++)
    blk_free(&work[i]);
  j->sum = sum;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "gens";
  long gens = bench_arg(argc, argv, 1, 40, USAGE);
  ops = bench_arg(argc, argv, 2, 20000, USAGE);
  int n = bench_threads(4);
  /* ring[g % LIFETIME][t]: survivors of generation g's thread t. */
  blk **ring[LIFETIME];
  for (int i = 0; i < LIFETIME; i++)
    ring[i] = bench_nonnull(calloc(n, sizeof(blk *)), 1);
  pthread_t *th = bench_nonnull(malloc(n * sizeof *th), 1);
  job *jobs = bench_nonnull(calloc(n, sizeof *jobs), 1);
  uint64_t checksum = 0;

  for (long g = 0; g < gens; g++) {
    blk **slot = ring[g % LIFETIME];
    for (int t = 0; t < n; t++) {
      jobs[t] = (job){.gen = (int)g, .idx = t, .nthreads = n};
      /* Survivors of another thread of an older generation. */
      jobs[t].to_free = slot[(t + 1) % n];
      slot[(t + 1) % n] = NULL;
      if (pthread_create(&th[t], NULL, worker, &jobs[t]))
        bench_fail("pthread_create failed");
    }
    for (int t = 0; t < n; t++) {
      pthread_join(th[t], NULL);
      slot[t] = jobs[t].survivors;
      checksum += jobs[t].sum;
    }
  }
  for (int i = 0; i < LIFETIME; i++) {
    for (int t = 0; t < n; t++) {
      if (ring[i][t]) {
        for (int k = 0; k < SURVIVORS; k++)
          blk_free(&ring[i][t][k]);
        free(ring[i][t]);
      }
    }
    free(ring[i]);
  }
  free(jobs);
  free(th);
  bench_ok(checksum);
  return 0;
}
