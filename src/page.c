/* page.c: small objects — pages of one size class and their free lists.
 *
 * Each page keeps two free lists so that no operation needs a lock: `free`,
 * touched only by the owning thread (malloc pops from it, the owner's free
 * pushes onto it, so a block freed is the next one handed out while it is
 * still in cache), and `xfree`, an atomic stack that other threads push
 * onto and that the owner takes over whole when `free` runs dry. Pages with
 * no free block wait in a per-class full list; a thread freeing into one
 * flags its class in the owner's `xwake` mask so the owner looks there
 * again. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

/* Block size of each class: multiples of 16 up to 128, then eight classes
 * per power of two (at most 12.5 % apart) up to SMALL_MAX, and 4368, the
 * largest size of which 15 blocks fit a page (4608 fits 14: sqlite's page
 * cache asks for 4368 bytes, docs/memory.md); generated, see
 * docs/design.md. Past those, 12 and 16 KiB for aligned requests only
 * (aligned_class_paged). */
const uint32_t class_size[NCLASSES] = {
    0,    16,   32,   48,   64,   80,   96,   112,  128,  144,  160,   176,
    192,  208,  224,  240,  256,  288,  320,  352,  384,  416,  448,   480,
    512,  576,  640,  704,  768,  832,  896,  960,  1024, 1152, 1280,  1408,
    1536, 1664, 1792, 1920, 2048, 2304, 2560, 2816, 3072, 3328, 3584,  3840,
    4096, 4368, 4608, 5120, 5632, 6144, 6656, 7168, 7680, 8192, 12288, 16384,
};

/* Class of every size up to SMALL_MAX, indexed by (size + 15) / 16. Size 0
 * has class 0, whose current page never has free blocks: malloc(0) takes the
 * slow path to a zero-size block without a test on the fast path. So do the
 * sizes up to 16 bytes above 1 and 4 KiB, which go to the chunk heap
 * (page_malloc_slow): a power of two plus a small header is a common request
 * (sqlite asks for 1032 and 4104 bytes, its 8-byte header on 1024 and 4096:
 * 108 k of its 2 M calls), and the next class wastes 11-12 % of it where a
 * chunk wastes 16 bytes: sqlite's peak RSS 119.8 -> 114.0 MiB, for 0.9 %
 * more instructions (callgrind, 25 000 rows). Since such a block may take a
 * freed medium block's place, a double free of that block is then found
 * later, not at once. */
const uint8_t class_of_small[SMALL_MAX / 16 + 1] = {
    0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 17,
    18, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23, 23, 24, 24, 25, 25, 25, 25, 26,
    26, 26, 26, 27, 27, 27, 27, 28, 28, 28, 28, 29, 29, 29, 29, 30, 30, 30, 30,
    31, 31, 31, 31, 32, 32, 32, 32, 0,  33, 33, 33, 33, 33, 33, 33, 34, 34, 34,
    34, 34, 34, 34, 34, 35, 35, 35, 35, 35, 35, 35, 35, 36, 36, 36, 36, 36, 36,
    36, 36, 37, 37, 37, 37, 37, 37, 37, 37, 38, 38, 38, 38, 38, 38, 38, 38, 39,
    39, 39, 39, 39, 39, 39, 39, 40, 40, 40, 40, 40, 40, 40, 40, 41, 41, 41, 41,
    41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 42, 42, 42, 42, 42, 42, 42,
    42, 42, 42, 42, 42, 42, 42, 42, 42, 43, 43, 43, 43, 43, 43, 43, 43, 43, 43,
    43, 43, 43, 43, 43, 43, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44, 44,
    44, 44, 44, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45, 45,
    46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 47, 47, 47,
    47, 47, 47, 47, 47, 47, 47, 47, 47, 47, 47, 47, 47, 48, 48, 48, 48, 48, 48,
    48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 0,  49, 49, 49, 49, 49, 49, 49, 49,
    49, 49, 49, 49, 49, 49, 49, 49, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
    50, 50, 50, 50, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51,
    51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 52, 52,
    52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52,
    52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 53, 53, 53, 53, 53, 53, 53, 53,
    53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53, 53,
    53, 53, 53, 53, 53, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54,
    54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 54, 55,
    55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55,
    55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 56, 56, 56, 56, 56, 56, 56,
    56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56,
    56, 56, 56, 56, 56, 56, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57,
    57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57,
};

/* For each alignment from 32 to SMALL_MAX (row log2(align) - 5) and class,
 * the first class from it on whose every block has that alignment (pages
 * are 64 KiB-aligned, so a block size that is a multiple of the alignment
 * does it). Generated from class_size. */
