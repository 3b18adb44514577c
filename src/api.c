/* api.c: the entry points — the prefixed allot_* functions, their standard C,
 * POSIX and glibc names when allot replaces malloc, and the inline fast paths
 * of malloc and free.
 *
 * malloc of a small size is a table lookup, a load of the thread's current
 * page for that class and a pop from its free list. free finds the segment by
 * masking, checks the segment map, finds the page by a shift, and validates
 * the pointer (a block boundary, not already free) before pushing it back. */
#include "internal.h"

#include <errno.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

static ALWAYS_INLINE void *small_alloc(heap_t *h, size_t size) {
  return heap_alloc_class(h, size_class(size), size, "malloc");
}

static heap_t *heap_get(void) {
  heap_t *h = tls_heap;
  if (unlikely(h == &empty_heap)) h = heap_init_thread();
  return h;
}

/* Sizes above SMALL_MAX, and aligned requests that small pages cannot serve.
 * A block of up to MEDIUM_REUSE_MAX may come from idle medium memory. */
static NOINLINE void *alloc_big(size_t size, size_t align, bool zero) {
  if (unlikely(g.slow_mode)) { /* also set until start-up (heap.c) */
    allot_process_init();
    if (g.slow_mode) return checked_alloc(size, align, zero);
  }
  void *p = NULL;
  if (size <= MEDIUM_MAX && align <= MEDIUM_MAX / 4) {
    heap_t *h = heap_get();
    if (h) p = medium_malloc(h, size, align);
    if (p && zero) memset(p, 0, size);
  } else if (size <= PTRDIFF_MAX) {
    allot_process_init();
    if (align <= 16 && size <= MEDIUM_REUSE_MAX) {
      heap_t *h = heap_get();
      if (h) p = medium_large(h, size);
      if (p && zero) memset(p, 0, size);
    }
    if (!p) p = large_malloc(size, align, zero);
  }
  if (!p) {
    errno = ENOMEM;
    return NULL;
  }
  return p;
}

/* The slow path sets errno itself, so the fast path ends in a tail call
 * and needs no stack frame. */
static ALWAYS_INLINE void *alloc(size_t size) {
  if (likely(size <= SMALL_MAX)) return small_alloc(tls_heap, size);
  return alloc_big(size, 16, false);
}

/* The aligned calls' fast path: a block of a small class whose blocks all
 * have the alignment, from the thread's current page; NULL (errno as it
 * was) when that takes a slow path. Checked mode and a thread not yet
 * started have no current page, so they get NULL here. */
static ALWAYS_INLINE void *aligned_take(size_t align, size_t size) {
  if (align > SMALL_MAX || size > SMALL_MAX) return NULL;
  return page_take(tls_heap->current[aligned_class(size, align)], "malloc");
}

