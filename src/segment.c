/* segment.c: segments, the segment map, page allocation within segments, and
 * the medium-object chunk heap living in medium segments.
 *
 * A segment is SEG_SIZE bytes aligned to SEG_SIZE; its header (and the page
 * descriptors of a small segment) fill the start of page 0, away from user
 * data. Empty segments go to a small process-wide cache, their pages purged,
 * before being unmapped, so a program that frees and reallocates a few MiB in
 * a loop does not pay for mmap each time. */
#include "internal.h"

INTERNAL _Atomic uint8_t segmap[SEGMAP_UNITS];

static os_lock_t seg_list_lock; /* guards all_segs and the cache */
static os_lock_t zero_lock;     /* guards the zero-size blocks */
#ifdef ALLOT_TEST_HOOKS
os_lock_t *segments_test_lock(const char *name) {
  return !strcmp(name, "zero")       ? &zero_lock
         : !strcmp(name, "seg_list") ? &seg_list_lock
                                     : NULL;
}
#endif
static segment_t *all_segs;
static segment_t *seg_cache;
static _Atomic size_t seg_cache_count;
#define SEG_CACHE_MAX 8

/* Only a segment's first unit is marked: pointers into later units of a
 * large mapping are never valid block starts. `on` marks it with its kind
 * (segment_register set it), flagged while checked mode is on so that
 * free's fast path leaves it to checked.c. */
void segmap_set(const void *seg, size_t size, bool on) {
  (void)size;
  const segment_t *s = seg;
  unsigned v = 0;
  if (on && s->kind) v = s->kind | (g.slow_mode ? SEGMAP_CHECKED : 0);
  atomic_store_explicit(&segmap[(uintptr_t)seg >> SEG_SHIFT], (uint8_t)v,
                        memory_order_release);
}

/* Statistics mode turned on or off at run time (options.c): mark every
 * segment again. Under the list lock, as segment_register marks a new one,
 * so none is left with the old mode. */
void segmap_refresh(void) {
  os_lock(&seg_list_lock);
  for (segment_t *s = all_segs; s; s = s->next)
    if (segmap_has(s)) segmap_set(s, s->map_size, true);
  os_unlock(&seg_list_lock);
}

static void list_insert(segment_t *s) {
  s->prev = NULL;
  s->next = all_segs;
  if (all_segs) all_segs->prev = s;
  all_segs = s;
}
static void list_remove(segment_t *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    all_segs = s->next;
  if (s->next) s->next->prev = s->prev;
}

/* Clears the fixed part of the header; a small segment's page descriptors
 * are segment_alloc's to clear. */
void segment_register(segment_t *s, int kind, size_t map_size) {
  memset(s, 0, offsetof(segment_t, pages));
  s->cookie = g.key ^ (uintptr_t)s;
  s->kind = (uint8_t)kind;
  s->map_size = map_size;
  os_lock(&seg_list_lock);
  list_insert(s);
  segmap_set(s, map_size, true);
  os_unlock(&seg_list_lock);
}

/* A segment whose mapping the kernel moved (mremap): its header came along. */
void segment_register_moved(segment_t *s) {
  s->cookie = g.key ^ (uintptr_t)s;
  os_lock(&seg_list_lock);
  list_insert(s);
  segmap_set(s, s->map_size, true);
  os_unlock(&seg_list_lock);
}

void segment_unregister(segment_t *s) {
  os_lock(&seg_list_lock);
  /* under the lock: allot_check reads a listed large block's state, then
   * its mark, and a block freed in between must keep the mark until the
   * check has moved on */
  segmap_set(s, s->map_size, false);
  list_remove(s);
  os_unlock(&seg_list_lock);
}

static void heap_seg_push(segment_t **head, segment_t *s) {
  s->hprev = NULL;
  s->hnext = *head;
  if (*head) (*head)->hprev = s;
  *head = s;
}
static void heap_seg_remove(segment_t **head, segment_t *s) {
  if (s->hprev)
    s->hprev->hnext = s->hnext;
  else
    *head = s->hnext;
  if (s->hnext) s->hnext->hprev = s->hprev;
  s->hnext = s->hprev = NULL;
}

/* The dirty_free lists, under the owner's seg_lock. A dirty free page is on
 * the list of the class it last held, last_cls (0: on none). */
static void dirty_push(heap_t *h, page_t *pg, size_t cls) {
  pg->last_cls = (uint8_t)cls;
  plist_push_front(&h->dirty_free[cls], pg);
  atomic_fetch_or_explicit(&h->dirty_classes, (uint64_t)1 << cls,
                           memory_order_relaxed);
}
static void dirty_unlink(heap_t *h, page_t *pg) {
  size_t cls = pg->last_cls;
  if (!cls) return;
  plist_remove(&h->dirty_free[cls], pg);
  if (!h->dirty_free[cls].first)
    atomic_fetch_and_explicit(&h->dirty_classes, ~((uint64_t)1 << cls),
                              memory_order_relaxed);
  pg->last_cls = 0;
}
/* A dirty page stops being dirty: purged, or taken for blocks. */
static void page_clean(heap_t *h, page_t *pg) {
  segment_t *s = segment_of(pg);
  dirty_unlink(h, pg);
  s->dirty_mask &= ~((uint64_t)1 << (pg - s->pages));
  s->dirty_bytes -= pg->touched;
  h->dirty_pages--;
}