const uint8_t class_aligned[SMALL_ALIGNS][CLASS_ROW] = {
    /* 32 */ {2,  2,  2,  4,  4,  6,  6,  8,  8,  10, 10, 12, 12, 14, 14,
              16, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
              30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
              45, 46, 47, 48, 50, 50, 51, 52, 53, 54, 55, 56, 57},
    /* 64 */ {4,  4,  4,  4,  4,  8,  8,  8,  8,  12, 12, 12, 12, 16, 16,
              16, 16, 18, 18, 20, 20, 22, 22, 24, 24, 25, 26, 27, 28, 29,
              30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
              45, 46, 47, 48, 50, 50, 51, 52, 53, 54, 55, 56, 57},
    /* 128 */ {8,  8,  8,  8,  8,  8,  8,  8,  8,  16, 16, 16, 16, 16, 16,
               16, 16, 20, 20, 20, 20, 24, 24, 24, 24, 26, 26, 28, 28, 30,
               30, 32, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
               45, 46, 47, 48, 50, 50, 51, 52, 53, 54, 55, 56, 57},
    /* 256 */ {16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,
               16, 16, 24, 24, 24, 24, 24, 24, 24, 24, 28, 28, 28, 28, 32,
               32, 32, 32, 34, 34, 36, 36, 38, 38, 40, 40, 41, 42, 43, 44,
               45, 46, 47, 48, 50, 50, 51, 52, 53, 54, 55, 56, 57},
    /* 512 */ {24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
               24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 32, 32, 32, 32, 32,
               32, 32, 32, 36, 36, 36, 36, 40, 40, 40, 40, 42, 42, 44, 44,
               46, 46, 48, 48, 50, 50, 51, 52, 53, 54, 55, 56, 57},
    /* 1024 */ {32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
                32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
                32, 32, 32, 40, 40, 40, 40, 40, 40, 40, 40, 44, 44, 44, 44,
                48, 48, 48, 48, 51, 51, 51, 53, 53, 55, 55, 57, 57},
    /* 2048 */ {40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
                40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40,
                40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 48, 48, 48, 48,
                48, 48, 48, 48, 53, 53, 53, 53, 53, 57, 57, 57, 57},
    /* 4096 */ {48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
                48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
                48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
                48, 48, 48, 48, 57, 57, 57, 57, 57, 57, 57, 57, 57},
    /* 8192 */ {57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57,
                57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57,
                57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57,
                57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 57},
};

INTERNAL page_t empty_page; /* free == NULL: sends the fast path here */

/* ---- blocks ---------------------------------------------------------- */

static void page_init(heap_t *h, page_t *pg, size_t cls) {
  pg->free = NULL;
  pg->used = 0;
  pg->bsize = class_size[cls];
  page_set_capacity(pg, 0);
  /* secure mode: the page's last OS page is a guard (see secure.c) */
  pg->reserved = (uint32_t)((PAGE_SIZE - (g.secure ? OS_PAGE : 0)) / pg->bsize);
  pg->divm = UINT64_MAX / pg->bsize + 1;
  pg->cls = (uint8_t)cls;
  page_set_queue(pg, h, Q_NONE);
  atomic_store_explicit(&pg->full, 0, memory_order_relaxed);
  atomic_store_explicit(&pg->xfree, 0, memory_order_relaxed);
  atomic_store_explicit(&pg->heap, h, memory_order_release);
}

/* Carve the next blocks of a page into its free list, about one OS page at a
 * time (one block of the classes above 2 KiB: four of them made a single
 * 4 KiB block, stdio's buffer, touch 16 KiB), so memory is touched (and
 * becomes resident) only as it is used. */
static size_t page_extend_count(const page_t *pg) {
  size_t n = pg->reserved - pg->capacity;
  size_t step = OS_PAGE / pg->bsize;
  if (step < 1) step = 1;
  return n > step ? step : n;
}

/* Link blocks [lo, hi) of a page whose blocks start at `first` in front of
 * list `next`, in address order; the new head. */
static ALWAYS_INLINE block_t *link_blocks(uint8_t *first, size_t bsize,
                                          size_t lo, size_t hi, block_t *next) {
  for (size_t i = hi; i-- > lo;) {
    block_t *b = (block_t *)(first + i * bsize);
    b->next = link_encode(next, b);
    b->mark = free_mark(b);
    next = b;
  }
  return next;
}

static ALWAYS_INLINE void extend_blocks(page_t *pg, size_t n) {
  segment_t *s = segment_of(pg);
  uint8_t *first = page_start(s, pg) + (size_t)pg->capacity * pg->bsize;
  block_t *next = pg->free;
  if (unlikely(pg->capacity == 0 && n > 1)) {
    /* A fresh page's list starts at block r, not at the page's first: every
     * page starts 64 KiB-aligned, so the first blocks of all classes fell
     * in one set of the L1 cache (its index is address bits 6-11), and a
     * thread that reuses one block of each of its classes over and over (the
     * freed block is the next one handed out; `micro pair`'s 32 classes)
     * missed L1 at nearly every malloc: 1.66 M D1 misses in 2 M pairs under
     * callgrind's cache model, 11.8 K with the lists rotated. r comes from
     * the page's place in its segment, so neighbouring pages differ; later
     * carvings keep the one loop. */
    size_t r = (((uintptr_t)pg >> 7) * 11) % n;
    next = link_blocks(first, pg->bsize, 0, r, next);
    next = link_blocks(first, pg->bsize, r, n, next);
  } else {
    next = link_blocks(first, pg->bsize, 0, n, next);
  }
  pg->free = next;
  page_set_capacity(pg, pg->capacity + (uint32_t)n);
  segment_count_carved(s, n * pg->bsize);
}

static NOINLINE void page_extend_n(page_t *pg, size_t n) {
  extend_blocks(pg, n);
}

static void page_extend(page_t *pg) {
  page_extend_n(pg, page_extend_count(pg));
}

/* Check a block taken from a list against its page: a link that leads out of
 * the page or off a block boundary means the list was overwritten. */
static void check_block(page_t *pg, block_t *b, const char *what) {
  segment_t *s = segment_of(pg);
  uint8_t *start = page_start(s, pg);
  if ((uint8_t *)b < start || (uint8_t *)b >= start + PAGE_SIZE ||
      !page_is_block(pg, b))
    fault("malloc", what, b);
}