static NOINLINE void *alloc_aligned(size_t align, size_t size) {
  if (align <= 16) return alloc(size);
  if (unlikely(g.slow_mode)) { /* also set until start-up (heap.c) */
    allot_process_init();
    if (g.slow_mode) return checked_alloc(size, align, false);
  }
  if (size > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  size_t cls = aligned_class_any(size, align);
  /* SIZE_MAX: a block of the class itself (page.c, page_alloc_sized) */
  if (cls) return heap_alloc_class(tls_heap, cls, SIZE_MAX, "malloc");
  return alloc_big(size, align, false);
}

/* ---- free ------------------------------------------------------------- */

static COLD NOINLINE void bad_pointer(const void *p, const char *fn) {
  fault(fn, "invalid pointer (not allocated by allot)", p);
}

static COLD NOINLINE void small_bad(page_t *pg, const void *p, const char *fn) {
  if (!page_is_block(pg, p))
    fault(fn, "invalid pointer (not the start of a block)", p);
  fault(fn, "double free", p);
}

static NOINLINE void free_big(segment_t *s, void *p, const char *fn) {
  if (s->kind == SEG_MEDIUM)
    medium_free(s, p, fn);
  else if (s->kind == SEG_LARGE)
    large_free(s, p, fn);
  else if (s->kind == SEG_ZERO)
    zero_free(s, p, fn);
  else
    bad_pointer(p, fn);
}

/* Validate p as a live small block of page pg. */
static ALWAYS_INLINE bool small_valid(page_t *pg, const void *p) {
  return likely(page_is_block(pg, p) &&
                ((const block_t *)p)->mark != free_mark(p));
}

static size_t usable_size(const void *p, const char *fn);

/* A free from a thread that does not own the page. */
static NOINLINE void small_xfree(page_t *pg, block_t *b) {
  if (unlikely(page_xfree(pg, b))) purge_poll();
}

/* A free that is not the owner's into an available page: the owner's into
 * a full page, which goes back to the available list under the page lock,
 * another thread's, or any into a page that holds heap profile samples. */
static NOINLINE void small_free_other(heap_t *h, page_t *pg, block_t *b) {
  /* the heap profile's samples (page_t.psamples) */
  if (unlikely(atomic_load_explicit(&pg->psamples, memory_order_relaxed)) &&
      prof_maybe_sample(b))
    prof_small_free(pg, b);
  if (atomic_load_explicit(&pg->heap, memory_order_relaxed) != h) {
    small_xfree(pg, b);
  } else if (pg->queue == Q_FULL) {
    page_free_full(h, pg, b);
  } else {
    /* the owner's, into an available page that counted samples: once it
     * has none, the fast path takes its frees again (page_set_queue) */
    if (pg->queue == Q_AVAIL &&
        !atomic_load_explicit(&pg->psamples, memory_order_relaxed))
      atomic_store_explicit(&pg->avail_owner, h, memory_order_relaxed);
    page_give(h, pg, b);
  }
}

/* A size that free_sized may be given for a block of usable size u: not more
 * than u, and more than half of it (a realloc that shrinks by half or more
 * moves the block, so no smaller size can belong to it). */
static ALWAYS_INLINE bool size_fits(size_t size, size_t u) {
  return size <= u && (u <= 16 || size > u / 2);
}

/* Free block p of page pg, already validated. */
static ALWAYS_INLINE void small_give(page_t *pg, void *p) {
  block_t *b = p;
  heap_t *h = tls_heap;
  if (likely(atomic_load_explicit(&pg->avail_owner, memory_order_relaxed) ==
             h)) {
    page_give(h, pg, b);
    return;
  }
  small_free_other(h, pg, b);
}

/* Free small block p of segment s; `size`, when not SIZE_MAX, is the size
 * the caller says the block has (free_sized, C++ sized delete), checked on
 * the way at no extra lookup. */
static ALWAYS_INLINE void small_free(segment_t *s, void *p, size_t size,
                                     const char *fn) {
  page_t *pg = page_of(s, p);
  if (unlikely(!small_valid(pg, p))) small_bad(pg, p, fn);
  if (size != SIZE_MAX && unlikely(!size_fits(size, pg->bsize)))
    fault(fn, "size does not match the block", p);
  small_give(pg, p);
}

/* Any block, by the segment map, ignoring the checked-mode flag: checked.c
 * frees through here once it has done its checks (free_unchecked). */
static NOINLINE void dealloc_any(void *p, size_t size, const char *fn) {
  segment_t *s = segment_of(p);
  unsigned kind = seg_kind(s);
  if (unlikely(kind == 0)) {
    if (p) bad_pointer(p, fn);
    return;
  }
  if (kind == SEG_SMALL) {
    small_free(s, p, size, fn);
    return;
  }
  if (size != SIZE_MAX && !size_fits(size, usable_size(p, fn)))
    fault(fn, "size does not match the block", p);
  free_big(s, p, fn);
}

/* The fast path takes a small block in default mode: one byte of the
 * segment map says both (checked mode flags every segment). The rest —
 * NULL, checked mode, medium, large, zero-size, foreign — goes out of line. */
static ALWAYS_INLINE void dealloc_block(void *p, size_t size, const char *fn) {
  segment_t *s = segment_of(p);
  if (likely(segmap_kind(s) == SEG_SMALL)) {
    small_free(s, p, size, fn);
    return;
  }
  dealloc_any(p, size, fn);
}

void free_unchecked(void *p, const char *fn) {
  dealloc_any(p, SIZE_MAX, fn);
}

static NOINLINE void dealloc_other(void *p, const char *fn) {
  if (unlikely(g.slow_mode))
    checked_free(p, fn);
  else
    dealloc_any(p, SIZE_MAX, fn);
}

static ALWAYS_INLINE void dealloc(void *p, const char *fn) {
  segment_t *s = segment_of(p);
  if (likely(segmap_kind(s) == SEG_SMALL)) {
    small_free(s, p, SIZE_MAX, fn);
    return;
  }
  dealloc_other(p, fn);
}

/* Usable size of a live block, faulting on anything else. */
static size_t usable_size(const void *p, const char *fn) {
  segment_t *s = segment_of(p);
  if (!segmap_has(s)) bad_pointer(p, fn);
  if (s->kind == SEG_SMALL) {
    page_t *pg = page_of(s, p);
    if (!small_valid(pg, p)) small_bad(pg, p, fn);
    return pg->bsize;
  }
  if (s->kind == SEG_MEDIUM) {
    size_t u = medium_live_size(s, p);
    if (u == SIZE_MAX) fault(fn, "invalid or freed pointer", p);
    return u;
  }
  if (s->kind == SEG_LARGE) {
    if (p != (uint8_t *)s + s->large_offset ||
        atomic_load_explicit(&s->large_state, memory_order_acquire) !=
            LARGE_LIVE)
      fault(fn, "invalid or freed pointer", p);
    return s->large_size;
  }
  if (s->kind == SEG_ZERO) {
    if (!zero_live(s, p)) fault(fn, "invalid or freed pointer", p);
    return 0;
  }
  bad_pointer(p, fn);
  return 0;
}

/* ---- the API ----------------------------------------------------------- */

EXPORT int allot_version(void) {
  return ALLOT_VERSION;
}

EXPORT void *allot_malloc(size_t size) {
  return alloc(size);
}

EXPORT void allot_free(void *p) {
  dealloc(p, "free");
}

EXPORT void *allot_calloc(size_t n, size_t size) {
  os_fork_check(); /* pthread_create's first thread: os.c */
  size_t total;
  if (unlikely(__builtin_mul_overflow(n, size, &total))) {
    errno = ENOMEM;
    return NULL;
  }
  if (likely(total <= SMALL_MAX)) {
    void *p = alloc(total);
    if (likely(p != NULL)) memset(p, 0, total);
    return p;
  }
  return alloc_big(total, 16, true);
}

/* The hints that may be p's: a set of HINT_WAYS, so blocks that share a set
 * do not keep pushing each other out (with one way, the realloc workload's
 * 64 growing blocks missed 20 % of the time). */
#define HINT_WAYS 4
static ALWAYS_INLINE realloc_hint_t *hint_set(heap_t *me, const void *p) {
  /* hashed: blocks grown in step sit at strides that share low bits */
  uint64_t set = ((uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull) >>
                 (64 - __builtin_ctz(REALLOC_HINTS / HINT_WAYS));
  return &me->rhint[set * HINT_WAYS];
}

/* Whether p, a block in medium segment s, holds size bytes, by what an earlier
 * realloc of it saw under the heap's lock, if nothing since has freed or
 * shrunk a medium block of its heap. Every realloc of a medium block
 * otherwise takes that lock, whose atomic waits for all of the program's
 * pending stores: in the realloc workload (a string builder's realloc per
 * append) the lock was 29 % of the time. */
static ALWAYS_INLINE bool hint_fits(const void *p, segment_t *s, size_t size) {
  const realloc_hint_t *e = hint_set(tls_heap, p), *end = e + HINT_WAYS;
  while (e->p != p)
    if (++e == end) return false;
  if (size > e->usable || size < e->usable - e->usable / 4) return false;
  heap_t *h = e->heap;
  /* The block's own size, last: another thread may have grown it in place
   * since this thread's hint (growth leaves medium_gen as it is), and a
   * block's size word changes only by a call on that block. */
  return atomic_load_explicit(&s->heap, memory_order_relaxed) == h &&
         atomic_load_explicit(&h->medium_gen, memory_order_relaxed) == e->gen &&
         chunk_usable_size(p) == e->usable;
}

/* Remember a hint in this thread's heap. Not for a first-class heap's block
 * (allot_heap_destroy frees them all at once, not one by one). */
static void hint_put(const realloc_hint_t *x) {
  heap_t *me = tls_heap;
  if (me == &empty_heap ||
      __atomic_load_n(&x->heap->first_class, __ATOMIC_RELAXED))
    return;
  realloc_hint_t *w = hint_set(me, x->p);
  size_t i = 0; /* the newest goes first, the oldest drops out */
  while (i < HINT_WAYS - 1 && w[i].p != x->p)
    i++;
  memmove(w + 1, w, i * sizeof *w);
  w[0] = *x;
}

/* The block a realloc moves to: above MEDIUM_MAX a mapping of its own, not
 * idle medium memory, since a block realloc moved will likely grow again,
 * which a mapping does by remapping. NULL with errno set. */
static void *realloc_dest(size_t want) {
  void *q = want <= MEDIUM_MAX    ? alloc(want)
            : want <= PTRDIFF_MAX ? large_malloc(want, 16, false)
                                  : NULL;
  if (!q) errno = ENOMEM;
  return q;
}

/* A hint for the medium block q a realloc just moved to: nothing has freed
 * it since. */
static void realloc_hint_moved(void *q, size_t want) {
  segment_t *qs = segment_of(q);
  if (want > SMALL_MAX && qs->kind == SEG_MEDIUM) {
    heap_t *qh = atomic_load_explicit(&qs->heap, memory_order_relaxed);
    realloc_hint_t hint = {
        q, qh, atomic_load_explicit(&qh->medium_gen, memory_order_relaxed),
        chunk_usable_size(q)};
    hint_put(&hint);
  }
}

/* A small block's realloc, validated once: the block it leaves is freed
 * without a second look (through usable_size and free, a moved block was
 * validated twice, about 50 instructions of the pareto workload's realloc). */
static NOINLINE void *realloc_small(segment_t *s, void *p, size_t size) {
  page_t *pg = page_of(s, p);
  if (unlikely(!small_valid(pg, p))) small_bad(pg, p, "realloc");
  size_t old = pg->bsize;
  /* stay while the new size still fits and uses at least half the block */
  if (size <= old && (size > old / 2 || old <= 16)) return p;
  void *q = realloc_dest(size);
  if (!q) return NULL;
  memcpy(q, p, old < size ? old : size);
  small_give(pg, p);
  realloc_hint_moved(q, size);
  return q;
}

/* Medium, large, zero-size and foreign blocks; s is p's segment. */
static NOINLINE void *realloc_slow(segment_t *s, void *p, size_t size) {
  size_t old, want = size;
  if (seg_kind(s) == SEG_MEDIUM) {
    /* validated and resized under one lock */
    realloc_hint_t hint;
    if (medium_realloc(s, p, size, &old, &hint)) {
      hint_put(&hint);
      return p;
    }
    if (old == SIZE_MAX) fault("realloc", "invalid or freed pointer", p);
    if (size > SMALL_MAX && size <= MEDIUM_MAX)
      want = medium_grow_size(old, size); /* slack for the next appends */
  } else {
    old = usable_size(p, "realloc");
    if (s->kind == SEG_LARGE) {
      void *q = large_realloc(s, p, size);
      if (q) return q;
    }
  }
  void *q = realloc_dest(want);
  if (!q) return NULL;
  memcpy(q, p, old < size ? old : size);
  dealloc(p, "realloc");
  realloc_hint_moved(q, want);
  return q;
}

EXPORT void *allot_realloc(void *p, size_t size) {
  if (!p) return alloc(size);
  if (unlikely(g.slow_mode)) return checked_realloc(p, size);
  if (size == 0) { /* glibc: free and return NULL */
    dealloc(p, "realloc");
    return NULL;
  }
  segment_t *s = segment_of(p);
  unsigned kind = seg_kind(s);
  if (likely(kind == SEG_SMALL)) return realloc_small(s, p, size);
  if (kind == SEG_MEDIUM && hint_fits(p, s, size)) return p;
  return realloc_slow(s, p, size);
}
EXPORT void *allot_reallocarray(void *p, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return allot_realloc(p, total);
}

static void check_size(const void *p, size_t size, const char *fn) {
  if (!size_fits(size, usable_size(p, fn)))
    fault(fn, "size does not match the block", p);
}

EXPORT void allot_free_sized(void *p, size_t size) {
  if (!p) return;
  if (unlikely(g.slow_mode)) {
    checked_free_sized(p, 0, size, "free_sized");
    return;
  }
  dealloc_block(p, size, "free_sized");
}

EXPORT void allot_free_aligned_sized(void *p, size_t align, size_t size) {
  if (!p) return;
  if (align & (align - 1)) fault("free_aligned_sized", "bad alignment", p);
  if (((uintptr_t)p & (align - 1)) != 0)
    fault("free_aligned_sized", "block not aligned as stated", p);
  if (unlikely(g.slow_mode)) {
    checked_free_sized(p, align, size, "free_aligned_sized");
    return;
  }
  segment_t *s = segment_of(p);
  if (align <= 16) {
    check_size(p, size, "free_aligned_sized");
  } else if (seg_kind(s) == SEG_SMALL) {
    page_t *pg = page_of(s, p);
    usable_size(p, "free_aligned_sized");
    if (pg->cls != aligned_class_any(size, align))
      fault("free_aligned_sized", "size does not match the block", p);
  } else if (size > usable_size(p, "free_aligned_sized")) {
    fault("free_aligned_sized", "size larger than the block", p);
  }
  dealloc(p, "free_aligned_sized");
}

static bool power_of_two(size_t x) {
  return x && !(x & (x - 1));
}

/* Out of line: errno's address is a call, which would give the aligned
 * calls' fast paths a stack frame. */
static COLD void *invalid_alignment(void) {
  errno = EINVAL;
  return NULL;
}

EXPORT void *allot_aligned_alloc(size_t align, size_t size) {
  if (!power_of_two(align)) return invalid_alignment();
  void *p = aligned_take(align, size);
  return p ? p : alloc_aligned(align, size);
}

/* posix_memalign reports by its return value: errno stays as it was. Out
 * of line, so that the fast path needs no stack frame. */
static NOINLINE int posix_memalign_slow(void **out, size_t align, size_t size) {
  int saved = errno;
  void *p = alloc_aligned(align, size);
  if (!p) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

EXPORT int allot_posix_memalign(void **out, size_t align, size_t size) {
  if (!power_of_two(align) || align % sizeof(void *) != 0) return EINVAL;
  void *p = aligned_take(align, size);
  if (unlikely(!p)) return posix_memalign_slow(out, align, size);
  *out = p;
  return 0;
}

EXPORT void *allot_memalign(size_t align, size_t size) {
  /* glibc rounds a non-power-of-two alignment up */
  if (!power_of_two(align)) {
    if (align > ((size_t)1 << (sizeof(size_t) * 8 - 2)))
      return invalid_alignment();
    size_t a = 16;
    while (a < align)
      a <<= 1;
    align = a;
  }
  void *p = aligned_take(align, size);
  return p ? p : alloc_aligned(align, size);
}

EXPORT void *allot_valloc(size_t size) {
  return alloc_aligned((size_t)sysconf(_SC_PAGESIZE), size);
}

EXPORT void *allot_pvalloc(size_t size) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t rounded = (size + page - 1) & ~(page - 1);
  if (rounded < size) {
    errno = ENOMEM;
    return NULL;
  }
  return alloc_aligned(page, rounded ? rounded : page);
}

static NOINLINE size_t usable_other(const void *p) {
  if (!p) return 0;
  if (unlikely(g.slow_mode)) return checked_usable(p, "malloc_usable_size");
  return usable_size(p, "malloc_usable_size");
}

/* As free: one byte of the segment map says "small block, default mode",
 * and the rest (NULL, checked mode, other kinds, foreign) goes out of line.
 * Programs that keep their own count of memory ask at every malloc and free
 * (redis's zmalloc: about 1.8 M calls in its eight short tests at 20 000
 * requests each, one per malloc and one per free); the whole function was
 * 42 instructions on a small block, this path is 31. */
EXPORT size_t allot_malloc_usable_size(const void *p) {
  segment_t *s = segment_of(p);
  if (likely(segmap_kind(s) == SEG_SMALL)) {
    page_t *pg = page_of(s, p);
    if (unlikely(!small_valid(pg, p))) small_bad(pg, p, "malloc_usable_size");
    return pg->bsize;
  }
  return usable_other(p);
}

size_t block_usable_size(const void *p, const char *fn) {
  return usable_size(p, fn);
}

EXPORT int allot_owns(const void *p) {
  if (!p) return 0;
  segment_t *s = segment_of(p);
  if (!segmap_has(s)) return 0;
  if (s->kind == SEG_SMALL) return small_valid(page_of(s, p), p);
  if (s->kind == SEG_MEDIUM) {
    return medium_live_size(s, p) != SIZE_MAX &&
           !(g.slow_mode && checked_quarantined(p)); /* freed, waiting */
  }
  if (s->kind == SEG_LARGE)
    return p == (uint8_t *)s + s->large_offset &&
           atomic_load_explicit(&s->large_state, memory_order_acquire) ==
               LARGE_LIVE &&
           !(g.slow_mode && checked_quarantined(p));
  if (s->kind == SEG_ZERO) return zero_live(s, p);
  return 0;
}

EXPORT void allot_collect(void) {
  heap_t *h = tls_heap;
  if (h != &empty_heap) heap_collect_pages(h, false);
  /* Every heap's free pages and free medium chunks, not only this thread's:
   * malloc_trim(0) from one thread must not leave memory that other (idle)
   * threads freed. Both take the heap's locks, as the purge thread does. */
  for (heap_t *o = heaps_first(); o; o = o->next_all) {
    segment_purge_heap(o, true);
    medium_purge_heap(o, true);
  }
  segment_collect_cache(true);
  large_collect(true);
}

/* ---- the standard names -------------------------------------------------- */
#if ALLOT_OVERRIDE
/* The prefixed declarations carry malloc/alloc_size attributes; the aliases
 * need not repeat them. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmissing-attributes"
#endif
#define ALIAS(name) __attribute__((alias(#name), visibility("default"), used))
void *malloc(size_t) ALIAS(allot_malloc);
void free(void *) ALIAS(allot_free);
void *calloc(size_t, size_t) ALIAS(allot_calloc);
void *realloc(void *, size_t) ALIAS(allot_realloc);
void *reallocarray(void *, size_t, size_t) ALIAS(allot_reallocarray);
void free_sized(void *, size_t) ALIAS(allot_free_sized);
void free_aligned_sized(void *, size_t, size_t) ALIAS(allot_free_aligned_sized);
void *aligned_alloc(size_t, size_t) ALIAS(allot_aligned_alloc);
int posix_memalign(void **, size_t, size_t) ALIAS(allot_posix_memalign);
void *memalign(size_t, size_t) ALIAS(allot_memalign);
void *valloc(size_t) ALIAS(allot_valloc);
void *pvalloc(size_t) ALIAS(allot_pvalloc);
size_t malloc_usable_size(void *) ALIAS(allot_malloc_usable_size);
void cfree(void *) ALIAS(allot_free);
int malloc_trim(size_t pad);
EXPORT int malloc_trim(size_t pad) {
  return allot_malloc_trim(pad); /* allot_collect; 1 if memory went back */
}
/* glibc's internal names, which some programs and libraries call directly */
void *__libc_malloc(size_t) ALIAS(allot_malloc);
void __libc_free(void *) ALIAS(allot_free);
void *__libc_calloc(size_t, size_t) ALIAS(allot_calloc);
void *__libc_realloc(void *, size_t) ALIAS(allot_realloc);
void *__libc_memalign(size_t, size_t) ALIAS(allot_memalign);
void *__libc_valloc(size_t) ALIAS(allot_valloc);
void *__libc_pvalloc(size_t) ALIAS(allot_pvalloc);
void __libc_cfree(void *) ALIAS(allot_free);
int __posix_memalign(void **, size_t, size_t) ALIAS(allot_posix_memalign);
#endif
