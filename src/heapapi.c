/* heapapi.c: first-class heaps — allot_heap_new and allocation from a given
 * heap, allot_heap_destroy (release every block at once), allot_heap_delete
 * (hand the live blocks to the caller's default heap), and the bookkeeping of
 * a heap's large blocks.
 *
 * A first-class heap is an ordinary heap_t that no thread has as its default:
 * its pages, medium segments and chunk heap work exactly as a thread heap's,
 * and frees reach it by the usual routes (a free from any thread, its owner
 * included, is a cross-thread free into its pages, or a locked medium free).
 * Large blocks are process-wide objects, so a first-class heap keeps a list
 * of its own (under its medium_lock) that large.c updates on free and move.
 * Only the owning thread allocates from a heap: its page lists and current
 * pages are owner-only, so another thread allocating would corrupt them; the
 * owner is checked by a per-thread id on every call and misuse aborts. */
#include "internal.h"

#include <errno.h>

#define EXPORT __attribute__((visibility("default")))

INTERNAL __thread heap_t *checked_heap;

static __thread uint64_t my_uid;
static _Atomic uint64_t next_uid;

uint64_t thread_uid(void) {
  uint64_t u = my_uid;
  if (unlikely(!u))
    my_uid = u =
        atomic_fetch_add_explicit(&next_uid, 1, memory_order_relaxed) + 1;
  return u;
}

/* Destroyed and deleted heaps, kept for the next allot_heap_new (heap
 * structures are never freed: page descriptors may still point at them). */
static os_lock_t spare_lock;

void heapapi_fork(int phase) {
  os_lock_fork(&spare_lock, phase);
}
#ifdef ALLOT_TEST_HOOKS
os_lock_t *heapapi_test_lock(const char *name) {
  return strcmp(name, "spare") ? NULL : &spare_lock;
}
#endif
static heap_t *spare;

static heap_t *heap_own(allot_heap_t *heap, const char *fn) {
  heap_t *h = (heap_t *)heap;
  if (!h) fault(fn, "NULL heap", NULL);
  if (__atomic_load_n(&h->owner, __ATOMIC_RELAXED) != thread_uid())
    fault(fn, "heap used by a thread other than its owner, or destroyed", h);
  return h;
}

static heap_t *first_class(allot_heap_t *heap, const char *fn) {
  heap_t *h = heap_own(heap, fn);
  if (!h->first_class)
    fault(fn, "a thread's default heap cannot be destroyed or deleted", h);
  return h;
}

/* ---- large blocks of a first-class heap ---------------------------------- */

void heap_large_link(heap_t *h, segment_t *s) {
  os_lock(&h->medium_lock);
  atomic_store_explicit(&s->heap, h, memory_order_relaxed);
  s->hprev = NULL;
  s->hnext = h->large_segs;
  if (h->large_segs) h->large_segs->hprev = s;
  h->large_segs = s;
  os_unlock(&h->medium_lock);
}

heap_t *heap_large_unlink(segment_t *s) {
  heap_t *h = atomic_load_explicit(&s->heap, memory_order_acquire);
  if (!h) return NULL;
  os_lock(&h->medium_lock);
  /* the heap may have let go of its large blocks (delete) meanwhile */
  if (atomic_load_explicit(&s->heap, memory_order_relaxed) != h) {
    os_unlock(&h->medium_lock);
    return NULL;
  }
  if (s->hprev)
    s->hprev->hnext = s->hnext;
  else
    h->large_segs = s->hnext;
  if (s->hnext) s->hnext->hprev = s->hprev;
  s->hnext = s->hprev = NULL;
  atomic_store_explicit(&s->heap, NULL, memory_order_relaxed);
  os_unlock(&h->medium_lock);
  return h;
}

/* A block just made for h: a large one joins h's list. */
static void *adopt(heap_t *h, void *p) {
  if (p && h->first_class) {
    segment_t *s = segment_of(p);
    if (s->kind == SEG_LARGE &&
        atomic_load_explicit(&s->heap, memory_order_relaxed) != h)
      heap_large_link(h, s);
  }
  return p;
}

/* ---- allocation ------------------------------------------------------------
 */

static ALWAYS_INLINE void *small_from(heap_t *h, size_t cls, size_t size) {
  return heap_alloc_class(h, cls, size, "heap_malloc");
}

