/* test_api_walk.c: allot_walk and allot_heap_walk, cross-checked against what
 * the test allocated (prefixed API).
 *
 * Every block the test holds is visited exactly once, as in use, with the
 * size malloc_usable_size gives (in debug and secure mode: the size asked
 * for) and a block_size at least that; malloc(0) blocks too, each with size
 * 0 (in the default mode as zero-size blocks, ALLOT_KIND_ZERO, as many as
 * the test holds, in regions that count them); every block it freed is
 * visited as free (small and medium) or not at all (large, zero-size); the
 * structure is consistent (a page's blocks tile it, a medium region's chunks
 * tile it: from its start, adding block sizes and headers reaches every
 * chunk and ends at its end marker); the block sizes in use add up to
 * allot_stats_get's in_use; a visitor may allocate and free; a nonzero
 * return stops the walk; a first-class heap's walk sees only that heap. */
#include "test_api_common.h"

#include <stdint.h>

#define N 3000

typedef struct held {
  void *p;
  size_t size;
  int live;
  int seen;
  int kind; /* as the walk saw it */
  int zero; /* malloc(0) (aligned_alloc(256, 0) gives a block of 16) */
} held_t;

static held_t held[N];
static int quarantine;   /* debug or secure mode (checked blocks, quarantine) */
static int default_mode; /* no checked path: malloc(0) gives zero-size blocks */

static int by_addr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const held_t *)a)->p;
  uintptr_t y = (uintptr_t)((const held_t *)b)->p;
  return x < y ? -1 : x > y;
}

static held_t *find(void *p) {
  size_t lo = 0, hi = N;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if ((uintptr_t)held[mid].p < (uintptr_t)p)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < N && held[lo].p == p ? &held[lo] : NULL;
}

typedef struct tally {
  size_t regions, pages, blocks, used, used_bytes;
  size_t used_block_bytes;                 /* block_size of blocks in use */
  size_t zero_blocks;                      /* ALLOT_KIND_ZERO blocks */
  size_t zero_announced, zero_region_seen; /* of the current zero region */
  int in_zero;
  uint8_t *zero_region;
  /* structure checks */
  void *page;
  size_t page_bsize, page_blocks, page_seen, page_used, page_used_seen;
  uint8_t *region, *next_chunk;
  size_t region_size, region_blocks, region_blocks_seen;
  int in_medium;
  allot_heap_t *only;
  size_t foreign; /* blocks of another heap, in a heap walk */
  int mutate;     /* the visitor allocates and frees */
  size_t stop_after;
} tally_t;

static void close_region(tally_t *t) {
  if (t->in_zero)
    CHECK(t->zero_announced == t->zero_region_seen,
          "zero region %p: %zu blocks announced, %zu visited", t->zero_region,
          t->zero_announced, t->zero_region_seen);
  t->in_zero = 0;
  if (t->in_medium) {
    CHECK(t->next_chunk == t->region + t->region_size - 16,
          "medium region %p: chunks end at %p, end marker at %p", t->region,
          t->next_chunk, t->region + t->region_size - 16);
    CHECK(t->region_blocks == t->region_blocks_seen,
          "medium region %p: %zu chunks announced, %zu visited", t->region,
          t->region_blocks, t->region_blocks_seen);
  }
  t->in_medium = 0;
}

static void close_page(tally_t *t) {
  if (t->page) {
    CHECK(t->page_seen == t->page_blocks, "page %p: %zu blocks, %zu visited",
          t->page, t->page_blocks, t->page_seen);
    CHECK(t->page_used_seen == t->page_used,
          "page %p: %zu used announced, %zu visited", t->page, t->page_used,
          t->page_used_seen);
  }
  t->page = NULL;
}