/* Take over the list whose word (head and count) was taken from the page's
 * cross-thread list, to the front of its free list: how many. With cut,
 * only the blocks in front of it are walked: the cut_n blocks from cut on
 * (prof.c's cut, set aside from the free list) come back whole, after tail
 * (NULL: none).
 *
 * When the free list is empty, as at a refill, the list becomes the free
 * list as it is, unwalked: the count came with the head, and malloc checks
 * each link as it pops the block (page_take and the fast path). A walk
 * here was a chain of dependent cache misses on blocks that other cores had
 * just written, with nothing to overlap them; popped one by one they overlap
 * with the program's work (prodcons: 17.7 % of the run's samples in this
 * walk; CPU time 0.88x, micro prodcons 0.62x). Checked mode still walks,
 * for the check of every block at once. */
static ALWAYS_INLINE size_t take_xfree(page_t *pg, uintptr_t word, block_t *cut,
                                       size_t cut_n, block_t *tail) {
  block_t *head = xfree_head(word);
  size_t count = xfree_count(word);
  if (likely(!pg->free && !tail && !g.slow_mode)) {
    check_block(pg, head, "corrupted cross-thread free list");
    if (unlikely(count - 1 >= pg->used))
      fault("free", "double free (cross-thread)", head);
    pg->free = head;
    pg->used -= (uint32_t)count;
    heap_t *owner = atomic_load_explicit(&pg->heap, memory_order_relaxed);
    atomic_fetch_add_explicit(&owner->xfrees, count - (cut ? cut_n : 0),
                              memory_order_relaxed);
    return count;
  }
  block_t *b = head, *last = NULL;
  size_t n = 0;
  while (b && b != cut) {
    check_block(pg, b, "corrupted cross-thread free list");
    if (++n > pg->used) fault("free", "double free (cross-thread)", b);
    last = b;
    b = link_decode(b->next, b);
  }
  size_t others = n;
  if (b) { /* b == cut, which ends the list */
    if (cut_n > pg->used - n) fault("malloc", "corrupted free list", b);
    n += cut_n;
    if (tail)
      tail->next = link_encode(head, tail);
    else
      pg->free = head;
  } else {
    last->next = link_encode(pg->free, last);
    pg->free = head;
  }
  if (n != count) fault("free", "corrupted cross-thread free list", head);
  pg->used -= (uint32_t)n;
  /* statistics: counted here, on the owner's slow path, not per free */
  heap_t *owner = atomic_load_explicit(&pg->heap, memory_order_relaxed);
  atomic_fetch_add_explicit(&owner->xfrees, others, memory_order_relaxed);
  return n;
}

/* Take over the blocks other threads freed into this page, to the front of
 * its free list: how many. */
size_t page_collect_xfree(page_t *pg) {
  uintptr_t word =
      atomic_exchange_explicit(&pg->xfree, 0, memory_order_acquire);
  if (!word) return 0;
  /* the heap profile: the list may end with one that prof.c cut */
  if (unlikely(g.prof) && prof_is_pending(pg->cls))
    return prof_collect_xfree(pg, word);
  return take_xfree(pg, word, NULL, 0, NULL);
}

size_t page_take_xfree(page_t *pg, uintptr_t word, block_t *cut, size_t cut_n,
                       block_t *tail) {
  return take_xfree(pg, word, cut, cut_n, tail);
}

/* page_collect_xfree without the profile's test, for heap_collect_pages,
 * before which prof_uncut has taken back the thread's cut lists. */
static NOINLINE size_t collect_xfree_all(page_t *pg) {
  uintptr_t word =
      atomic_exchange_explicit(&pg->xfree, 0, memory_order_acquire);
  if (!word) return 0;
  return take_xfree(pg, word, NULL, 0, NULL);
}

/* Carve the page's next blocks (in checked mode: in random order, with the
 * page's guard in secure mode). */
static void page_grow(page_t *pg) {
  if (unlikely(g.secure))
    secure_page_extend(pg);
  else
    page_extend(pg);
}

/* A page with no free block: carve its next blocks if they lie in memory
 * already resident. New memory is touched only once the heap has nothing
 * resident left for the class (page_alloc_sized, page_alloc_locked).
 * Returns how many blocks the page's next carving would take from memory
 * not touched yet, 0 if none (or it carved). Memory up to page_t.touched is
 * resident from a former life of the page; its carving since has been in
 * order from the start, so all that lies beyond that and beyond its carved
 * blocks is new. Checked mode carves at once. */
static ALWAYS_INLINE size_t page_carve_resident(page_t *pg) {
  if (pg->free || pg->capacity == pg->reserved) return 0;
  if (unlikely(g.slow_mode)) {
    page_grow(pg);
    return 0;
  }
  size_t n = page_extend_count(pg);
  size_t end = (pg->capacity + n) * (size_t)pg->bsize;
  if (end > pg->touched) return n;
  page_extend_n(pg, n);
  return 0;
}

/* Gather every free block of the page into `free`, then as above. */
static ALWAYS_INLINE size_t page_collect(page_t *pg) {
  if (atomic_load_explicit(&pg->xfree, memory_order_relaxed))
    page_collect_xfree(pg);
  return page_carve_resident(pg);
}

/* ---- full pages ------------------------------------------------------ */

/* Move a page without free blocks to the full list. The store to `full` and
 * the load of `xfree` pair with the freeing thread's push-then-load, so
 * either we see its block or it sees the flag and wakes us. */
