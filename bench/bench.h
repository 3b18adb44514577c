/* bench.h: helpers shared by the benchmark workloads in bench/.
 *
 * Every workload is a plain C program that only uses the standard
 * allocation API, so one binary runs under any allocator chosen with
 * LD_PRELOAD. Conventions the runner (tools/allot) relies on:
 *   - argv[1] is a size parameter (work units); more arguments are optional;
 *   - on success the last line of stdout is "NAME: ok checksum=HEX" and the
 *     exit status is 0; the checksum depends only on the arguments, never on
 *     the allocator or on thread scheduling, so the runner can compare it
 *     across allocators;
 *   - a failed self-check prints "NAME: FAIL ..." and exits 1, so a broken
 *     allocator loses instead of winning;
 *   - bad arguments print a usage line and exit 2. */
#ifndef ALLOT_BENCH_H
#define ALLOT_BENCH_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *bench_name __attribute__((unused)) = "bench";

__attribute__((noreturn, format(printf, 1, 2))) static void
bench_fail(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  printf("%s: FAIL ", bench_name);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
  exit(1);
}

#define BENCH_CHECK(cond, ...)                                                 \
  do {                                                                         \
    if (!(cond)) bench_fail(__VA_ARGS__);                                      \
  } while (0)

__attribute__((noreturn)) static void bench_usage(const char *usage) {
  fprintf(stderr, "usage: %s %s\n", bench_name, usage);
  exit(2);
}

/* A positive integer argument; absent means `def`. */
static inline long bench_arg(int argc, char **argv, int idx, long def,
                             const char *usage) {
  char *end;
  long v;
  if (idx >= argc) return def;
  errno = 0;
  v = strtol(argv[idx], &end, 10);
  if (errno || end == argv[idx] || *end || v <= 0) bench_usage(usage);
  return v;
}

/* A value out of memory is an allocator failure, not an environment one:
 * the workloads are sized to fit easily in RAM. */
static inline void *bench_nonnull(void *p, size_t size) {
  if (!p && size) bench_fail("out of memory allocating %zu bytes", size);
  return p;
}

static inline void bench_ok(uint64_t checksum) {
  printf("%s: ok checksum=%016llx\n", bench_name, (unsigned long long)checksum);
  fflush(stdout);
}

/* splitmix64: tiny, good enough, and the same on every platform. */
static inline uint64_t rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static inline uint64_t rng_range(uint64_t *state, uint64_t lo, uint64_t hi) {
  return lo + rng_next(state) % (hi - lo + 1);
}

static inline uint64_t mix64(uint64_t x) {
  uint64_t s = x;
  return rng_next(&s);
}

/* Fill / verify a block with a pattern derived from a tag, touching the
 * first and last words and one word per 4 KiB in between: enough to catch
 * overlapping blocks without making the workload a memset benchmark. */
static inline void pattern_fill(void *p, size_t size, uint64_t tag) {
  unsigned char *b = p;
  size_t i;
  if (size < 8) {
    for (i = 0; i < size; i++)
      b[i] = (unsigned char)(tag >> (8 * i));
    return;
  }
  for (i = 0; i + 16 <= size; i += 4096) {
    uint64_t v = tag ^ i;
    memcpy(b + i, &v, 8);
  }
  {
    uint64_t v = ~tag;
    memcpy(b + size - 8, &v, 8);
  }
}

static inline int pattern_check(const void *p, size_t size, uint64_t tag) {
  const unsigned char *b = p;
  size_t i;
  if (size < 8) {
    for (i = 0; i < size; i++)
      if (b[i] != (unsigned char)(tag >> (8 * i))) return 0;
    return 1;
  }
  for (i = 0; i + 16 <= size; i += 4096) {
    uint64_t v;
    memcpy(&v, b + i, 8);
    if (v != (tag ^ i)) return 0;
  }
  {
    uint64_t v;
    memcpy(&v, b + size - 8, 8);
    if (v != ~tag) return 0;
  }
  return 1;
}

/* Number of worker threads: BENCH_THREADS if set, else `def`. */
static inline int bench_threads(int def) {
  const char *s = getenv("BENCH_THREADS");
  if (s && *s) {
    int n = atoi(s);
    if (n > 0 && n <= 256) return n;
  }
  return def;
}

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Resident set size in KiB, from /proc/self/statm. */
static inline long bench_rss_kib(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return -1;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  fclose(f);
  return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Keep the compiler from eliding a malloc/free pair whose memory is unused. */
static inline void bench_escape(void *p) {
  __asm__ volatile("" : : "r"(p) : "memory");
}

#endif /* ALLOT_BENCH_H */