segment_t *segment_alloc(heap_t *h, int kind) {
  segment_t *s = NULL;
  os_lock(&seg_list_lock);
  if (seg_cache) {
    s = seg_cache;
    seg_cache = s->hnext;
    seg_cache_count--;
    list_remove(s);
  }
  os_unlock(&seg_list_lock);
  bool reused = s != NULL;
  if (s) segmap_set(s, SEG_SIZE, false);
  if (!s) {
    large_cache_yield(SEG_SIZE); /* no cached large pages beside it */
    s = os_map_aligned(SEG_SIZE, SEG_SIZE);
  }
  if (!s) return NULL;
  /* A reused segment's page descriptors are stale. A fresh mapping's are
   * zero: clearing them would make all three OS pages they span resident in
   * a program that uses a few pages (8 KiB more per heap). */
  if (kind == SEG_SMALL && reused) memset(s->pages, 0, sizeof s->pages);
  segment_register(s, kind, SEG_SIZE);
  atomic_store_explicit(&s->heap, h, memory_order_relaxed);
  if (kind == SEG_SMALL) {
    s->free_pages = ~(uint64_t)1; /* page 0 holds this header */
    heap_seg_push(&h->segs, s);
  } else if (kind == SEG_MEDIUM) {
    s->region = (uint8_t *)s + PAGE_SIZE;
    s->region_size = SEG_SIZE - PAGE_SIZE;
    heap_seg_push(&h->medium_segs, s);
  }
  if (unlikely(g.secure)) secure_segment_init(s); /* guard pages */
  return s;
}

/* Give an empty small or medium segment back: to the cache with its pages
 * purged, or to the OS when the cache is full. */
void segment_free(segment_t *s) {
  heap_t *h = atomic_load_explicit(&s->heap, memory_order_relaxed);
  if (s->kind == SEG_SMALL) {
    heap_seg_remove(&h->segs, s);
    /* purge the dirty runs of pages, coalesced into as few calls as possible */
    while (s->dirty_mask) {
      size_t i = (size_t)__builtin_ctzll(s->dirty_mask), j = i;
      while (j < PAGES_PER_SEG && (s->dirty_mask >> j & 1))
        page_clean(h, &s->pages[j++]);
      os_purge((uint8_t *)s + i * PAGE_SIZE, (j - i) * PAGE_SIZE);
    }
  } else {
    heap_seg_remove(&h->medium_segs, s);
    os_purge(s->region, s->region_size);
  }
  os_lock(&seg_list_lock);
  /* frees into a cached segment are invalid frees; under the list lock, as
   * allot_check reads kinds while it walks the list */
  s->kind = 0;
  segmap_set(s, SEG_SIZE, false);
  if (seg_cache_count < SEG_CACHE_MAX) {
    s->hnext = seg_cache;
    seg_cache = s;
    seg_cache_count++;
    s = NULL;
  }
  os_unlock(&seg_list_lock);
  if (s) {
    segment_unregister(s);
    os_unmap(s, SEG_SIZE);
  }
}

/* Unmap every cached segment (allot_collect, malloc_trim). */
void segment_collect_cache(bool force) {
  if (!force) return;
  for (;;) {
    os_lock(&seg_list_lock);
    segment_t *s = seg_cache;
    if (s) {
      seg_cache = s->hnext;
      seg_cache_count--;
      list_remove(s);
    }
    os_unlock(&seg_list_lock);
    if (!s) break;
    segmap_set(s, SEG_SIZE, false);
    os_unmap(s, SEG_SIZE);
  }
}

static page_t *segment_page_alloc_locked(heap_t *h, size_t cls, bool may_map);

/* An empty small segment of another heap, taken over by h, or NULL. Memory
 * other threads freed into the pages of a heap whose owner stays away (or
 * has exited) is reused here rather than mapped anew: the pages whose every
 * block came back are retired first (page_reclaim_locked), then a segment
 * left with no page in use changes hands, its memory still resident. Only
 * try-locks: the caller holds its own page lock. */
static segment_t *segment_steal(heap_t *h, size_t *dirty_out) {
  for (heap_t *x = heaps_first(); x; x = x->next_all) {
    if (x == h) continue;
    if (atomic_load_explicit(&x->xwake, memory_order_relaxed) &&
        os_trylock(&x->page_lock)) {
      page_reclaim_locked(x);
      os_unlock(&x->page_lock);
    }
    if (!os_trylock(&x->seg_lock)) continue;
    /* the heap keeps its first segment, where its latest free page is */
    segment_t *s = x->segs ? x->segs->hnext : NULL;
    while (s && s->pages_used)
      s = s->hnext;
    if (s) {
      heap_seg_remove(&x->segs, s);
      size_t dirty = 0;
      /* the dirty pages are the ones on x's lists */
      for (uint64_t m = s->dirty_mask; m; m &= m - 1) {
        page_t *pg = &s->pages[__builtin_ctzll(m)];
        size_t cls = pg->last_cls;
        dirty++;
        /* off x's lists; segment_page_alloc puts it on h's */
        dirty_unlink(x, pg);
        pg->last_cls = (uint8_t)cls;
      }
      x->dirty_pages -= dirty;
      *dirty_out = dirty;
    }
    os_unlock(&x->seg_lock);
    if (s) return s;
  }
  return NULL;
}

