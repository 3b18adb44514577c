/* test_api_walk.c: allot_walk and allot_heap_walk, cross-checked against what
 * the test allocated (prefixed API).
 *
 * Every block the test holds is visited exactly once, as in use, with its
 * usable size; every block it freed is visited as free (small and medium) or
 * not at all (large); the structure is consistent (a page's blocks tile it,
 * a medium region's chunks tile it: from its start, adding sizes reaches
 * every chunk and ends at its end marker); the in-use bytes the walk sees
 * equal allot_stats_get's; a visitor may allocate and free; a nonzero return
 * stops the walk; a first-class heap's walk sees only that heap. In debug
 * and secure mode a block's walk size includes its trailer, and a freed large
 * block may still be in use, waiting in the quarantine. */
#include "test_api_common.h"

#include <stdint.h>

#define N 3000

typedef struct held {
  void *p;
  size_t size;
  int live;
  int seen;
} held_t;

static held_t held[N];
static int quarantine; /* debug or secure mode (checked blocks, quarantine) */

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
    if (w->kind == ALLOT_KIND_SMALL) {
      CHECK(t->page &&
                (uint8_t *)w->addr ==
                    (uint8_t *)t->page + t->page_seen * t->page_bsize &&
                w->size == t->page_bsize,
            "small block %p is not the page's next block", w->addr);
      t->page_seen++;
      t->page_used_seen += w->in_use;
    } else if (w->kind == ALLOT_KIND_MEDIUM) {
      CHECK(t->in_medium && (uint8_t *)w->addr == t->next_chunk + 16 &&
                w->overhead == 16,
            "medium chunk %p does not follow the previous one (%p)", w->addr,
            t->next_chunk);
      t->next_chunk = (uint8_t *)w->addr + w->size;
      t->region_blocks_seen++;
    }
    if (w->in_use) {
      t->used++;
      t->used_bytes += w->size;
      held_t *h = find(w->addr);
      if (h && !h->live) {
        /* checked mode: a freed large block may wait in the quarantine */
        CHECK(quarantine && w->kind == ALLOT_KIND_LARGE,
              "freed block %p (%zu bytes) visited as in use", h->p, h->size);
      } else if (h) {
        h->seen++;
        /* checked mode: the walk shows the layers' size, trailer included */
        size_t u = allot_malloc_usable_size(h->p);
        CHECK((w->size == u || (quarantine && w->size > u)) && u >= h->size,
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
  }
  qsort(held, N, sizeof *held, by_addr);
  tally_t t;
  walk_all(&t);
  for (size_t i = 0; i < N; i++)
    CHECK(held[i].seen == 1, "block %p (%zu bytes) visited %d times", held[i].p,
          held[i].size, held[i].seen);
  CHECK(t.regions >= 3 && t.pages > 10, "regions %zu pages %zu", t.regions,
        t.pages);
  allot_stats_t st;
  allot_stats_get(&st);
  CHECK(st.in_use == t.used_bytes, "walk sees %zu bytes in use, stats %zu",
        t.used_bytes, st.in_use);

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
  allot_stats_get(&st);
  /* checked mode: statistics count quarantined blocks as in use */
  CHECK(st.in_use == t.used_bytes || (quarantine && st.in_use > t.used_bytes),
        "after frees: walk %zu, stats %zu", t.used_bytes, st.in_use);

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
  CHECK(hs.in_use == t.used_bytes, "heap walk %zu bytes, heap stats %zu",
        t.used_bytes, hs.in_use);
  allot_free(other);
  allot_heap_destroy(h);
}

int main(void) {
  quarantine = checked_mode();
  test_process_walk();
  test_heap_walk();
  return finish("test_api_walk");
}