static int visit(const allot_walk_info_t *w, void *arg) {
  tally_t *t = arg;
  if (t->only && w->heap != t->only) t->foreign++;
  if (w->type == ALLOT_WALK_REGION) {
    close_page(t);
    close_region(t);
    t->regions++;
    if (w->kind == ALLOT_KIND_ZERO) {
      CHECK(w->blocks == w->blocks_used, "zero region %p: %zu of %zu used",
            w->addr, w->blocks_used, w->blocks);
      t->in_zero = 1;
      t->zero_region = w->addr;
      t->zero_announced = w->blocks_used;
      t->zero_region_seen = 0;
    }
    if (w->kind == ALLOT_KIND_MEDIUM) {
      t->in_medium = 1;
      t->region = w->addr;
      t->region_size = w->size;
      t->next_chunk = (uint8_t *)w->addr + 16; /* after the fence */
      t->region_blocks = w->blocks;
      t->region_blocks_seen = 0;
    }
  } else if (w->type == ALLOT_WALK_PAGE) {
    close_page(t);
    t->pages++;
    CHECK(w->kind == ALLOT_KIND_SMALL && w->size == 65536 &&
              ((uintptr_t)w->addr & 65535) == 0,
          "page %p", w->addr);
    CHECK(w->block_size * w->blocks <= w->size, "page %p block count", w->addr);
    t->page = w->addr;
    t->page_bsize = w->block_size;
    t->page_blocks = w->blocks;
    t->page_used = w->blocks_used;
    t->page_seen = t->page_used_seen = 0;
  } else {
    t->blocks++;
    CHECK(w->size <= w->block_size || w->kind == ALLOT_KIND_ZERO,
          "block %p: size %zu above its block size %zu", w->addr, w->size,
          w->block_size);
    if (w->kind == ALLOT_KIND_SMALL) {
      CHECK(t->page &&
                (uint8_t *)w->addr ==
                    (uint8_t *)t->page + t->page_seen * t->page_bsize &&
                w->block_size == t->page_bsize &&
                (w->in_use || w->size == t->page_bsize),
            "small block %p is not the page's next block", w->addr);
      t->page_seen++;
      t->page_used_seen += w->in_use;
    } else if (w->kind == ALLOT_KIND_MEDIUM) {
      CHECK(t->in_medium && (uint8_t *)w->addr == t->next_chunk + 16 &&
                w->overhead == 16,
            "medium chunk %p does not follow the previous one (%p)", w->addr,
            t->next_chunk);
      t->next_chunk = (uint8_t *)w->addr + w->block_size;
      t->region_blocks_seen++;
    } else if (w->kind == ALLOT_KIND_ZERO) {
      CHECK(t->in_zero && w->in_use && w->size == 0 && w->block_size == 0 &&
                (uint8_t *)w->addr > t->zero_region &&
                (uint8_t *)w->addr < t->zero_region + (4 << 20),
            "zero-size block %p (size %zu) outside its region %p", w->addr,
            w->size, t->zero_region);
      t->zero_blocks++;
      t->zero_region_seen++;
    }
    if (w->in_use) {
      t->used++;
      t->used_bytes += w->size;
      t->used_block_bytes += w->block_size;
      held_t *h = find(w->addr);
      if (h && !h->live) {
        /* checked mode: a freed large block may wait in the quarantine */
        CHECK(quarantine && w->kind == ALLOT_KIND_LARGE,
              "freed block %p (%zu bytes) visited as in use", h->p, h->size);
      } else if (h) {
        h->seen++;
        h->kind = w->kind;
        /* checked mode: both are the size asked for */
        size_t u = allot_malloc_usable_size(h->p);
        CHECK(w->size == u && u >= h->size && (!quarantine || u == h->size),
              "block %p: walk size %zu, usable %zu, asked %zu", h->p, w->size,
              u, h->size);
      }
    } else {
      held_t *h = find(w->addr);
      if (h) CHECK(!h->live, "live block %p visited as free", h->p);
    }
    if (t->mutate && t->blocks % 97 == 0) {
      void *q = allot_malloc(t->blocks % 20000);
      allot_free(q);
    }
  }
  if (t->stop_after && t->blocks == t->stop_after) return 42;
  return 0;
}

static size_t pick(size_t i) {
  if (i % 37 == 5) return 0; /* malloc(0) */
  switch (i % 8) {
  case 0:
    return 9000 + (i * 131) % 60000; /* medium */
  case 1:
    return (i % 40 == 1) ? (2 << 20) + i : 300; /* a few large */
  default:
    return 1 + (i * 61) % 8192; /* small, every class */
  }
}

static void walk_all(tally_t *t) {
  memset(t, 0, sizeof *t);
  int rc = allot_walk(visit, t);
  close_page(t);
  close_region(t);
  CHECK(rc == 0, "allot_walk returned %d", rc);
}