page_t *segment_page_alloc(heap_t *h, size_t cls) {
  purge_prompt_took(h);
  os_lock(&h->seg_lock);
  page_t *pg = segment_page_alloc_locked(h, cls, false);
  os_unlock(&h->seg_lock);
  if (pg) return pg;
  /* a new segment: from the cache, another heap, or the OS */
  size_t dirty = 0;
  segment_t *stolen =
      atomic_load_explicit(&seg_cache_count, memory_order_relaxed)
          ? NULL
          : segment_steal(h, &dirty);
  os_lock(&h->seg_lock);
  if (stolen) {
    atomic_store_explicit(&stolen->heap, h, memory_order_release);
    heap_seg_push(&h->segs, stolen);
    for (uint64_t m = stolen->dirty_mask; m; m &= m - 1) {
      page_t *sp = &stolen->pages[__builtin_ctzll(m)];
      size_t c = sp->last_cls;
      if (c) dirty_push(h, sp, c);
    }
    if (dirty) {
      if (!h->dirty_pages)
        h->purge_due = os_now_ms() + (uint64_t)g.purge_delay_ms;
      h->dirty_pages += dirty;
    }
  }
  pg = segment_page_alloc_locked(h, cls, true);
  os_unlock(&h->seg_lock);
  return pg;
}

/* A free page for class cls: the latest that held cls and is still
 * resident, whose memory is touched as far as the class needed it and no
 * further; else the first free page of the first segment that has one; else
 * a new segment's. Any dirty page would do, but one of another class keeps
 * what that class touched resident under a class that may need little of it:
 * taking the lowest free page, larson's and threadchurn's pages ended up
 * nearly all fully resident, a few blocks in use in most (38-41 MiB peak
 * RSS against 28 MiB, threadchurn 10.2 against 6.8 MiB). */
static page_t *segment_page_alloc_locked(heap_t *h, size_t cls, bool may_map) {
  /* the bit, not the list: dirty_free runs onto the heap's second page,
   * which a thread with no free page never needs (a read alone can make it
   * resident: docs/memory.md, session 23) */
  page_t *pg =
      atomic_load_explicit(&h->dirty_classes, memory_order_relaxed) >> cls & 1
          ? h->dirty_free[cls].first
          : NULL;
  segment_t *s;
  unsigned i;
  if (pg) {
    s = segment_of(pg);
    i = (unsigned)(pg - s->pages);
  } else {
    s = h->segs;
    while (s && !s->free_pages)
      s = s->hnext;
    if (!s) {
      if (!may_map) return NULL;
      s = segment_alloc(h, SEG_SMALL);
      if (!s) return NULL;
    }
    i = (unsigned)__builtin_ctzll(s->free_pages);
    pg = &s->pages[i];
  }
  if (s != h->segs) {
    /* keep segments with free pages at the front */
    heap_seg_remove(&h->segs, s);
    heap_seg_push(&h->segs, s);
  }
  s->free_pages &= ~((uint64_t)1 << i);
  s->pages_used++;
  if (segment_page_is_dirty(s, pg)) {
    /* another class's: carved anew from a purged page, it holds no more
     * memory than the new class touches */
    bool other = pg->last_cls != cls;
    page_clean(h, pg);
    if (other) {
      os_purge((uint8_t *)s + i * PAGE_SIZE, PAGE_SIZE);
      pg->touched = 0;
    }
  }
  pg->freed_at = 0;
  if (!s->free_pages) {
    /* full segments go to the back so the search above stops early */
    heap_seg_remove(&h->segs, s);
    segment_t **tail = &h->segs;
    segment_t *prev = NULL;
    while (*tail) {
      prev = *tail;
      tail = &(*tail)->hnext;
    }
    s->hprev = prev;
    s->hnext = NULL;
    *tail = s;
  }
  return pg;
}

/* Under the owner's seg_lock: an empty segment whose pages are all purged
 * goes back, unless it is the heap's only one. */
static void segment_free_if_clean(segment_t *s) {
  if (s->pages_used || !(s->hnext || s->hprev) || s->dirty_mask) return;
  segment_free(s);
}

/* due_now: the page is due for purging at once rather than after the delay
 * (the purge thread retiring a page its owner left: segment_page_release).
 * It joins the dirty pages as if freed long ago, so that the purge pass that
 * follows gives back runs of such pages in one call each, and a segment they
 * empty in one munmap or cache entry: one madvise per 64 KiB page made the
 * purge thread give 1 GiB back at about 150 MiB/s on a busy machine
 * (mem_return xthread beside two busy loops: 2.9-4.4 s). */