static bool page_to_full(heap_t *h, page_t *pg) {
  atomic_store_explicit(&pg->full, 1, memory_order_seq_cst);
  if (atomic_load_explicit(&pg->xfree, memory_order_seq_cst)) {
    atomic_store_explicit(&pg->full, 0, memory_order_relaxed);
    return false;
  }
  plist_remove(&h->avail[pg->cls], pg);
  plist_push_back(&h->full[pg->cls], pg);
  page_set_queue(pg, h, Q_FULL);
  return true;
}

static void page_from_full(heap_t *h, page_t *pg) {
  plist_remove(&h->full[pg->cls], pg);
  atomic_store_explicit(&pg->full, 0, memory_order_relaxed);
  plist_push_front(&h->avail[pg->cls], pg);
  page_set_queue(pg, h, Q_AVAIL);
}

/* Pages of class cls that other threads freed into while they were full
 * (or that the purge thread looked at and had to leave). */
static void heap_wake_full(heap_t *h, size_t cls) {
  uint64_t bit = (uint64_t)1 << cls;
  if (!((atomic_load_explicit(&h->xwake, memory_order_relaxed) |
         atomic_load_explicit(&h->xstrand, memory_order_relaxed)) &
        bit))
    return;
  atomic_fetch_and_explicit(&h->xwake, ~bit, memory_order_seq_cst);
  if (atomic_load_explicit(&h->xstrand, memory_order_relaxed) & bit)
    atomic_fetch_and_explicit(&h->xstrand, ~bit, memory_order_relaxed);
  page_t *pg = h->full[cls].first;
  while (pg) {
    page_t *next = pg->next;
    if (atomic_load_explicit(&pg->xfree, memory_order_seq_cst))
      page_from_full(h, pg);
    pg = next;
  }
}

static void *page_malloc_slow_inner(heap_t *h, size_t cls, size_t size);
static inline void *page_alloc_sized(heap_t *h, size_t cls, size_t size);

/* In checked mode (statistics, debug, secure) no page is ever made current,
 * so every malloc comes through page_malloc_slow and its hooks. */
static ALWAYS_INLINE void set_current(heap_t *h, size_t cls, page_t *pg) {
  h->current[cls] = unlikely(g.slow_mode) ? &empty_page : pg;
}

/* Return an empty page to its segment, unless it is the last page of its
 * class: keeping one avoids trading a page back and forth with the segment
 * when a single object of the class comes and goes. */
static void page_retire(heap_t *h, page_t *pg, bool keep_last) {
  page_list_t *l = pg->queue == Q_FULL ? &h->full[pg->cls] : &h->avail[pg->cls];
  if (keep_last && pg->queue == Q_AVAIL && l->count == 1) return;
  size_t cls = pg->cls;
  plist_remove(l, pg);
  if (h->current[cls] == pg)
    set_current(h, cls,
                h->avail[cls].first ? h->avail[cls].first : &empty_page);
  segment_page_free(h, pg);
}

/* A class's only page is kept when it empties (page_retire's keep_last, or
 * free's fast path, which does not look), so that a class whose blocks
 * come and go does not give up and take back a page each time. A class
 * that is done with for good kept it resident too, as much of it as it
 * ever carved: in cc1 (the gcc workload) 18 such pages held 1.1 MiB at
 * exit. So every purge delay the owner looks at its classes' only pages,
 * and retires one it found empty the time before as well (it has been
 * empty for one to two delays, or has been used and emptied again since:
 * either way the class did not need it meanwhile); it then waits as a free
 * page for the delay, where the class's next page is taken from first.
 * Not first-class heaps (their memory is their owner's to keep) nor
 * checked mode (whose pages are never current). This and the clock read
 * that calls it are in the core code tier (cmake/hot-functions.txt): with
 * os_now_ms in the threads tier, bignum 80000's exact peak was 1664 ->
 * 1676 kB, that tier made resident. */
static NOINLINE void page_sweep_empty(heap_t *h, uint64_t now) {
  /* at least a millisecond apart: with ALLOT_PURGE_DELAY=0 it looked at
   * every class on every slow path that takes the page lock (callgrind
   * micro batch 1 300000: 54.58 M instructions before the sweep, 56.24 M;
   * 54.83 M a millisecond apart) */
  h->sweep_due = now + (g.purge_delay_ms ? (uint64_t)g.purge_delay_ms : 1);
  if (h->first_class || g.slow_mode) return;
  uint64_t seen = 0;
  for (size_t cls = 1; cls < NCLASSES; cls++) {
    page_t *pg = h->avail[cls].first;
    if (!pg || h->avail[cls].count != 1 || pg->used) continue;
    if (h->empty_seen >> cls & 1)
      page_retire(h, pg, false);
    else
      seen |= (uint64_t)1 << cls;
  }
  h->empty_seen = seen;
}

/* ---- slow paths ------------------------------------------------------- */

void *page_malloc_slow(heap_t *h, size_t cls, size_t size) {
  if (unlikely(cls == 0) && size) {
    /* just above 1 or 4 KiB (class_of_small): a chunk if the heap has
     * medium memory, else the next class */
    if (h != &empty_heap && !g.slow_mode) {
      void *p = medium_malloc_joined(h, size);
      if (p) return p;
    }
    cls = class_of_small[((size + 15) >> 4) + 1];
  }
  void *p = page_malloc_slow_inner(h, cls, size);
  if (unlikely(!p))
    errno = ENOMEM;
  else if (unlikely(g.prof))
    p = prof_count_small(h, cls, p); /* heap profile (prof.c) */
  return p;
}

