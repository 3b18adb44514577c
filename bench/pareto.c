/* pareto.c: random churn with Pareto-distributed sizes.
 *
 * A pool of 20000 slots; each step picks a random slot, frees what is there
 * (after checking its pattern) and, most of the time, allocates a new block
 * whose size follows a Pareto law (minimum 16 bytes, shape 1.1, capped at
 * 512 KiB): mostly small blocks, a heavy tail of large ones, and random
 * lifetimes. One allocation in ten uses calloc and must come back zeroed;
 * one step in ten resizes a live block with realloc, which must keep its
 * contents.
 *
 *   pareto N     N steps */
#include "bench.h"

#include <math.h>

#define USAGE "STEPS"
#define SLOTS 20000
#define MAXSIZE (512u * 1024)

typedef struct {
  unsigned char *p;
  uint32_t size;
  uint64_t tag;
} slot;

static uint32_t pareto_size(uint64_t *seed) {
  double u =
      ((double)(rng_next(seed) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
  double x = 16.0 / pow(u, 1.0 / 1.1);
  return x > MAXSIZE ? MAXSIZE : (uint32_t)x;
}

static int is_zero(const unsigned char *p, size_t n) {
  /* First, last and a spread of bytes between: calloc must zero them all. */
  for (size_t i = 0; i < n; i += 61)
    if (p[i]) return 0;
  return p[n - 1] == 0;
}

int main(int argc, char **argv) {
  bench_name = "pareto";
  long steps = bench_arg(argc, argv, 1, 3000000, USAGE);
  slot *slots = bench_nonnull(calloc(SLOTS, sizeof *slots), 1);
  uint64_t seed = 2024, checksum = 0;

  for (long k = 0; k < steps; k++) {
    slot *s = &slots[rng_next(&seed) % SLOTS];
    uint64_t r = rng_next(&seed) % 100;
    if (s->p && r < 10) {
      /* Resize in place of replacing: the common prefix must survive. */
      uint32_t size = pareto_size(&seed);
      uint32_t keep = size < s->size ? size : s->size;
      unsigned char first = s->p[0], last = s->p[keep - 1];
      s->p = bench_nonnull(realloc(s->p, size), size);
      if (s->p[0] != first || s->p[keep - 1] != last)
        bench_fail("realloc from %u to %u bytes lost the contents", s->size,
                   size);
      s->size = size;
      s->tag = rng_next(&seed);
      pattern_fill(s->p, s->size, s->tag);
      checksum += size;
      continue;
    }
    if (s->p) {
      if (!pattern_check(s->p, s->size, s->tag))
        bench_fail("block of %u bytes was overwritten", s->size);
      free(s->p);
      s->p = NULL;
    }
    if (r >= 30) {
      uint32_t size = pareto_size(&seed);
      if (r >= 90) {
        s->p = bench_nonnull(calloc(1, size), size);
        if (!is_zero(s->p, size))
          bench_fail("calloc(1, %u) returned memory that is not zeroed", size);
      } else {
        s->p = bench_nonnull(malloc(size), size);
      }
      s->size = size;
      s->tag = rng_next(&seed);
      pattern_fill(s->p, size, s->tag);
      checksum += size ^ (s->tag & 0xffff);
    }
  }
  for (int i = 0; i < SLOTS; i++) {
    if (slots[i].p) {
      if (!pattern_check(slots[i].p, slots[i].size, slots[i].tag))
        bench_fail("block of %u bytes was overwritten", slots[i].size);
      free(slots[i].p);
    }
  }
  free(slots);
  bench_ok(checksum);
  return 0;
}