static void page_free_as(heap_t *h, page_t *pg, bool due_now) {
  size_t cls = pg->cls;
  os_lock(&h->seg_lock);
  segment_t *s = segment_of(pg);
  size_t i = (size_t)(pg - s->pages);
  /* how far the page's memory is resident, for its next life (page.c) */
  uint32_t end = (uint32_t)(((size_t)pg->capacity * pg->bsize + OS_PAGE - 1) &
                            ~(size_t)(OS_PAGE - 1));
  if (end > pg->touched) pg->touched = end;
  s->uncarved += (size_t)pg->capacity * pg->bsize;
  /* Field by field: a thread that just pushed a block here (and whose push
   * the owner has already collected) may still read `full` and `heap`. */
  pg->free = NULL;
  pg->used = pg->reserved = pg->bsize = 0;
  pg->divm = 0; /* no offset passes free's test */
  page_set_capacity(pg, 0);
  pg->cls = 0;
  page_set_queue(pg, NULL, Q_NONE);
  pg->next = pg->prev = NULL;
  atomic_store_explicit(&pg->full, 0, memory_order_relaxed);
  atomic_store_explicit(&pg->xfree, 0, memory_order_relaxed);
  atomic_store_explicit(&pg->heap, NULL, memory_order_release);
  bool first = false, want = false;
  segment_page_dirty(s, pg);
  s->dirty_bytes += pg->touched;
  dirty_push(h, pg, cls);
  if (due_now) {
    pg->freed_at = 0;
    h->purge_due = 0;
    h->dirty_pages++;
  } else {
    pg->freed_at = os_now_ms();
    first = h->dirty_pages == 0;
    if (first) h->purge_due = pg->freed_at + (uint64_t)g.purge_delay_ms;
    /* a single-threaded program's purge thread (purge_worth_a_thread) */
    want = ++h->dirty_pages == PURGE_THREAD_MIN / PAGE_SIZE;
  }
  s->free_pages |= (uint64_t)1 << i;
  s->pages_used--;
  /* An empty segment stays until the purge pass finds its pages old enough:
   * a program that frees everything and allocates again should find its
   * memory still there, not fault it in anew. */
  if (s != h->segs) {
    heap_seg_remove(&h->segs, s);
    heap_seg_push(&h->segs, s);
  }
  os_unlock(&h->seg_lock);
  if (first) purge_notify();
  if (want) purge_want();
}

void segment_page_free(heap_t *h, page_t *pg) {
  page_free_as(h, pg, false);
}

/* The purge thread retires a page its owner left (page.c's reclaim): its
 * next segment_purge_heap gives it back. */
void segment_page_release(heap_t *h, page_t *pg) {
  page_free_as(h, pg, true);
}

/* Pages of h's small segments in use (thread exit: heap.c). */
size_t segment_pages_in_use(heap_t *h) {
  size_t n = 0;
  os_lock(&h->seg_lock);
  for (segment_t *s = h->segs; s; s = s->hnext)
    n += s->pages_used;
  os_unlock(&h->seg_lock);
  return n;
}

/* heap_absorb: every small segment of from goes to into, with its dirty
 * pages and their lists. Both segment locks, in the order of the all-heaps
 * list: the order fork_prepare takes them in, so neither can wait for the
 * other. */
void segment_move_all(heap_t *into, heap_t *from) {
  heap_t *first = from;
  for (heap_t *x = heaps_first(); x; x = x->next_all)
    if (x == into || x == from) {
      first = x;
      break;
    }
  heap_t *second = first == into ? from : into;
  os_lock(&first->seg_lock);
  os_lock(&second->seg_lock);
  while (from->segs) {
    segment_t *s = from->segs;
    from->segs = s->hnext;
    atomic_store_explicit(&s->heap, into, memory_order_release);
    s->hprev = NULL;
    s->hnext = into->segs;
    if (into->segs) into->segs->hprev = s;
    into->segs = s;
  }
  /* the classes whose lists hold pages, by the bits: the lists' other
   * entries may lie on a page neither heap has touched */
  for (uint64_t bits =
           atomic_load_explicit(&from->dirty_classes, memory_order_relaxed);
       bits; bits &= bits - 1) {
    size_t cls = (size_t)__builtin_ctzll(bits);
    page_list_t *f = &from->dirty_free[cls], *t = &into->dirty_free[cls];
    f->last->next = t->first;
    if (t->first)
      t->first->prev = f->last;
    else
      t->last = f->last;
    t->first = f->first;
    t->count += f->count;
    f->first = f->last = NULL;
    f->count = 0;
  }
  atomic_fetch_or_explicit(
      &into->dirty_classes,
      atomic_exchange_explicit(&from->dirty_classes, 0, memory_order_relaxed),
      memory_order_relaxed);
  into->dirty_pages += from->dirty_pages;
  from->dirty_pages = 0;
  into->purge_due = 0; /* recomputed by the next purge pass */
  os_unlock(&from->seg_lock);
  os_unlock(&into->seg_lock);
}

/* A heap holding BATCH_DIRTY or more of free pages not yet given back has
 * just freed a batch of that size, which a program that works in batches
 * allocates again next: its pages wait BATCH_DELAY_MULT purge delays. The
 * pages of a batch go free over its free phase and are taken again over the
 * next allocation phase; with 50 ms, a phase slowed by the machine let more
 * of them age past the delay, each purged page was faulted in again, and
 * that slowed the phases further (micro batch 3: 2.8 to 7.6 s and 160 000
 * to 345 000 page faults on a busy machine, against 2.4 to 3.1 s and 136 871
 * with every delay at 200 ms). A program that churns holds far less free at
 * any time, and keeps the delay (its peak rises with it: docs/memory.md,
 * "What purging costs"). The 5 s promise holds: 200 ms with the default
 * delay (mem_return's 1 GiB phases come back in 0.3 to 0.9 s). */
