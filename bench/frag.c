/* frag.c: fragmentation: how much memory stays resident as the mix of
 * sizes shifts, sampled over time.
 *
 * Each cycle: (1) allocate ~24 MiB of small objects (16..512 bytes) and free
 * all but a random 1 in 16, the survivors living until the end of the next
 * cycle; (2) allocate ~24 MiB of medium objects (8..64 KiB) and free 9 in
 * 10 of them; (3) allocate ~24 MiB of 1..4 KiB objects, which only fit in
 * the holes left by (1) and (2) if the allocator can reuse memory across
 * size classes; (4) free everything of the cycle but the small survivors.
 * At the end everything is freed. An allocator that keeps sparse pages
 * resident, or cannot reuse memory freed by another size, shows a higher
 * and steadier curve; one that returns memory promptly drops at the end.
 *
 * The resident set size (from /proc/self/statm) is printed as lines
 *   rss MILLISECONDS KIB
 * about 40 times a cycle; the runner draws them as a line chart.
 *
 *   frag N     N cycles */
#include "bench.h"

#define USAGE "CYCLES"
#define MIB (1024u * 1024)
#define PHASE_BYTES (24u * MIB)

typedef struct {
  unsigned char *p;
  uint32_t size;
  uint64_t tag;
} blk;

typedef struct {
  blk *b;
  size_t n, cap;
} blist;

static double t_start;
static long peak_kib;

static void sample(void) {
  long kib = bench_rss_kib();
  if (kib > peak_kib) peak_kib = kib;
  printf("rss %.1f %ld\n", (bench_now() - t_start) * 1000.0, kib);
}

static void push(blist *l, blk b) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 1024;
    l->b = bench_nonnull(realloc(l->b, l->cap * sizeof(blk)), 1);
  }
  l->b[l->n++] = b;
}

static void blk_free(blk *b) {
  if (!pattern_check(b->p, b->size, b->tag))
    bench_fail("block of %u bytes was overwritten", b->size);
  free(b->p);
  b->p = NULL;
}

/* Allocates `bytes` worth of blocks of lo..hi bytes into l, sampling RSS
 * ten times along the way. */
static uint64_t fill(blist *l, size_t bytes, uint32_t lo, uint32_t hi,
                     uint64_t *seed) {
  size_t total = 0, next = bytes / 10;
  uint64_t sum = 0;
  while (total < bytes) {
    blk b;
    b.size = (uint32_t)rng_range(seed, lo, hi);
    b.tag = rng_next(seed);
    b.p = bench_nonnull(malloc(b.size), b.size);
    pattern_fill(b.p, b.size, b.tag);
    push(l, b);
    total += b.size;
    sum += b.size;
    if (total >= next) {
      sample();
      next += bytes / 10;
    }
  }
  return sum;
}

/* Frees each block of l except, with probability keep/16, moving it to
 * `survivors` (when given). */
static void thin(blist *l, blist *survivors, unsigned keep16, uint64_t *seed) {
  size_t step = l->n / 10 + 1;
  for (size_t i = 0; i < l->n; i++) {
    if (survivors && rng_next(seed) % 16 < keep16)
      push(survivors, l->b[i]);
    else
      blk_free(&l->b[i]);
    if (i % step == 0) sample();
  }
  l->n = 0;
}

int main(int argc, char **argv) {
  bench_name = "frag";
  long cycles = bench_arg(argc, argv, 1, 8, USAGE);
  uint64_t seed = 8, checksum = 0;
  blist small = {0}, medium = {0}, mixed = {0}, kept_small = {0},
        kept_medium = {0}, old_small = {0};
  t_start = bench_now();
  sample();
  for (long c = 0; c < cycles; c++) {
    checksum += fill(&small, PHASE_BYTES, 16, 512, &seed);
    thin(&small, &kept_small, 1, &seed);
    checksum += fill(&medium, PHASE_BYTES, 8192, 65536, &seed);
    thin(&medium, &kept_medium, 2, &seed); /* ~1 in 8 kept: ~2.4 of 24 MiB */
    checksum += fill(&mixed, PHASE_BYTES, 1024, 4096, &seed);
    thin(&mixed, NULL, 0, &seed);
    thin(&kept_medium, NULL, 0, &seed);
    /* Last cycle's small survivors die now; this cycle's live on. */
    thin(&old_small, NULL, 0, &seed);
    blist t = old_small;
    old_small = kept_small;
    kept_small = t;
  }
  thin(&old_small, NULL, 0, &seed);
  sample();
  long final_kib = bench_rss_kib();
  free(small.b);
  free(medium.b);
  free(mixed.b);
  free(kept_small.b);
  free(kept_medium.b);
  free(old_small.b);
  printf("frag: peak %ld KiB, final %ld KiB\n", peak_kib, final_kib);
  bench_ok(checksum);
  return 0;
}