static void test_process_walk(void) {
  for (size_t i = 0; i < N; i++) {
    held[i].size = pick(i);
    held[i].p = i % 11 == 3 ? allot_aligned_alloc(256, held[i].size)
                            : allot_malloc(held[i].size);
    held[i].live = 1;
    held[i].zero = i % 11 != 3 && held[i].size == 0;
  }
  qsort(held, N, sizeof *held, by_addr);
  tally_t t;
  walk_all(&t);
  size_t zeros = 0, zeros_seen = 0, usable = 0;
  for (size_t i = 0; i < N; i++) {
    CHECK(held[i].seen == 1, "block %p (%zu bytes) visited %d times", held[i].p,
          held[i].size, held[i].seen);
    zeros += held[i].zero;
    zeros_seen += held[i].zero && held[i].kind == ALLOT_KIND_ZERO;
    usable += allot_malloc_usable_size(held[i].p);
  }
  /* every zero-size block the walk shows is one the test holds */
  CHECK(zeros > 50 && t.zero_blocks == zeros_seen &&
            (!default_mode || zeros_seen == zeros),
        "malloc(0): %zu held, %zu visited as zero-size, %zu zero-size blocks",
        zeros, zeros_seen, t.zero_blocks);
  CHECK(t.used == N && t.used_bytes == usable,
        "walk: %zu blocks, %zu bytes in use; held %d, usable %zu", t.used,
        t.used_bytes, N, usable);
  CHECK(t.regions >= 3 && t.pages > 10, "regions %zu pages %zu", t.regions,
        t.pages);
  allot_stats_t st;
  allot_stats_get(&st);
  CHECK(st.in_use == t.used_block_bytes,
        "walk sees %zu bytes of blocks in use, stats %zu", t.used_block_bytes,
        st.in_use);

  /* free every other block; large ones are no longer visited */
  for (size_t i = 0; i < N; i += 2) {
    allot_free(held[i].p);
    held[i].live = 0;
  }
  for (size_t i = 0; i < N; i++)
    held[i].seen = 0;
  walk_all(&t);
  for (size_t i = 0; i < N; i++)
    if (held[i].live)
      CHECK(held[i].seen == 1, "live block %p visited %d times", held[i].p,
            held[i].seen);
  zeros_seen = 0;
  for (size_t i = 0; i < N; i++)
    zeros_seen +=
        held[i].live && held[i].zero && held[i].kind == ALLOT_KIND_ZERO;
  CHECK(t.zero_blocks == zeros_seen && (!default_mode || zeros_seen > 20),
        "after frees: %zu zero-size blocks visited, %zu held", t.zero_blocks,
        zeros_seen);
  allot_stats_get(&st);
  /* checked mode: statistics count quarantined blocks as in use */
  CHECK(st.in_use == t.used_block_bytes ||
            (quarantine && st.in_use > t.used_block_bytes),
        "after frees: walk %zu, stats %zu", t.used_block_bytes, st.in_use);

  /* a visitor that allocates and frees does not deadlock or derail */
  memset(&t, 0, sizeof t);
  t.mutate = 1;
  CHECK(allot_walk(visit, &t) == 0, "mutating walk");
  close_page(&t);
  close_region(&t);
  /* a nonzero return stops the walk and is returned */
  memset(&t, 0, sizeof t);
  t.stop_after = 10;
  CHECK(allot_walk(visit, &t) == 42 && t.blocks == 10, "stopped walk");

  for (size_t i = 1; i < N; i += 2)
    allot_free(held[i].p);
  CHECK(allot_check() == 0, "check after the walks");
}

static void test_heap_walk(void) {
  allot_heap_t *h = allot_heap_new();
  void *other = allot_malloc(100); /* default heap: not in h's walk */
  for (size_t i = 0; i < N; i++) {
    held[i].size = pick(i + 5);
    held[i].p = allot_heap_malloc(h, held[i].size);
    held[i].live = 1;
    held[i].seen = 0;
    held[i].zero = 0;
  }
  qsort(held, N, sizeof *held, by_addr);
  tally_t t;
  memset(&t, 0, sizeof t);
  t.only = h;
  CHECK(allot_heap_walk(h, visit, &t) == 0, "heap walk");
  close_page(&t);
  close_region(&t);
  CHECK(t.foreign == 0, "%zu items of another heap in a heap walk", t.foreign);
  for (size_t i = 0; i < N; i++)
    CHECK(held[i].seen == 1, "heap block %p (%zu) visited %d times", held[i].p,
          held[i].size, held[i].seen);
  allot_stats_t hs;
  allot_heap_stats(h, &hs);
  CHECK(hs.in_use == t.used_block_bytes, "heap walk %zu bytes, heap stats %zu",
        t.used_block_bytes, hs.in_use);
  CHECK(t.zero_blocks == 0, "a heap walk showed %zu zero-size blocks",
        t.zero_blocks);
  allot_free(other);
  allot_heap_destroy(h);
}

int main(void) {
  quarantine = checked_mode();
  default_mode = !quarantine && !allot_option_get(ALLOT_OPTION_STATS);
  test_process_walk();
  test_heap_walk();
  return finish("test_api_walk");
}