#define BATCH_DIRTY ((size_t)64 << 20)
#define BATCH_DELAY_MULT 4

/* Return free pages that have been free longer than the purge delay (all of
 * them when forced): from the owner's slow path or the purge thread. Returns
 * when the next purge is due (UINT64_MAX: nothing left to purge). */
uint64_t segment_purge_heap(heap_t *h, bool force) {
  if (!h->dirty_pages) return UINT64_MAX;
  uint64_t now = os_now_ms();
  if (!force && now < h->purge_due) return h->purge_due;
  os_lock(&h->seg_lock);
  uint64_t delay = (uint64_t)g.purge_delay_ms, next_due = UINT64_MAX;
  if (h->dirty_pages >= BATCH_DIRTY / PAGE_SIZE) delay *= BATCH_DELAY_MULT;
  segment_t *next_seg;
  for (segment_t *s = h->segs; s; s = next_seg) {
    next_seg = s->hnext;
    uint64_t mask = s->dirty_mask;
    while (mask) {
      unsigned i = (unsigned)__builtin_ctzll(mask);
      mask &= mask - 1;
      page_t *pg = &s->pages[i];
      if (force || now >= pg->freed_at + delay) {
        /* extend over the following dirty free pages */
        unsigned j = i + 1;
        while (j < PAGES_PER_SEG && ((mask >> j) & 1) &&
               (force || now >= s->pages[j].freed_at + delay))
          j++;
        for (unsigned k = i; k < j; k++) {
          page_clean(h, &s->pages[k]);
          s->pages[k].touched = 0;
          mask &= ~((uint64_t)1 << k);
        }
        os_purge((uint8_t *)s + (size_t)i * PAGE_SIZE,
                 (size_t)(j - i) * PAGE_SIZE);
      } else if (pg->freed_at + delay < next_due) {
        next_due = pg->freed_at + delay;
      }
    }
    segment_free_if_clean(s);
  }
  h->purge_due = next_due;
  atomic_store_explicit(&h->prompt_small, 0, memory_order_relaxed);
  os_unlock(&h->seg_lock);
  return next_due;
}

/* Visit every registered segment (checked mode's heap check and leak
 * report) under the list lock: visit must not allocate or free. */
void segments_visit(void (*visit)(segment_t *s, void *arg), void *arg) {
  os_lock(&seg_list_lock);
  for (segment_t *s = all_segs; s; s = s->next)
    visit(s, arg);
  os_unlock(&seg_list_lock);
}

void segments_lock_all(void) {
  os_lock(&zero_lock);
  os_lock(&seg_list_lock);
}
void segments_unlock_all(void) {
  os_unlock(&seg_list_lock);
  os_unlock(&zero_lock);
}
void segments_reset_locks(void) {
  os_lock_init(&seg_list_lock);
  os_lock_init(&zero_lock);
}

/* ---- medium objects ------------------------------------------------------ */

void chunk_fault_malloc(const char *what, const void *addr) {
  fault("malloc", what, addr);
}

/* joined: only for a heap that has a medium region already */
static void *medium_alloc_in(heap_t *h, size_t size, size_t align,
                             bool joined) {
  os_lock(&h->medium_lock);
  if (joined && !h->medium_segs) {
    os_unlock(&h->medium_lock);
    return NULL;
  }
  void *p = align > 16 ? chunk_memalign(&h->chunks, align, size)
                       : chunk_malloc(&h->chunks, size);
  h->medium_idle = h->medium_idle > size ? h->medium_idle - size : 0;
  purge_prompt_took(h);
  if (!p) {
    segment_t *s = segment_alloc(h, SEG_MEDIUM);
    if (s) {
      heap_chunks_ready(h);
      chunk_add_region(&h->chunks, s->region, s->region_size);
      p = align > 16 ? chunk_memalign(&h->chunks, align, size)
                     : chunk_malloc(&h->chunks, size);
    }
  }
  os_unlock(&h->medium_lock);
  if (unlikely(g.prof) && p) prof_count_medium(h, p, size); /* heap profile */
  return p;
}

void *medium_malloc(heap_t *h, size_t size, size_t align) {
  return medium_alloc_in(h, size, align, false);
}

/* A small size that fits a class badly (page.c's class 0 sizes) from the
 * heap's chunk heap, if it has one: NULL otherwise. A heap's first medium
 * region costs a segment and its mapping, which a thread that asks for a
 * few such blocks should not pay (threadchurn, 4000 threads: 0.13 -> 0.20 s
 * CPU when every heap made one). */
void *medium_malloc_joined(heap_t *h, size_t size) {
  return medium_alloc_in(h, size, 16, true);
}

