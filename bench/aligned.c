/* aligned.c: aligned allocations.
 *
 * Random churn over a pool of 4000 blocks allocated with aligned_alloc,
 * posix_memalign and memalign in turn, alignments from 16 bytes to 64 KiB
 * (small alignments most common, as in SIMD buffers, cache-line-aligned
 * structures and page-aligned I/O buffers), sizes a random multiple of the
 * alignment up to 4 times it, plus 32..4096 bytes. Every result is checked
 * for its alignment, patterned, and checked again before it is freed.
 *
 *   aligned N     N steps */
#define _GNU_SOURCE
#include "bench.h"

#include <malloc.h>

#define USAGE "STEPS"
#define SLOTS 4000

typedef struct {
  void *p;
  uint32_t size, align;
  uint64_t tag;
} slot;

static size_t pick_align(uint64_t *seed) {
  /* 16..256 most of the time; page and larger alignments now and then. */
  uint64_t r = rng_next(seed) % 100;
  if (r < 70) return (size_t)16 << rng_range(seed, 0, 4);  /* 16..256 */
  if (r < 95) return (size_t)512 << rng_range(seed, 0, 3); /* 512..4096 */
  return (size_t)8192 << rng_range(seed, 0, 3);            /* 8 KiB..64 KiB */
}

int main(int argc, char **argv) {
  bench_name = "aligned";
  long steps = bench_arg(argc, argv, 1, 2000000, USAGE);
  slot *slots = bench_nonnull(calloc(SLOTS, sizeof *slots), 1);
  uint64_t seed = 4242, checksum = 0;

  for (long k = 0; k < steps; k++) {
    slot *s = &slots[rng_next(&seed) % SLOTS];
    if (s->p) {
      if (!pattern_check(s->p, s->size, s->tag))
        bench_fail("block of %u bytes aligned to %u was overwritten", s->size,
                   s->align);
      free(s->p);
    }
    size_t align = pick_align(&seed);
    size_t size =
        align * rng_range(&seed, 0, 4) + rng_range(&seed, 2, 256) * 16;
    size = (size + align - 1) & ~(align - 1); /* aligned_alloc's contract */
    void *p = NULL;
    switch (k % 3) {
    case 0:
      p = aligned_alloc(align, size);
      break;
    case 1:
      if (posix_memalign(&p, align, size) != 0) p = NULL;
      break;
    default:
      p = memalign(align, size);
      break;
    }
    bench_nonnull(p, size);
    if ((uintptr_t)p & (align - 1))
      bench_fail("%zu bytes aligned to %zu returned %p", size, align, p);
    s->p = p;
    s->size = (uint32_t)size;
    s->align = (uint32_t)align;
    s->tag = rng_next(&seed);
    pattern_fill(p, size, s->tag);
    checksum += size + align;
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