static void *heap_alloc(heap_t *h, size_t size, size_t align, bool zero) {
  void *p = NULL;
  if (unlikely(size > PTRDIFF_MAX)) goto fail;
  if (unlikely(g.slow_mode)) {
    checked_heap = h;
    p = checked_alloc(size, align, zero);
    checked_heap = NULL;
    return adopt(h, p);
  }
  if (size <= SMALL_MAX && align <= SMALL_MAX) {
    /* size 0: a 16-byte block of this heap (malloc(0)'s blocks are
     * process-wide, and destroy would not release them) */
    size_t cls =
        align <= 16 ? size_class(size ? size : 1) : aligned_class(size, align);
    if (cls) {
      p = small_from(h, cls, size ? size : 1);
      if (p && zero) memset(p, 0, size);
      if (!p) goto fail;
      return p;
    }
  }
  if (size <= MEDIUM_MAX && align <= MEDIUM_MAX / 4) {
    p = medium_malloc(h, size, align);
    if (p && zero) memset(p, 0, size);
  } else {
    p = adopt(h, large_malloc(size, align, zero));
  }
  if (p) return p;
fail:
  errno = ENOMEM;
  return NULL;
}

EXPORT allot_heap_t *allot_heap_new(void) {
  allot_process_init();
  os_lock(&spare_lock);
  heap_t *h = spare;
  if (h) spare = h->next_free;
  os_unlock(&spare_lock);
  if (!h) h = heap_new_detached();
  if (!h) {
    errno = ENOMEM;
    return NULL;
  }
  h->next_free = NULL;
  h->large_segs = NULL;
  /* statistics and the check read these from other threads */
  __atomic_store_n(&h->first_class, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&h->owner, thread_uid(), __ATOMIC_RELEASE);
  return (allot_heap_t *)h;
}

EXPORT void *allot_heap_malloc(allot_heap_t *heap, size_t size) {
  return heap_alloc(heap_own(heap, "heap_malloc"), size, 16, false);
}

EXPORT void *allot_heap_calloc(allot_heap_t *heap, size_t n, size_t size) {
  heap_t *h = heap_own(heap, "heap_calloc");
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return heap_alloc(h, total, 16, true);
}

EXPORT void *allot_heap_aligned_alloc(allot_heap_t *heap, size_t align,
                                      size_t size) {
  heap_t *h = heap_own(heap, "heap_aligned_alloc");
  if (!align || (align & (align - 1))) {
    errno = EINVAL;
    return NULL;
  }
  return heap_alloc(h, size, align < 16 ? 16 : align, false);
}

/* Owner of live block p (validated by the caller). */
static heap_t *block_heap(const void *p) {
  segment_t *s = segment_of(p);
  if (s->kind == SEG_SMALL)
    return atomic_load_explicit(&page_of(s, p)->heap, memory_order_acquire);
  if (s->kind == SEG_MEDIUM || s->kind == SEG_LARGE)
    return atomic_load_explicit(&s->heap, memory_order_acquire);
  return NULL;
}

EXPORT void *allot_heap_realloc(allot_heap_t *heap, void *p, size_t size) {
  heap_t *h = heap_own(heap, "heap_realloc");
  if (!p) return heap_alloc(h, size, 16, false);
  if (size == 0) {
    allot_free(p);
    return NULL;
  }
  if (unlikely(g.slow_mode)) {
    checked_heap = h;
    void *q = checked_realloc(p, size);
    checked_heap = NULL;
    return adopt(h, q);
  }
  size_t old = block_usable_size(p, "heap_realloc");
  segment_t *s = segment_of(p);
  /* in place only while the block stays in this heap */
  heap_t *owner = block_heap(p);
  if (s->kind == SEG_SMALL && owner == h) {
    if (size <= old && (size > old / 2 || old <= 16)) return p;
  } else if (s->kind == SEG_MEDIUM && owner == h) {
    if (size > SMALL_MAX && size <= MEDIUM_MAX && medium_resize(s, p, size))
      return p;
  } else if (s->kind == SEG_LARGE && (owner == h || !h->first_class)) {
    void *q = large_realloc(s, p, size);
    if (q) return q;
  }
  void *q = heap_alloc(h, size, 16, false);
  if (!q) return NULL;
  memcpy(q, p, old < size ? old : size);
  allot_free(p);
  return q;
}

/* ---- destroy and delete
 * ------------------------------------------------------ */