/* A block cut from the heap's free medium chunks when medium frees have
 * left at least idle bytes (idle >= size) resident and unused (medium_idle):
 * NULL otherwise (no region is added, nor fresh memory). Medium memory a
 * phase freed stays resident for a purge delay, so what follows finds it
 * there instead of touching fresh pages:
 * - medium_small (internal.h): a small block (MEDIUM_SMALL_MIN..SMALL_MAX
 *   bytes) when its class has no page with a free block and MEDIUM_SMALL_FREE
 *   bytes are idle (frag: 24 MiB of 1-4 KiB blocks after 21 MiB of medium
 *   ones were freed; 86 MiB peak RSS before, 62 after);
 * - medium_large: a block above MEDIUM_MAX (to MEDIUM_REUSE_MAX) when as
 *   much is idle; a large block mapped beside it would be fresh pages on top
 *   (cc1 under gcc -O2: 1.8 MiB of its peak).
 * Not first-class heaps, whose small blocks allot_heap_destroy looks for in
 * their pages and whose large blocks are their own mappings. One function
 * for both, out of line: every byte of the hot code's tiers is resident in
 * the programs that run them (cmake/hot-functions.txt).
 *
 * medium_cut_next: where the last block ended. A run of small blocks is most
 * often carved one after another from the same free chunk, so the next block
 * starts there and leaves its remainder's header size bytes on, in lines the
 * program has not touched since the medium phase. Fetching both before the
 * lock (with the prefetch in medium_free) cut frag's time by 2-6 %: the
 * lock's release waited for those misses. A hint only (a stale one costs a
 * useless prefetch; an integer, as its arithmetic may run past anything
 * valid). See docs/memory.md. */
static _Thread_local uintptr_t medium_cut_next;
void *medium_cut(heap_t *h, size_t size, size_t idle) {
  if (h->first_class) return NULL;
  if (medium_cut_next) {
    __builtin_prefetch((const void *)medium_cut_next, 1);
    __builtin_prefetch(
        (const void *)(medium_cut_next +
                       ((size + CHUNK_HEADER + 15) & ~(size_t)15)),
        1);
  }
  void *p = NULL;
  /* medium_segs and medium_idle are the lock's (the purge thread frees
   * segments): idle memory is looked for under it */
  os_lock(&h->medium_lock);
  if (h->medium_idle >= idle) {
    p = chunk_malloc(&h->chunks, size);
    if (p) {
      h->medium_idle -= size;
      purge_prompt_took(h);
    }
  }
  os_unlock(&h->medium_lock);
  medium_cut_next = p ? (uintptr_t)p + chunk_usable_size(p) : 0;
  if (p) __builtin_prefetch((const void *)medium_cut_next, 1);
  if (unlikely(g.prof) && p) prof_count_medium(h, p, size); /* heap profile */
  return p;
}

static _Thread_local const char *medium_fn;
static void chunk_fault_free(const char *what, const void *addr) {
  fault(medium_fn ? medium_fn : "free", what, addr);
}

static void medium_mark_dirty(heap_t *h) {
  uint64_t zero = 0;
  if (atomic_load_explicit(&h->medium_dirty_at, memory_order_relaxed) == 0 &&
      atomic_compare_exchange_strong(&h->medium_dirty_at, &zero, os_now_ms()))
    purge_notify();
}

static int purge_free_chunk(void *payload, size_t size, bool used, void *arg) {
  /* the first bytes of a free chunk's payload hold its bin links */
  if (!used && size >= 16 * OS_PAGE)
    os_purge((uint8_t *)payload + 64, size - 64);
  (void)arg;
  return 0;
}

/* Give back the interior pages of large free chunks once the heap's oldest
 * unpurged medium free is a purge delay old, unless the heap is busy with
 * medium blocks: more than MEDIUM_BUSY frees (medium_gen, which every free
 * bumps) since the last look put the purge off by a delay, up to 20 delays
 * after that oldest free. Free chunks carry no age, so a purge takes every
 * free chunk: purging every delay under steady churn made the program fault
 * the same memory in again and again (the aligned workload: 40-60 k page
 * faults, 15 k with the purge put off). */
#define MEDIUM_BUSY 64
uint64_t medium_purge_heap(heap_t *h, bool force) {
  uint64_t at = atomic_load_explicit(&h->medium_dirty_at, memory_order_relaxed);
  if (!at) return UINT64_MAX;
  uint64_t now = os_now_ms(), delay = (uint64_t)g.purge_delay_ms;
  uint64_t gen = atomic_load_explicit(&h->medium_gen, memory_order_relaxed);
  uint64_t seen =
      atomic_exchange_explicit(&h->purge_gen, gen, memory_order_relaxed);
  if (gen - seen > MEDIUM_BUSY)
    atomic_store_explicit(&h->purge_gen_at, now, memory_order_relaxed);
  uint64_t due = at + delay,
           busy = atomic_load_explicit(&h->purge_gen_at, memory_order_relaxed);
  if (busy + delay > due) due = busy + delay;
  if (at + 20 * delay < due) due = at + 20 * delay;
  if (!force && now < due) return due;
  os_lock(&h->medium_lock);
  atomic_store_explicit(&h->medium_dirty_at, 0, memory_order_relaxed);
  h->medium_idle = 0;
  atomic_store_explicit(&h->prompt_medium, 0, memory_order_relaxed);
  for (segment_t *s = h->medium_segs, *next; s; s = next) {
    next = s->hnext;
    /* an empty region goes back whole, unless it is the heap's last */
    if ((s->hnext || s->hprev) &&
        chunk_region_empty(&h->chunks, s->region, s->region_size)) {
      chunk_remove_region(&h->chunks, s->region, s->region_size);
      segment_free(s);
    } else {
      chunk_walk_region(s->region, s->region_size, purge_free_chunk, NULL);
    }
  }
  os_unlock(&h->medium_lock);
  return UINT64_MAX;
}