static void *page_malloc_slow_inner(heap_t *h, size_t cls, size_t size) {
  if (unlikely(h == &empty_heap)) {
    h = heap_init_thread();
    if (!h) return NULL;
    if (cls == 0) return zero_alloc();
    page_t *pg = h->current[cls];
    if (pg->free) return page_take(pg, "malloc");
  }
  if (unlikely(cls == 0)) return zero_alloc();
  if (unlikely(g.slow_mode)) return checked_malloc(h, cls, size);
  return page_alloc_sized(h, cls, size);
}

static void *page_alloc_locked(heap_t *h, size_t cls, size_t size);

/* page_alloc_locked under the page lock, resident free pages purged first
 * when their delay is due. */
static NOINLINE void *page_alloc_slow_locked(heap_t *h, size_t cls,
                                             size_t size) {
  if (h->dirty_pages) segment_purge_heap(h, false);
  uint64_t now = os_now_ms();
  if (now >= h->sweep_due) page_sweep_empty(h, now);
  os_lock(&h->page_lock);
  void *p = page_alloc_locked(h, cls, size);
  os_unlock(&h->page_lock);
  purge_poll();
  return p;
}

/* How many dry pages a churning class looks past, and how many failed looks
 * it takes (h->churn) before its dry pages go to the full list again. */
#define CHURN_SCAN 4
#define CHURN_HOLD 64

/* A class in churn (random frees spread over a few pages): when the current
 * page runs dry, the blocks freed meanwhile sit in its other pages. Moving
 * the dry page to the full list would make the next free into it take the
 * page lock to bring it back, once per refill; instead, without the lock,
 * look at the first few pages of `avail` and send dry ones to its back. A
 * class whose pages stay dry (a phase that only allocates) loses its churn
 * mark and goes back to the full lists, which the purge thread can retire
 * from. */
static NOINLINE void *page_alloc_rotate(heap_t *h, size_t cls) {
  page_list_t *l = &h->avail[cls];
  for (int i = 0; i < CHURN_SCAN; i++) {
    page_t *pg = l->first;
    if (!pg) break;
    page_collect(pg);
    if (pg->free) {
      set_current(h, cls, pg);
      return page_take(pg, "malloc");
    }
    if (pg == l->last) break;
    plist_remove(l, pg);
    plist_push_back(l, pg);
  }
  h->churn[cls]--;
  return NULL;
}

/* Whether a request may be cut from free medium chunks (medium_small): of
 * MEDIUM_SMALL_MIN bytes and up, and below its class's size -- aligned
 * requests come with the class's size, since their blocks must keep the
 * class's alignment, which a chunk does not have. */
static ALWAYS_INLINE bool medium_small_ok(size_t cls, size_t size) {
  return size < class_size[cls] && size >= MEDIUM_SMALL_MIN;
}

/* How many classes above its own a request may borrow a block from, and how
 * many blocks a class may borrow between two growths of its pages (so that
 * a class whose blocks come and go at the margin does not take the slow
 * path for each). h->borrowed[cls] counts them; BORROW_NONE there: the class
 * found no lender and does not look again without the page lock until
 * blocks come back to it or to a lender from other threads, or another
 * thread takes the heap over (a heap that only grows looks once per class
 * there). */
#define BORROW_CLASSES 2
#define BORROW_MAX 16
#define BORROW_NONE (BORROW_MAX + 1)

/* A block of a larger class, carved and free, for a request of class cls
 * that has nothing resident left: its pages would grow into new memory
 * otherwise. NULL if none. A heap's pages hold, class by class, the most
 * blocks the class ever had at once (rounded up to OS pages), which for a
 * few blocks of each of many classes is about twice what is live at any one
 * time; borrowing at that margin lets neighbouring classes share their
 * slack (threadchurn: docs/memory.md, "Borrowing a larger block"). Only the
 * first available page of the next BORROW_CLASSES classes is looked at, if
 * it has more than an OS page of blocks free (blocks freed, not just carved:
 * a heap that only grows gains nothing from lending), and only blocks less
 * than twice the size (free_sized accepts more than half of the block). Not
 * for requests of the class's own size, which is how aligned ones come
 * (their blocks need the class's alignment, and free_aligned_sized expects
 * the class), nor for first-class heaps, whose aligned requests come with
 * their own size, nor in checked mode, whose accounting is per class. (The
 * heap profiler counts a borrowed block as one block of the class asking:
 * prof.c, borrowed_sample. Not borrowing while profiling made the profiled
 * heap another heap: aligned 1000000 took 330 page faults and 1.3 MB more.)
 */
static NOINLINE void *page_borrow(heap_t *h, size_t cls, size_t size,
                                  bool locked) {
  if (h->first_class || g.slow_mode) {
    h->borrowed[cls] = BORROW_NONE; /* or every refill would come here */
    return NULL;
  }
  for (size_t d = cls + 1; d <= cls + BORROW_CLASSES && d < NCLASSES; d++) {
    if (class_size[d] >= 2 * size) break;
    /* under the page lock: the lender's full pages other threads freed
     * into come first in its list, as its own refill would bring them */
    if (locked) heap_wake_full(h, d);
    page_t *q = h->avail[d].first; /* the owner's: no lock */
    if (!q) continue;
    if (!q->free && atomic_load_explicit(&q->xfree, memory_order_relaxed))
      page_collect_xfree(q);
    if (q->capacity - q->used > OS_PAGE / q->bsize) {
      h->borrowed[cls]++;
      return page_take(q, "malloc");
    }
  }
  h->borrowed[cls] = BORROW_NONE;
  return NULL;
}

/* Class cls's pages grow into new memory: the blocks it may borrow start
 * over, unless it found no lender. */
