/* micro.c: the allocator's micro benchmark, three separate cases.
 *
 *   micro pair N      N malloc+free pairs of 16..1024 bytes on one thread
 *   micro batch N [B] N batches of B (default 1e6) random-size objects,
 *                     each batch freed in a random order
 *   micro prodcons N  N objects malloc'd by one thread and freed by another,
 *                     handed over through a lock-free ring
 *
 * Each case is its own function (run_pair, run_batch, run_producer /
 * run_consumer) so callgrind can count the instructions of just the loop:
 *   valgrind --tool=callgrind --toggle-collect=run_pair ./micro pair 1000000
 * gives Ir / N per malloc+free pair; the loop itself adds 18 (run_pair's
 * own, exclusive count in callgrind_annotate). */
#define _GNU_SOURCE
#include "bench.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define USAGE "pair|batch|prodcons N [BATCH]"
#define NSIZES 4096 /* a power of two */

static uint32_t sizes[NSIZES];

static void make_sizes(uint64_t seed) {
  for (int i = 0; i < NSIZES; i++)
    sizes[i] = (uint32_t)rng_range(&seed, 16, 1024);
}

/* The sizes sum the checksum uses: the same for every allocator. */
static uint64_t size_sum(long n) {
  uint64_t sum = 0;
  for (long i = 0; i < n; i++)
    sum += sizes[i & (NSIZES - 1)];
  return sum;
}

__attribute__((noinline)) static uint64_t run_pair(long n) {
  uint64_t bad = 0;
  for (long i = 0; i < n; i++) {
    size_t s = sizes[i & (NSIZES - 1)];
    char *p = malloc(s);
    if (!p) bench_fail("malloc(%zu) returned NULL", s);
    p[0] = (char)i;
    p[s - 1] = (char)i;
    bench_escape(p);
    bad |= (uintptr_t)p & 15;
    free(p);
  }
  return bad;
}

__attribute__((noinline)) static uint64_t run_batch(void **objs, long b,
                                                    const uint32_t *order) {
  uint64_t sum = 0;
  for (long i = 0; i < b; i++) {
    size_t s = sizes[i & (NSIZES - 1)];
    uint64_t *p = malloc(s);
    if (!p) bench_fail("malloc(%zu) returned NULL", s);
    if ((uintptr_t)p & 15)
      bench_fail("malloc(%zu) = %p is not 16-byte aligned", s, (void *)p);
    p[0] = (uint64_t)i;
    p[(s / 8) - 1] = ~(uint64_t)i;
    objs[i] = p;
  }
  for (long k = 0; k < b; k++) {
    long i = order[k];
    uint64_t *p = objs[i];
    size_t s = sizes[i & (NSIZES - 1)];
    if (p[0] != (uint64_t)i || p[(s / 8) - 1] != ~(uint64_t)i)
      bench_fail("object %ld of %zu bytes was overwritten", i, s);
    sum += p[0] + s;
    free(p);
  }
  return sum;
}

/* ---- producer/consumer through a single-producer single-consumer ring -- */
#define RING 1024

static struct {
  _Atomic(uint64_t *) slot[RING];
  long n;
  uint64_t consumed_sum;
} ring;

static void ring_wait(unsigned *spins) {
  if (++*spins > 64) {
    *spins = 0;
    sched_yield();
  }
}

__attribute__((noinline)) static void *run_producer(void *arg) {
  (void)arg;
  unsigned spins = 0;
  for (long i = 0; i < ring.n; i++) {
    size_t s = sizes[i & (NSIZES - 1)];
    uint64_t *p = malloc(s);
    if (!p) bench_fail("malloc(%zu) returned NULL", s);
    p[0] = (uint64_t)i;
    p[(s / 8) - 1] = (uint64_t)s;
    _Atomic(uint64_t *) *slot = &ring.slot[i & (RING - 1)];
    while (atomic_load_explicit(slot, memory_order_acquire) != NULL)
      ring_wait(&spins);
    atomic_store_explicit(slot, p, memory_order_release);
  }
  return NULL;
}

__attribute__((noinline)) static void *run_consumer(void *arg) {
  (void)arg;
  unsigned spins = 0;
  uint64_t sum = 0;
  for (long i = 0; i < ring.n; i++) {
    _Atomic(uint64_t *) *slot = &ring.slot[i & (RING - 1)];
    uint64_t *p;
    while ((p = atomic_load_explicit(slot, memory_order_acquire)) == NULL)
      ring_wait(&spins);
    atomic_store_explicit(slot, NULL, memory_order_release);
    size_t s = sizes[i & (NSIZES - 1)];
    if (p[0] != (uint64_t)i || p[(s / 8) - 1] != (uint64_t)s)
      bench_fail("object %ld of %zu bytes arrived corrupted", i, s);
    sum += p[0] + s;
    free(p);
  }
  ring.consumed_sum = sum;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "micro";
  if (argc < 3) bench_usage(USAGE);
  const char *which = argv[1];
  long n = bench_arg(argc, argv, 2, 1, USAGE);
  uint64_t checksum = 0;
  double t0;
  make_sizes(42);

  if (strcmp(which, "pair") == 0) {
    bench_name = "micro pair";
    t0 = bench_now();
    if (run_pair(n))
      bench_fail("malloc returned a block that is not 16-byte aligned");
    double t = bench_now() - t0;
    printf("micro pair: %ld pairs in %.3f s, %.1f ns/pair\n", n, t,
           t * 1e9 / (double)n);
    checksum = size_sum(n) ^ (uint64_t)n;
  } else if (strcmp(which, "batch") == 0) {
    bench_name = "micro batch";
    long b = bench_arg(argc, argv, 3, 1000000, USAGE);
    void **objs = bench_nonnull(malloc(b * sizeof *objs), b * sizeof *objs);
    uint32_t *order =
        bench_nonnull(malloc(b * sizeof *order), b * sizeof *order);
    uint64_t seed = 7;
    for (long i = 0; i < b; i++)
      order[i] = (uint32_t)i;
    for (long i = b - 1; i > 0; i--) {
      long j = (long)(rng_next(&seed) % (uint64_t)(i + 1));
      uint32_t t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    t0 = bench_now();
    for (long k = 0; k < n; k++)
      checksum += run_batch(objs, b, order);
    double t = bench_now() - t0;
    printf("micro batch: %ld x %ld objects in %.3f s, %.1f ns/object\n", n, b,
           t, t * 1e9 / (double)(n * b));
    if (checksum !=
        (uint64_t)n * ((uint64_t)b * (uint64_t)(b - 1) / 2 + size_sum(b)))
      bench_fail("checksum mismatch");
    free(order);
    free(objs);
  } else if (strcmp(which, "prodcons") == 0) {
    bench_name = "micro prodcons";
    pthread_t prod, cons;
    ring.n = n;
    t0 = bench_now();
    if (pthread_create(&cons, NULL, run_consumer, NULL) ||
        pthread_create(&prod, NULL, run_producer, NULL))
      bench_fail("pthread_create failed");
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    double t = bench_now() - t0;
    printf("micro prodcons: %ld objects in %.3f s, %.1f ns/object\n", n, t,
           t * 1e9 / (double)n);
    checksum = ring.consumed_sum;
    if (checksum != (uint64_t)n * (uint64_t)(n - 1) / 2 + size_sum(n))
      bench_fail("checksum mismatch");
  } else {
    bench_usage(USAGE);
  }
  bench_ok(checksum);
  return 0;
}