/* Under h's medium_lock: a medium block of h was freed or shrunk, so what
 * realloc's hints say of h's blocks may no longer hold (a block grown still
 * holds what a hint says). A plain increment: every writer holds the lock. */
static void medium_gen_bump(heap_t *h) {
  atomic_store_explicit(
      &h->medium_gen,
      atomic_load_explicit(&h->medium_gen, memory_order_relaxed) + 1,
      memory_order_relaxed);
}

/* Lock the heap that owns s; the owner can change while we wait (an abandoned
 * heap adopted), so check again under the lock. */
static heap_t *medium_lock_owner(segment_t *s) {
  for (;;) {
    heap_t *h = atomic_load_explicit(&s->heap, memory_order_acquire);
    os_lock(&h->medium_lock);
    if (atomic_load_explicit(&s->heap, memory_order_relaxed) == h) return h;
    os_unlock(&h->medium_lock);
  }
}

void medium_free(segment_t *s, void *p, const char *fn) {
  if (unlikely(g.prof) && prof_maybe_sample(p)) prof_free(p); /* profile */
  /* The free writes the next chunk's header, most often a line the program
   * has not touched for a while: fetch it before the lock, whose release
   * would otherwise wait for the miss (a size read early, so it may be
   * stale: a prefetch of a wrong address is harmless). */
  __builtin_prefetch((const void *)((uintptr_t)p + chunk_usable_size(p)), 1);
  heap_t *h = medium_lock_owner(s);
  medium_fn = fn;
  size_t u = chunk_usable_size(p); /* p checked by chunk_free */
  chunk_free(&h->chunks, p, chunk_fault_free);
  h->medium_idle += u;
  /* a single-threaded program's purge thread (purge_worth_a_thread) */
  bool want = h->medium_idle >= PURGE_THREAD_MIN &&
              h->medium_idle - u < PURGE_THREAD_MIN;
  bool prompt = purge_prompt_medium_due(h, h->medium_idle); /* the owner's */
  medium_gen_bump(h); /* realloc's hints about h's blocks (api.c) */
  if (h != tls_heap)  /* statistics: a free from another thread */
    atomic_fetch_add_explicit(&h->xfrees, 1, memory_order_relaxed);
  /* An empty region stays until the purge delay has passed
   * (medium_purge_heap), so a program that frees a phase of blocks and then
   * allocates another finds the memory resident instead of faulting it in
   * anew; only a heap no thread uses gives it back at once. */
  segment_t *release = NULL;
  if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) != HEAP_ACTIVE &&
      chunk_region_empty(&h->chunks, s->region, s->region_size)) {
    chunk_remove_region(&h->chunks, s->region, s->region_size);
    release = s;
    segment_free(s);
  }
  os_unlock(&h->medium_lock);
  if (!release) medium_mark_dirty(h);
  if (want) purge_want();
  purge_poll();
  if (prompt) purge_prompt(h);
}

/* Usable size of a live medium block, SIZE_MAX if p is not one. Under the
 * owner's lock: a neighbour being freed rewrites the tags it reads. */
size_t medium_live_size(segment_t *s, const void *p) {
  heap_t *h = medium_lock_owner(s);
  size_t u = chunk_is_live(&h->chunks, p) ? chunk_usable_size(p) : SIZE_MAX;
  os_unlock(&h->medium_lock);
  return u;
}

bool medium_resize(segment_t *s, void *p, size_t size) {
  heap_t *h = medium_lock_owner(s);
  size_t u = chunk_is_live(&h->chunks, p) ? chunk_usable_size(p) : 0;
  bool ok = chunk_resize_in_place(&h->chunks, p, size);
  if (ok && chunk_usable_size(p) < u) medium_gen_bump(h);
  os_unlock(&h->medium_lock);
  return ok;
}

/* How much a medium block growing from old to size should get: a little
 * growth (an append) gets 1/4 more, so a block grown a few bytes at a time (a
 * string builder) comes back once per quarter rather than per call, and is
 * copied O(1) times its size in all when it must move; a big step (a vector
 * doubling) gets what it asks. Measured on the realloc workload: 6.75 M
 * in-place resizes and 7.2 GB copied by 53 k moves without it. */
size_t medium_grow_size(size_t old, size_t size) {
  if (size <= old || size - old > old / 8) return size;
  size_t want = size + size / 4;
  return want > MEDIUM_MAX ? MEDIUM_MAX : want;
}

/* realloc in place, validating p and resizing under one lock (a realloc took
 * it twice, for the usable size and then the resize: a quarter of the realloc
 * workload's time was the lock). *old gets p's usable size, SIZE_MAX if p is
 * not a live medium block. True if p now holds size bytes: a shrink by less
 * than a quarter keeps the block as it is, as a growth into its slack does;
 * then *hint says what realloc may trust until the heap's medium_gen moves. */
