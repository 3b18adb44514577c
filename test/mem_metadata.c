/* mem_metadata.c: allot's metadata per byte of heap (docs/memory.md).
 *
 *   mem_metadata small|mixed|medium|large [MiB]
 *
 * Allocates MiB (default 512) of live blocks of one mix, then walks the heap
 * (allot_walk) and counts every byte of allot's own structures, as resident
 * memory (mincore) where it lives in the mappings:
 *
 *   - segment headers: a small segment's header and its 63 page descriptors,
 *     a medium segment's header, in the first 64 KiB page of each 4 MiB
 *     segment (reserved whole, resident only as far as written);
 *   - chunk headers: 16 bytes before every medium block, live or free;
 *   - large headers: the header page before every large block;
 *   - heap structures: one per thread heap (sizeof(heap_t), from the
 *     allocator's own header);
 *   - the segment map: a bitmap of 8 MiB of address space (one bit per
 *     4 MiB segment), of which only the pages covering segments are touched.
 *
 * Prints metadata bytes against the usable bytes of the live blocks and
 * against the bytes asked for, and where the rest of the resident memory
 * goes (rounding to size classes, free space). Fails if the metadata is more
 * than 1 % of the live bytes (docs/memory.md has the figures: 0.1-0.3 %). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "allot.h"
#include "internal.h" /* segment_t, heap_t, SEG_SIZE, PAGE_SIZE: sizes only */

#define MiB ((size_t)1 << 20)