static ALWAYS_INLINE void page_borrow_grown(heap_t *h, size_t cls) {
  if (h->borrowed[cls] == BORROW_MAX) h->borrowed[cls] = 0;
}

/* A class may look for a lender: it has not borrowed its fill since its
 * pages last grew, and the request is not of its own size (aligned). */
static ALWAYS_INLINE bool page_may_borrow(const heap_t *h, size_t cls,
                                          size_t size) {
  return h->borrowed[cls] < BORROW_MAX && size < class_size[cls];
}

static ALWAYS_INLINE void *page_try_borrow(heap_t *h, size_t cls, size_t size) {
  return page_may_borrow(h, cls, size) ? page_borrow(h, cls, size, false)
                                       : NULL;
}

/* Whether a class that found no lender (BORROW_NONE) should look again:
 * a lender's blocks came back to its full pages (wake: xwake | xstrand),
 * which only a borrower holding the page lock can reach (page_borrow). */
static ALWAYS_INLINE bool page_lender_woken(heap_t *h, size_t cls, size_t size,
                                            uint64_t wake) {
  return ((wake >> (cls + 1)) & ((1u << BORROW_CLASSES) - 1)) &&
         h->borrowed[cls] == BORROW_NONE && size < class_size[cls];
}

/* A block of class cls from the heap's pages: the current page's free list,
 * then the other pages of the class, then pages freed into while full, then
 * an abandoned heap's pages, then the heap's free medium chunks (size below
 * the class's size: see medium_small), then a larger class's free block
 * (page_borrow), then a resident free page of the class, and only then new
 * memory: the class's pages carved further, or a fresh page. */
static ALWAYS_INLINE void *page_alloc_sized(heap_t *h, size_t cls,
                                            size_t size) {
  /* Refilling the current page needs no lock: only the owner touches pages
   * outside the full lists. */
  page_t *cur = h->current[cls];
  if (cur != &empty_page) {
    /* blocks back from other threads: lenders may have some too */
    if (atomic_load_explicit(&cur->xfree, memory_order_relaxed) &&
        page_collect_xfree(cur))
      h->borrowed[cls] = 0;
    size_t n = page_carve_resident(cur);
    if (!n) {
      if (cur->free) return page_take(cur, "malloc");
    } else {
      uint64_t wake = atomic_load_explicit(&h->xwake, memory_order_relaxed) |
                      atomic_load_explicit(&h->xstrand, memory_order_relaxed);
      /* Blocks of its own came back (or a free page of it is resident):
       * those first (below), not a lender's. Borrowing first made the
       * lenders grow in its place: prodcons, whose classes all fill up at
       * once, held about 0.5 MiB more per producer (docs/memory.md, "A
       * queue that fills and drains"). */
      if (!(wake >> cls & 1) && !segment_page_resident(h, cls)) {
        void *p = page_try_borrow(h, cls, size);
        if (p) return p;
        /* the class's only page (or an aligned request: below), nothing
         * freed into its full pages nor a lender's, and no free page of it
         * resident: it grows here, without the page lock. An aligned
         * request (size SIZE_MAX) grows its current page before looking at
         * the class's other pages: under churn, those hold a block or two
         * each, and refilling from them made the aligned workload's
         * small-page refills 37 259 -> 48 349 (callgrind aligned 300000:
         * 133.32 M -> 136.37 M instructions) for no gain in its peak RSS
         * (53.5 -> 53.7 MiB). */
        if ((h->avail[cls].count == 1 || size == SIZE_MAX) &&
            !(unlikely(wake) && page_lender_woken(h, cls, size, wake))) {
          page_borrow_grown(h, cls);
          extend_blocks(cur, n);
          return page_take(cur, "malloc");
        }
      }
    }
  }
  if (h->churn[cls]) {
    void *p = page_alloc_rotate(h, cls);
    if (p) return p;
  }
  /* a class already served from medium chunks (below) while its pages
   * stay full: straight there, without the page lock */
  if (cur == &empty_page && medium_small_ok(cls, size) &&
      !h->avail[cls].first &&
      !((atomic_load_explicit(&h->xwake, memory_order_relaxed) |
         atomic_load_explicit(&h->xstrand, memory_order_relaxed)) &
        ((uint64_t)1 << cls))) {
    void *p = medium_small(h, size);
    if (p) return p;
  }
  return page_alloc_slow_locked(h, cls, size);
}

/* For checked mode: the size is the class's, so no medium chunk nor a
 * borrowed block, and no page is ever current (set_current): straight to
 * the class's pages. */
void *page_alloc_block(heap_t *h, size_t cls) {
  return page_alloc_slow_locked(h, cls, class_size[cls]);
}