bool medium_realloc(segment_t *s, void *p, size_t size, size_t *old,
                    realloc_hint_t *hint) {
  heap_t *h = medium_lock_owner(s);
  bool ok = false;
  size_t u = SIZE_MAX, now = 0;
  if (chunk_is_live(&h->chunks, p)) {
    now = u = chunk_usable_size(p);
    if (size <= u && size >= u - u / 4) {
      ok = true;
    } else if (size > SMALL_MAX && size <= MEDIUM_MAX) {
      /* the slack if the free neighbour has it, else half of it, else the
       * block moves (with the slack): growing an append's block by the bare
       * size brought each following append back here, under the lock, while
       * the neighbour had room (220 k of the realloc workload's calls) */
      size_t want = medium_grow_size(u, size), mid = size + (want - size) / 2;
      ok = chunk_resize_in_place(&h->chunks, p, want) ||
           (mid > size && chunk_resize_in_place(&h->chunks, p, mid));
      if (ok) {
        now = chunk_usable_size(p);
        if (now < u) medium_gen_bump(h); /* a hint may say more than now */
      }
    }
  }
  hint->p = p;
  hint->heap = h;
  hint->gen = atomic_load_explicit(&h->medium_gen, memory_order_relaxed);
  hint->usable = now;
  os_unlock(&h->medium_lock);
  *old = u;
  return ok;
}

/* ---- zero-size blocks ------------------------------------------------------
 * malloc(0) returns a unique pointer that faults on any access: an address in
 * a zero segment, whose pages 1..63 are PROT_NONE. Which addresses are taken
 * is a bitmap in page 0 (one bit per 16 bytes), since nothing can be stored
 * in the blocks themselves. malloc(0) is rare, so one lock serves all. */
#define ZERO_SLOTS ((SEG_SIZE - PAGE_SIZE) / 16)
typedef struct zero_seg {
  segment_t hdr; /* kind SEG_ZERO; hnext links zero segments */
  size_t used, hint;
  uint64_t bits[ZERO_SLOTS / 64];
} zero_seg_t;
_Static_assert(sizeof(zero_seg_t) <= PAGE_SIZE, "zero bitmap fits page 0");

static zero_seg_t *zero_segs;

void *zero_alloc(void) {
  void *res = NULL;
  os_lock(&zero_lock);
  zero_seg_t *z = zero_segs;
  while (z && z->used == ZERO_SLOTS)
    z = (zero_seg_t *)z->hdr.hnext;
  if (!z) {
    z = os_map_aligned(SEG_SIZE, SEG_SIZE);
    if (z && !os_protect_none((uint8_t *)z + PAGE_SIZE, SEG_SIZE - PAGE_SIZE)) {
      os_unmap(z, SEG_SIZE);
      z = NULL;
    }
    if (z) {
      segment_register(&z->hdr, SEG_ZERO, SEG_SIZE);
      z->hdr.hnext = (segment_t *)zero_segs;
      zero_segs = z;
    }
  }
  if (z) {
    size_t w = z->hint;
    while (z->bits[w] == UINT64_MAX)
      w = (w + 1) % (ZERO_SLOTS / 64);
    unsigned b = (unsigned)__builtin_ctzll(~z->bits[w]);
    z->bits[w] |= (uint64_t)1 << b;
    z->used++;
    z->hint = w;
    res = (uint8_t *)z + PAGE_SIZE + (w * 64 + b) * 16;
  }
  os_unlock(&zero_lock);
  return res;
}

static size_t zero_slot(segment_t *s, const void *p) {
  uintptr_t off = (uintptr_t)p - (uintptr_t)s;
  if (off < PAGE_SIZE || off >= SEG_SIZE || (off & 15)) return SIZE_MAX;
  return (off - PAGE_SIZE) / 16;
}

bool zero_live(segment_t *s, const void *p) {
  zero_seg_t *z = (zero_seg_t *)s;
  size_t i = zero_slot(s, p);
  if (i == SIZE_MAX) return false;
  os_lock(&zero_lock);
  bool live = (z->bits[i / 64] >> (i % 64)) & 1;
  os_unlock(&zero_lock);
  return live;
}

void zero_free(segment_t *s, void *p, const char *fn) {
  zero_seg_t *z = (zero_seg_t *)s;
  size_t i = zero_slot(s, p);
  if (i == SIZE_MAX) fault(fn, "invalid pointer (not the start of a block)", p);
  os_lock(&zero_lock);
  uint64_t bit = (uint64_t)1 << (i % 64);
  if (!(z->bits[i / 64] & bit)) {
    os_unlock(&zero_lock);
    fault(fn, "double free", p);
  }
  z->bits[i / 64] &= ~bit;
  z->used--;
  os_unlock(&zero_lock);
}

/* For the walk (introspect.c): zero segment s's slot bitmap, copied under
 * the lock into bits (ZERO_WORDS words; bit i is the block at
 * zero_block(s, i)). Returns the number of live blocks. */
_Static_assert(ZERO_SLOTS / 64 == ZERO_WORDS, "zero_snapshot's bitmap size");
size_t zero_snapshot(segment_t *s, uint64_t *bits) {
  zero_seg_t *z = (zero_seg_t *)s;
  os_lock(&zero_lock);
  memcpy(bits, z->bits, sizeof z->bits);
  size_t used = z->used;
  os_unlock(&zero_lock);
  return used;
}
