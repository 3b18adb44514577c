/* cache-thrash.c: active false sharing, after Hoard's cache-thrash.
 *
 * Each worker thread repeatedly allocates a small object, writes every
 * byte of it many times and frees it. Objects are never shared, but an
 * allocator that serves small objects of different threads from one cache
 * line makes the cores fight over that line. BENCH_THREADS workers,
 * default 4.
 *
 *   cache-thrash N [SIZE [WRITES]]   N objects per worker of SIZE bytes
 *                                    (default 8), each written WRITES times
 *                                    (default 1000) */
#include "bench.h"

#include <pthread.h>

#define USAGE "OBJECTS [SIZE [WRITES]]"

static long iterations, size, writes;

static void *worker(void *arg) {
  uint64_t *out = arg, sum = 0;
  for (long i = 0; i < iterations; i++) {
    volatile unsigned char *p = bench_nonnull(malloc(size), size);
    for (long b = 0; b < size; b++)
      p[b] = (unsigned char)(i * 7);
    for (long w = 0; w < writes; w++)
      for (long b = 0; b < size; b++)
        p[b]++;
    for (long b = 0; b < size; b++) {
      if (p[b] != (unsigned char)(i * 7 + writes))
        bench_fail("object written by another thread");
      sum += p[b];
    }
    free((void *)p);
  }
  *out = sum;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "cache-thrash";
  iterations = bench_arg(argc, argv, 1, 2000, USAGE);
  size = bench_arg(argc, argv, 2, 8, USAGE);
  writes = bench_arg(argc, argv, 3, 1000, USAGE);
  int n = bench_threads(4);
  pthread_t *th = bench_nonnull(malloc(n * sizeof *th), 1);
  uint64_t *sums = bench_nonnull(calloc(n, sizeof *sums), 1);
  for (int i = 0; i < n; i++)
    if (pthread_create(&th[i], NULL, worker, &sums[i]))
      bench_fail("pthread_create failed");
  uint64_t checksum = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(th[i], NULL);
    checksum += sums[i];
  }
  free(sums);
  free(th);
  bench_ok(checksum);
  return 0;
}