static uint64_t rng(uint64_t *s) {
  uint64_t x = *s += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static size_t log_uniform(uint64_t *s, size_t lo, size_t hi) {
  double u = (double)(rng(s) >> 11) / 9007199254740992.0;
  size_t v = (size_t)((double)lo * __builtin_pow((double)hi / (double)lo, u));
  return v < lo ? lo : v > hi ? hi : v;
}

/* Resident bytes of [p, p + n), page-aligned outward. */
static size_t resident(const void *p, size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  uintptr_t lo = (uintptr_t)p & ~(uintptr_t)(pg - 1);
  uintptr_t hi = ((uintptr_t)p + n + pg - 1) & ~(uintptr_t)(pg - 1);
  size_t count = (hi - lo) / pg, r = 0;
  unsigned char vec[256];
  while (count) {
    size_t k = count < sizeof vec ? count : sizeof vec;
    if (mincore((void *)lo, k * pg, vec) != 0) return 0;
    for (size_t i = 0; i < k; i++)
      r += vec[i] & 1;
    lo += k * pg;
    count -= k;
  }
  return r * pg;
}

typedef struct tally {
  size_t small_segs, medium_segs, large_blocks;
  size_t seg_header_resident; /* small and medium segments' page 0 */
  size_t seg_header_reserved; /* the 64 KiB page 0 of each */
  size_t chunk_headers;       /* medium: 16 B per chunk */
  size_t medium_chunks;
  size_t large_headers;      /* resident bytes before large blocks */
  size_t small_tail;         /* bytes at the end of pages no block fits */
  size_t segmap_pages[4096]; /* distinct 4 KiB pages of the segment map */
  size_t nsegmap;
} tally_t;

static void segmap_touch(tally_t *t, const void *seg) {
  /* the map's byte for a segment is (addr >> 22) */
  size_t page = ((uintptr_t)seg >> SEG_SHIFT) / 4096;
  for (size_t i = 0; i < t->nsegmap; i++)
    if (t->segmap_pages[i] == page) return;
  if (t->nsegmap < 4096) t->segmap_pages[t->nsegmap++] = page;
}

static int visit(const allot_walk_info_t *w, void *arg) {
  tally_t *t = arg;
  if (w->type == ALLOT_WALK_REGION) {
    uint8_t *seg = (uint8_t *)((uintptr_t)w->addr & ~(uintptr_t)SEG_MASK);
    if (w->kind == ALLOT_KIND_SMALL || w->kind == ALLOT_KIND_MEDIUM) {
      if (w->kind == ALLOT_KIND_SMALL)
        t->small_segs++;
      else
        t->medium_segs++;
      t->seg_header_reserved += PAGE_SIZE;
      t->seg_header_resident += resident(seg, PAGE_SIZE);
      segmap_touch(t, seg);
    } else if (w->kind == ALLOT_KIND_LARGE) {
      segmap_touch(t, seg);
    }
  } else if (w->type == ALLOT_WALK_PAGE && w->kind == ALLOT_KIND_SMALL) {
    t->small_tail += w->size - w->blocks * w->block_size;
  } else if (w->type == ALLOT_WALK_BLOCK) {
    if (w->kind == ALLOT_KIND_MEDIUM) {
      t->chunk_headers += w->overhead;
      t->medium_chunks++;
    } else if (w->kind == ALLOT_KIND_LARGE && w->in_use) {
      uint8_t *seg =
          (uint8_t *)(((uintptr_t)w->addr - 1) & ~(uintptr_t)SEG_MASK);
      t->large_blocks++;
      t->large_headers += resident(seg, (size_t)((uint8_t *)w->addr - seg));
    }
  }
  return 0;
}

static size_t mix_size(uint64_t *s, const char *mix) {
  if (!strcmp(mix, "small")) return log_uniform(s, 8, 1024);
  if (!strcmp(mix, "medium")) return log_uniform(s, 8193, MiB);
  if (!strcmp(mix, "large")) return log_uniform(s, MiB + 1, 16 * MiB);
  /* mixed: by count mostly small, by bytes about a third of each kind */
  uint64_t r = rng(s) % 1000;
  if (r < 985) return log_uniform(s, 8, 8192);
  if (r < 999) return log_uniform(s, 8193, MiB);
  return log_uniform(s, MiB + 1, 16 * MiB);
}

static double pct(size_t a, size_t b) {
  return b ? 100.0 * (double)a / (double)b : 0;
}

int main(int argc, char **argv) {
  const char *mix = argc > 1 ? argv[1] : "mixed";
  size_t total = (size_t)(argc > 2 ? atol(argv[2]) : 512) * MiB;
  size_t cap = total / 8 + 1024;
  void **ptr = mmap(NULL, cap * sizeof *ptr, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ptr == MAP_FAILED) return 2;
  uint64_t s = 1;
  size_t n = 0, requested = 0;
  while (requested < total && n < cap) {
    size_t size = mix_size(&s, mix);
    void *p = malloc(size);
    if (!p) return 2;
    memset(p, 1, size);
    ptr[n++] = p;
    requested += size;
  }

  allot_stats_t st;
  allot_stats_get(&st);
  static tally_t t;
  if (allot_walk(visit, &t) != 0) {
    fprintf(stderr, "allot_walk failed\n");
    return 2;
  }
  size_t heap_struct = (sizeof(heap_t) + 63) & ~(size_t)63;
  size_t heaps = st.heaps * heap_struct;
  size_t segmap = t.nsegmap * 4096;
  size_t meta = t.seg_header_resident + t.chunk_headers + t.large_headers +
                heaps + segmap;
  size_t in_use = st.in_use;

  printf("mix %s: %zu blocks, %.1f MiB asked for, %.1f MiB usable (class "
         "rounding %.2f %%)\n",
         mix, n, (double)requested / MiB, (double)in_use / MiB,
         pct(in_use - requested, requested));
  printf("  segments: %zu small, %zu medium; %zu large blocks; %zu medium "
         "chunks (live and free); %zu heap(s)\n",
         t.small_segs, t.medium_segs, t.large_blocks, t.medium_chunks,
         st.heaps);
  printf("  segment headers  %9zu B resident (a small segment's header with "
         "its page descriptors is %zu B, a medium one's %zu B; the 64 KiB "
         "page 0 of each reserves %zu B of address space)\n",
         t.seg_header_resident, sizeof(segment_t), offsetof(segment_t, pages),
         t.seg_header_reserved);
  printf("  chunk headers    %9zu B (%zu per chunk)\n", t.chunk_headers,
         t.medium_chunks ? t.chunk_headers / t.medium_chunks : 0);
  printf("  large headers    %9zu B resident\n", t.large_headers);
  printf("  heap structures  %9zu B (%zu B each)\n", heaps, heap_struct);
  printf("  segment map      %9zu B resident of 8 MiB reserved\n", segmap);
  printf("  metadata total   %9zu B = %.3f %% of usable bytes, %.3f %% of "
         "bytes asked for; %.1f bytes per MiB of heap\n",
         meta, pct(meta, in_use), pct(meta, requested),
         (double)meta / ((double)in_use / MiB));
  printf("  not metadata: free in small pages %zu B, page tails %zu B, free "
         "pages %zu B, free medium %zu B, cached %zu B; committed %zu B, "
         "reserved %zu B\n",
         st.free_small, t.small_tail, st.free_pages, st.free_medium, st.cached,
         st.committed, st.reserved);
  int ok = pct(meta, in_use) <= 1.0;
  for (size_t i = 0; i < n; i++)
    free(ptr[i]);
  printf("%s\n", ok ? "ok" : "FAILED: metadata above 1 % of the heap");
  return ok ? 0 : 1;
}
