/* cache-scratch.c: passive false sharing, after Hoard's cache-scratch.
 *
 * The main thread allocates one small object per worker and hands it over;
 * each worker frees it, then repeatedly allocates an object of the same
 * size, writes every byte of it many times and frees it. An allocator that
 * gives a worker the memory another thread's object sits next to (as the
 * freed hand-over objects do) makes two cores write the same cache line.
 * BENCH_THREADS workers, default 4.
 *
 *   cache-scratch N [SIZE [WRITES]]   N objects per worker of SIZE bytes
 *                                     (default 8), each written WRITES times
 *                                     (default 1000) */
#include "bench.h"

#include <pthread.h>

#define USAGE "OBJECTS [SIZE [WRITES]]"

static long iterations, size, writes;

typedef struct {
  char *handed;
  uint64_t sum;
} job;

static void *worker(void *arg) {
  job *j = arg;
  uint64_t sum = 0;
  free(j->handed);
  for (long i = 0; i < iterations; i++) {
    volatile unsigned char *p = bench_nonnull(malloc(size), size);
    for (long b = 0; b < size; b++)
      p[b] = (unsigned char)i;
    for (long w = 0; w < writes; w++)
      for (long b = 0; b < size; b++)
        p[b]++;
    for (long b = 0; b < size; b++) {
      if (p[b] != (unsigned char)(i + writes))
        bench_fail("object written by another thread");
      sum += p[b];
    }
    free((void *)p);
  }
  j->sum = sum;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "cache-scratch";
  iterations = bench_arg(argc, argv, 1, 2000, USAGE);
  size = bench_arg(argc, argv, 2, 8, USAGE);
  writes = bench_arg(argc, argv, 3, 1000, USAGE);
  int n = bench_threads(4);
  pthread_t *th = bench_nonnull(malloc(n * sizeof *th), 1);
  job *jobs = bench_nonnull(calloc(n, sizeof *jobs), 1);
  for (int i = 0; i < n; i++)
    jobs[i].handed = bench_nonnull(malloc(size), size);
  for (int i = 0; i < n; i++)
    if (pthread_create(&th[i], NULL, worker, &jobs[i]))
      bench_fail("pthread_create failed");
  uint64_t checksum = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(th[i], NULL);
    checksum += jobs[i].sum;
  }
  free(jobs);
  free(th);
  bench_ok(checksum);
  return 0;
}