static void *page_alloc_locked(heap_t *h, size_t cls, size_t size) {
  page_t *grow = NULL; /* a page that can be carved further, into new memory */
  for (int round = 0; round < 3; round++) {
    page_t *pg = h->avail[cls].first;
    while (pg) {
      page_t *next = pg->next;
      if (!pg->free && page_collect(pg) && !grow) grow = pg;
      if (pg->free) {
        if (pg != h->avail[cls].first) {
          plist_remove(&h->avail[cls], pg);
          plist_push_front(&h->avail[cls], pg);
        }
        set_current(h, cls, pg);
        return page_take(pg, "malloc");
      }
      /* a page that can still grow stays available */
      if (pg->capacity == pg->reserved && !page_to_full(h, pg))
        continue; /* a block arrived: look again */
      pg = next;
    }
    size_t had = h->avail[cls].count;
    heap_wake_full(h, cls);
    if (h->avail[cls].count > had) continue;
    if (round == 0 && heap_absorb_abandoned(h) && h->avail[cls].count > had)
      continue;
    break;
  }
  /* medium chunks once the class's pages are all carved */
  if (!grow && medium_small_ok(cls, size)) {
    void *p = medium_small(h, size);
    if (p) {
      set_current(h, cls, &empty_page); /* never a page of the full list */
      return p;
    }
  }
  uint64_t wake = atomic_load_explicit(&h->xwake, memory_order_relaxed) |
                  atomic_load_explicit(&h->xstrand, memory_order_relaxed);
  void *p =
      page_may_borrow(h, cls, size) || page_lender_woken(h, cls, size, wake)
          ? page_borrow(h, cls, size, true)
          : NULL;
  if (p) {
    set_current(h, cls, grow ? grow : &empty_page);
    return p;
  }
  /* new memory for the class: carved from one of its pages rather than a
   * fresh page, unless a page it held is free and still resident */
  page_borrow_grown(h, cls);
  if (grow && !segment_page_resident(h, cls)) {
    page_grow(grow);
    if (grow != h->avail[cls].first) {
      plist_remove(&h->avail[cls], grow);
      plist_push_front(&h->avail[cls], grow);
    }
    set_current(h, cls, grow);
    return page_take(grow, "malloc");
  }
  page_t *pg = segment_page_alloc(h, cls);
  if (!pg) {
    if (grow) {
      page_grow(grow);
      set_current(h, cls, grow);
      return page_take(grow, "malloc");
    }
    set_current(h, cls,
                h->avail[cls].first ? h->avail[cls].first : &empty_page);
    return NULL;
  }
  page_init(h, pg, cls);
  plist_push_front(&h->avail[cls], pg);
  page_set_queue(pg, h, Q_AVAIL);
  page_grow(pg); /* secure mode: and the page's guard */
  set_current(h, cls, pg);
  return page_take(pg, "malloc");
}

/* After a local free that emptied a page outside the full lists. */
void page_free_slow(heap_t *h, page_t *pg) {
  if (pg->used == 0) page_retire(h, pg, true);
  purge_poll();
  purge_prompt_small(h);
}

/* The owner frees into a full page: under the page lock, since the purge
 * thread may be looking at the full list. */
void page_free_full(heap_t *h, page_t *pg, block_t *b) {
  h->churn[pg->cls] = CHURN_HOLD;
  os_lock(&h->page_lock);
  b->mark = free_mark(b);
  b->next = link_encode(pg->free, b);
  pg->free = b;
  pg->used--;
  page_from_full(h, pg);
  if (pg->used == 0) page_retire(h, pg, true);
  os_unlock(&h->page_lock);
  purge_poll();
  purge_prompt_small(h);
}

/* A free from a thread that does not own the page. Returns true when it
 * flagged the page's class for the owner for the first time: the caller
 * then lets the purge thread know (at a point where it holds no lock), in
 * case the owner never comes back for it. */
bool page_xfree(page_t *pg, block_t *b) {
  /* Read the class while the block keeps the page in use: once pushed, the
   * owner may collect it, empty the page and hand it to another class. */
  uint64_t bit = (uint64_t)1 << pg->cls;
  b->mark = free_mark(b);
  uintptr_t word = atomic_load_explicit(&pg->xfree, memory_order_relaxed);
  do {
    /* two frees of b racing past free's mark test: the list would loop */
    if (unlikely(xfree_head(word) == b))
      fault("free", "double free (cross-thread)", b);
    b->next = link_encode(xfree_head(word), b);
  } while (!atomic_compare_exchange_weak_explicit(
      &pg->xfree, &word, xfree_word(b, xfree_count(word) + 1),
      memory_order_seq_cst, memory_order_relaxed));
  if (unlikely(atomic_load_explicit(&pg->full, memory_order_seq_cst))) {
    heap_t *h = atomic_load_explicit(&pg->heap, memory_order_acquire);
    /* NULL: retired meanwhile, nobody to wake */
    if (h && !(atomic_load_explicit(&h->xwake, memory_order_relaxed) & bit) &&
        !(atomic_fetch_or_explicit(&h->xwake, bit, memory_order_seq_cst) &
          bit)) {
      purge_want();
      return true;
    }
  }
  return false;
}

/* Collect every page of the heap and give back the empty ones. A heap about
 * to be abandoned keeps its pages with live blocks in the full lists, so
 * that frees into them from other threads flag the purge thread, which
 * retires each page once its last block is back. */
void heap_collect_pages(heap_t *h, bool abandoning) {
  if (unlikely(g.prof)) prof_uncut(h); /* the profile's cut lists, whole */
  os_lock(&h->page_lock);
  for (size_t cls = 1; cls < NCLASSES; cls++) {
    page_t *pg = h->full[cls].first;
    while (pg) {
      page_t *next = pg->next;
      if (abandoning || atomic_load_explicit(&pg->xfree, memory_order_relaxed))
        page_from_full(h, pg);
      pg = next;
    }
    pg = h->avail[cls].first;
    while (pg) {
      page_t *next = pg->next;
      collect_xfree_all(pg);
      /* the class's last page too: a collection is asked for (malloc_trim,
       * allot_collect, allot_heap_collect, prompt return), and a class's
       * next malloc takes a page again on its slow path */
      if (pg->used == 0) page_retire(h, pg, false);
      pg = next;
    }
    if (abandoning) {
      h->current[cls] = &empty_page;
      while ((pg = h->avail[cls].first)) {
        if (page_to_full(h, pg)) continue;
        /* a block arrived meanwhile: collect it and look again */
        collect_xfree_all(pg);
        if (pg->used == 0) page_retire(h, pg, false);
      }
    }
  }
  atomic_store_explicit(&h->xwake, 0, memory_order_relaxed);
  atomic_store_explicit(&h->xstrand, 0, memory_order_relaxed);
  os_unlock(&h->page_lock);
}