/* The heap goes back to the spare list; its statistics to the process's. */
static void recycle(heap_t *h) {
  stats_heap_retire(h);
  __atomic_store_n(&h->first_class, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&h->owner, 0, __ATOMIC_RELEASE);
  os_lock(&spare_lock);
  h->next_free = spare;
  spare = h;
  os_unlock(&spare_lock);
}

static void reset_lists(heap_t *h) {
  for (size_t c = 0; c < NCLASSES; c++) {
    h->current[c] = &empty_page;
    h->avail[c] = (page_list_t){NULL, NULL, 0};
    h->full[c] = (page_list_t){NULL, NULL, 0};
  }
  atomic_store_explicit(&h->xwake, 0, memory_order_relaxed);
}

/* Detach h's large blocks: they become ordinary process-wide blocks. Returns
 * the list (linked by hnext). */
static segment_t *take_large(heap_t *h) {
  segment_t *list = h->large_segs;
  h->large_segs = NULL;
  for (segment_t *s = list; s; s = s->hnext)
    atomic_store_explicit(&s->heap, NULL, memory_order_relaxed);
  return list;
}

static void destroy_now(heap_t *h) {
  os_lock(&h->medium_lock);
  segment_t *large = take_large(h);
  while (h->medium_segs)
    segment_free(h->medium_segs);
  /* the rows it had, if it had any: chunk_heap_absorb compares them */
  if (h->chunks.fl_count) heap_chunks_init(h);
  atomic_store_explicit(&h->medium_dirty_at, 0, memory_order_relaxed);
  os_unlock(&h->medium_lock);
  while (large) {
    segment_t *next = large->hnext;
    large->hnext = large->hprev = NULL;
    large_free(large, (uint8_t *)large + large->large_offset, "heap_destroy");
    large = next;
  }
  os_lock(&h->page_lock); /* the purge thread may be looking at its pages */
  os_lock(&h->seg_lock);
  while (h->segs) {
    segment_t *s = h->segs;
    /* pages in use go back purged, like the free ones; only their
     * descriptors are read, as the others may lie on header pages never
     * written (a read can make one resident: docs/memory.md, session 23) */
    for (uint64_t m = segment_pages_used_mask(s); m; m &= m - 1) {
      page_t *pg = &s->pages[__builtin_ctzll(m)];
      if (pg->bsize && !segment_page_is_dirty(s, pg)) {
        segment_page_dirty(s, pg);
        h->dirty_pages++;
      }
    }
    segment_free(s);
  }
  h->dirty_pages = 0;
  h->purge_due = 0;
  os_unlock(&h->seg_lock);
  reset_lists(h);
  os_unlock(&h->page_lock);
}

/* Lock two heaps' medium locks in the order fork_prepare takes them (the
 * order of the all-heaps list, newest first). */
static heap_t *lock_order_first(heap_t *a, heap_t *b) {
  for (heap_t *x = heaps_first(); x; x = x->next_all)
    if (x == a || x == b) return x;
  return b;
}

static void lock_pair(heap_t *a, heap_t *b) {
  heap_t *first = lock_order_first(a, b);
  heap_t *second = first == a ? b : a;
  os_lock(&first->medium_lock);
  os_lock(&second->medium_lock);
}

static void delete_into(heap_t *h, heap_t *d) {
  /* small pages: as when a thread's heap is abandoned and absorbed (page
   * locks in the order fork_prepare takes them) */
  heap_t *first = lock_order_first(h, d);
  os_lock(&first->page_lock);
  os_lock(&(first == h ? d : h)->page_lock);
  heap_absorb(d, h);
  reset_lists(h);
  os_unlock(&h->page_lock);
  os_unlock(&d->page_lock);
  /* medium segments and their chunks */
  lock_pair(h, d);
  size_t large_bytes = 0;
  for (segment_t *s = take_large(h); s; s = s->hnext)
    large_bytes += s->large_size;
  segment_t *moved = h->medium_segs;
  while (h->medium_segs) {
    segment_t *s = h->medium_segs;
    h->medium_segs = s->hnext;
    atomic_store_explicit(&s->heap, d, memory_order_release);
    s->hprev = NULL;
    s->hnext = d->medium_segs;
    if (d->medium_segs) d->medium_segs->hprev = s;
    d->medium_segs = s;
  }
  if (h->chunks.fl_count) { /* h had medium blocks; d may not have yet */
    heap_chunks_ready(d);
    chunk_heap_absorb(&d->chunks, &h->chunks);
  }
  /* empty regions go back (medium_free releases a region only when a free
   * empties it, and h kept its last one); d keeps one */
  for (segment_t *s = d->medium_segs, *next; s && moved; s = next) {
    next = s->hnext;
    if ((s->hnext || s->hprev) &&
        chunk_region_empty(&d->chunks, s->region, s->region_size)) {
      chunk_remove_region(&d->chunks, s->region, s->region_size);
      segment_free(s);
    }
    if (s == moved) break; /* the moved ones are at the front, up to here */
  }
  uint64_t dirty = atomic_exchange(&h->medium_dirty_at, 0);
  uint64_t zero = 0;
  if (dirty) atomic_compare_exchange_strong(&d->medium_dirty_at, &zero, dirty);
  os_unlock(&d->medium_lock);
  os_unlock(&h->medium_lock);
  /* statistics mode: the small and medium blocks are d's now, and so is
   * their share of in_use (large blocks become process-wide) */
  size_t in_use = atomic_exchange(&h->stats.in_use, 0);
  if (in_use > large_bytes)
    atomic_fetch_add(&d->stats.in_use, in_use - large_bytes);
}

