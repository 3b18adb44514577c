/* large.c: large allocations, 1 to 32 MiB.
 *
 * Keeps 6 large blocks alive; each step replaces one of them with a block
 * of 1..32 MiB (smaller sizes more likely) or grows one by half with
 * realloc, as an image or buffer pool would. Every page of a block is
 * written, so the cost of fresh pages (page faults, zeroing by the kernel)
 * and the benefit of reusing mappings both show. Patterns are checked
 * before each free and after each realloc.
 *
 *   large N     N steps */
#include "bench.h"

#define USAGE "STEPS"
#define LIVE 6
#define MIB (1024u * 1024)

typedef struct {
  unsigned char *p;
  size_t size;
  uint64_t tag;
} blk;

/* The pattern of bench.h writes one word per 4 KiB plus the last word, so
 * every page is touched. After a realloc the old words must still be
 * there, except the old last word which the new fill overwrites. */
static int prefix_ok(const unsigned char *p, size_t old_size, uint64_t tag) {
  uint64_t v;
  for (size_t i = 0; i + 16 <= old_size; i += 4096) {
    memcpy(&v, p + i, 8);
    if (v != (tag ^ i)) return 0;
  }
  memcpy(&v, p + old_size - 8, 8);
  return v == ~tag;
}

int main(int argc, char **argv) {
  bench_name = "large";
  long steps = bench_arg(argc, argv, 1, 600, USAGE);
  blk live[LIVE] = {{0}};
  uint64_t seed = 31337, checksum = 0;

  for (long k = 0; k < steps; k++) {
    blk *b = &live[rng_next(&seed) % LIVE];
    if (b->p && b->size <= 16 * MIB && rng_next(&seed) % 4 == 0) {
      size_t nsize = b->size + b->size / 2;
      b->p = bench_nonnull(realloc(b->p, nsize), nsize);
      if (!prefix_ok(b->p, b->size, b->tag))
        bench_fail("realloc from %zu to %zu bytes lost the contents", b->size,
                   nsize);
      b->size = nsize;
    } else {
      if (b->p) {
        if (!pattern_check(b->p, b->size, b->tag))
          bench_fail("block of %zu bytes was overwritten", b->size);
        free(b->p);
      }
      /* 1 MiB * 2^(5u): log-uniform between 1 and 32 MiB. */
      double u = (double)(rng_next(&seed) >> 11) * (1.0 / 9007199254740992.0);
      size_t size = (size_t)((double)MIB * __builtin_exp2(5.0 * u));
      size = (size + 15) & ~(size_t)15;
      b->p = bench_nonnull(malloc(size), size);
      b->size = size;
    }
    b->tag = rng_next(&seed);
    pattern_fill(b->p, b->size, b->tag);
    checksum += b->size;
  }
  for (int i = 0; i < LIVE; i++) {
    if (live[i].p) {
      if (!pattern_check(live[i].p, live[i].size, live[i].tag))
        bench_fail("block of %zu bytes was overwritten", live[i].size);
      free(live[i].p);
    }
  }
  bench_ok(checksum);
  return 0;
}