/* A thread takes over an abandoned heap whole: its pages go back to the
 * available lists, where the owner's slow path finds their free blocks. */
void heap_adopt_pages(heap_t *h) {
  os_lock(&h->page_lock);
  memset(h->borrowed, 0, sizeof h->borrowed);
  for (size_t cls = 1; cls < NCLASSES; cls++)
    while (h->full[cls].first)
      page_from_full(h, h->full[cls].first);
  atomic_store_explicit(&h->xwake, 0, memory_order_relaxed);
  atomic_store_explicit(&h->xstrand, 0, memory_order_relaxed);
  os_unlock(&h->page_lock);
}

/* The purge thread: full pages into which other threads have freed while the
 * owner stayed away (idle, blocked, or exited) for a purge delay. A page
 * whose every block came back is retired to its segment, which gives its
 * memory back after the delay; the owner, if it returns, finds the rest via
 * xstrand. Only full pages are touched: the owner uses the others without a
 * lock, and frees into full ones under the page lock (page_free_full).
 * Returns when to look again. */
static void reclaim(heap_t *h, bool purge);

uint64_t page_reclaim_heap(heap_t *h, uint64_t now) {
  if (!atomic_load_explicit(&h->xwake, memory_order_relaxed)) {
    h->xwake_since = 0;
    return UINT64_MAX;
  }
  uint64_t delay = (uint64_t)g.purge_delay_ms;
  if (!h->xwake_since) h->xwake_since = now;
  if (now < h->xwake_since + delay) return h->xwake_since + delay;
  if (!os_trylock(&h->page_lock)) return now + delay;
  h->xwake_since = 0;
  reclaim(h, true);
  os_unlock(&h->page_lock);
  return UINT64_MAX;
}

/* The work of page_reclaim_heap, with h's page lock held: also done by a
 * thread that is about to map a new segment (segment_steal), which keeps the
 * pages resident to reuse them. */
void page_reclaim_locked(heap_t *h) {
  reclaim(h, false);
}

/* purge: the pages retired are due at once (segment_page_release), and the
 * purge pass that called this gives them back next (segment_purge_heap).
 * Their owner has left them for a purge delay already; as dirty free pages
 * they would wait another (larson on an idle machine: the main thread's
 * 5000 blocks, freed by the workers while it waits, stayed resident for
 * 100 ms, the run's peak at 15 MiB against 12-13 MiB after). */
static void reclaim(heap_t *h, bool purge) {
  uint64_t wake = atomic_exchange_explicit(&h->xwake, 0, memory_order_seq_cst),
           left = 0;
  while (wake) {
    size_t cls = (size_t)__builtin_ctzll(wake);
    wake &= wake - 1;
    page_t *pg = h->full[cls].first;
    while (pg) {
      page_t *next = pg->next;
      uintptr_t word =
          atomic_exchange_explicit(&pg->xfree, 0, memory_order_acquire);
      if (word) {
        block_t *head = xfree_head(word), *b = head, *last = NULL;
        size_t n = 0;
        for (; b; last = b, b = link_decode(b->next, b)) {
          check_block(pg, b, "corrupted cross-thread free list");
          if (++n > pg->used) fault("free", "double free (cross-thread)", b);
        }
        if (n != xfree_count(word))
          fault("free", "corrupted cross-thread free list", head);
        if (n == pg->used) {
          atomic_fetch_add_explicit(&h->xfrees, n, memory_order_relaxed);
          plist_remove(&h->full[cls], pg);
          if (purge)
            segment_page_release(h, pg);
          else
            segment_page_free(h, pg);
        } else {
          /* blocks still live: put the list back for the owner */
          uintptr_t cur =
              atomic_load_explicit(&pg->xfree, memory_order_relaxed);
          do {
            last->next = link_encode(xfree_head(cur), last);
          } while (!atomic_compare_exchange_weak_explicit(
              &pg->xfree, &cur, xfree_word(head, xfree_count(cur) + n),
              memory_order_release, memory_order_relaxed));
          left |= (uint64_t)1 << cls;
        }
      }
      pg = next;
    }
  }
  if (left) atomic_fetch_or_explicit(&h->xstrand, left, memory_order_relaxed);
}

/* Take over the small pages of an abandoned heap. */
void heap_absorb(heap_t *into, heap_t *from) {
  segment_move_all(into, from);
  for (size_t cls = 1; cls < NCLASSES; cls++) {
    page_list_t *lists[2] = {&from->avail[cls], &from->full[cls]};
    for (int k = 0; k < 2; k++) {
      while (lists[k]->first) {
        page_t *pg = lists[k]->first;
        plist_remove(lists[k], pg);
        atomic_store_explicit(&pg->heap, into, memory_order_seq_cst);
        atomic_store_explicit(&pg->full, 0, memory_order_seq_cst);
        plist_push_back(&into->avail[cls], pg);
        page_set_queue(pg, into, Q_AVAIL);
        page_collect_xfree(pg);
        if (pg->used == 0) page_retire(into, pg, true);
      }
    }
    from->current[cls] = &empty_page;
  }
  atomic_store_explicit(&from->xwake, 0, memory_order_relaxed);
}