static heap_t *default_heap(void) {
  heap_t *d = tls_heap;
  if (d == &empty_heap) d = heap_init_thread();
  if (!d) fault("heap_delete", "out of memory for the thread's heap", NULL);
  return d;
}

static int free_live(const allot_walk_info_t *w, void *arg) {
  (void)arg;
  if (w->type == ALLOT_WALK_BLOCK && w->in_use) allot_free(w->addr);
  return 0;
}

/* Checked mode, once every live block of h has been freed and those in this
 * thread's quarantine released: does h still hold a block, i.e. one that
 * another thread freed and that waits in that thread's quarantine? (Its
 * pages' counts are exact once the frees from other threads are taken in;
 * a count read too early only errs towards yes.) */
static bool holds_blocks(heap_t *h) {
  heap_collect_pages(h, false);
  bool held = false;
  os_lock(&h->seg_lock);
  for (segment_t *s = h->segs; s && !held; s = s->hnext)
    for (uint64_t m = segment_pages_used_mask(s); m && !held; m &= m - 1) {
      const page_t *pg = &s->pages[__builtin_ctzll(m)];
      held = pg->bsize && pg->used;
    }
  os_unlock(&h->seg_lock);
  os_lock(&h->medium_lock);
  held = held || h->chunks.used_count || h->large_segs;
  os_unlock(&h->medium_lock);
  return held;
}

EXPORT void allot_heap_destroy(allot_heap_t *heap) {
  heap_t *h = first_class(heap, "heap_destroy");
  if (unlikely(g.slow_mode)) {
    /* Checked mode: free every live block through the checked path (so its
     * canaries are checked and statistics counted), then release at once
     * those of them waiting in this thread's quarantine. If no other
     * thread's quarantine holds a block of h, its memory goes back as in
     * the default mode; else h's pages go to the default heap (those blocks
     * are freed into it later), which gives back its free memory now. */
    allot_heap_walk(heap, free_live, NULL);
    checked_heap_destroy(h);
    if (!holds_blocks(h)) {
      destroy_now(h);
    } else {
      heap_t *d = default_heap();
      delete_into(h, d);
      heap_collect_pages(d, false);
      segment_purge_heap(d, true);
      medium_purge_heap(d, true);
    }
    atomic_store_explicit(&h->stats.in_use, 0, memory_order_relaxed);
  } else {
    destroy_now(h);
    atomic_store_explicit(&h->stats.in_use, 0, memory_order_relaxed);
  }
  recycle(h);
}

EXPORT void allot_heap_delete(allot_heap_t *heap) {
  heap_t *h = first_class(heap, "heap_delete");
  delete_into(h, default_heap());
  recycle(h);
}

EXPORT void allot_heap_collect(allot_heap_t *heap) {
  heap_t *h = heap_own(heap, "heap_collect");
  heap_collect_pages(h, false);
  segment_purge_heap(h, true);
  medium_purge_heap(h, true);
}

EXPORT allot_heap_t *allot_heap_default(void) {
  heap_t *h = tls_heap;
  if (h == &empty_heap) h = heap_init_thread();
  return (allot_heap_t *)h;
}

EXPORT allot_heap_t *allot_heap_of(const void *p) {
  if (!allot_owns(p)) return NULL;
  return (allot_heap_t *)block_heap(p);
}
