/* large.c: blocks above MEDIUM_MAX, each in its own mapping.
 *
 * The mapping starts with a segment header (on its own OS page, so user data
 * stays page-aligned and apart from metadata) and is aligned to SEG_SIZE, so
 * free() finds the header by the same masking as for every other block.
 *
 * Freed mappings wait in a small cache, and what the cache keeps is their
 * pages: faulted in and zeroed by the kernel once, they cost nothing to use
 * again, while faulting memory in anew costs ~600 us per MiB (docs/
 * performance.md, workload `large`). A new or growing block takes them with
 * mremap, which moves page tables, not bytes (~1.4 us per MiB): a whole
 * cached mapping, or the tail of a larger one, onto the block's range. A
 * block can so be made of pieces of several old mappings, each its own kernel
 * mapping (VMA); one mremap moves only within one VMA, so the header keeps
 * where the pieces end. Cached mappings go back to the OS after four purge
 * delays unused, and at once on allot_collect / malloc_trim(0). */
#include "internal.h"

#include <errno.h>
#include <sched.h>

#define CACHE_SLOTS 32
#define CACHE_MAX_BYTES ((size_t)256 << 20)
#define CACHE_MAX_ONE ((size_t)64 << 20)
/* Mappings that may be cached are a whole number of grains long, so pieces
 * split only at grain boundaries: pieces never merge, and without a grain
 * they would split into ever more, ever smaller ones (measured on `large`
 * at 5000 steps: 37 mremap calls per step, most of the time). Pieces of 2 MiB
 * at 2 MiB-aligned addresses also move as whole page-table pages. The
 * grain's slack is address space: its pages stay untouched unless a moved
 * piece brings some along. */
#define GRAIN ((size_t)2 << 20)
#define MAX_PIECES 256

/* Where the pieces of a large mapping end, in bytes from the segment start:
 * piece i is [end[i-1], end[i]) (end[-1] = 0) and lies within one VMA. Kept
 * in the header page after the fixed header fields: a large segment has no
 * page descriptors. A stored list has at most MAX_PIECES - 1 pieces, so a
 * move can always add the one fresh piece it needs. */
typedef struct pieces {
  uint32_t n;
  size_t end[MAX_PIECES];
} pieces_t;
_Static_assert(offsetof(segment_t, pages) + sizeof(pieces_t) <= LARGE_OFFSET,
               "the piece list fits in the header page");

static os_lock_t large_lock;
#ifdef ALLOT_TEST_HOOKS
os_lock_t *large_test_lock(const char *name) {
  return strcmp(name, "large") ? NULL : &large_lock;
}
#endif
static segment_t *cache[CACHE_SLOTS];
static _Atomic size_t cache_bytes; /* read without the lock as a hint */

/* Under large_lock: slot i's mapping, out of the cache. */
size_t large_cached_bytes(void) {
  return atomic_load_explicit(&cache_bytes, memory_order_relaxed);
}

static segment_t *cache_take(size_t i) {
  segment_t *s = cache[i];
  cache[i] = NULL;
  cache_bytes -= s->map_size;
  return s;
}

static pieces_t *pieces_of(segment_t *s) {
  return (pieces_t *)((uint8_t *)s + offsetof(segment_t, pages));
}

static void pieces_single(segment_t *s, size_t size) {
  pieces_t *pl = pieces_of(s);
  pl->n = 1;
  pl->end[0] = size;
}

/* Record a boundary (a piece ends at `end`); extra boundaries are harmless,
 * a missing one is not, so callers check the room first. */
static void pieces_add(pieces_t *pl, size_t end) {
  if (!end || (pl->n && pl->end[pl->n - 1] >= end) || pl->n == MAX_PIECES)
    return;
  pl->end[pl->n++] = end;
}

/* Forget everything at and past `size`. */
static void pieces_cut(pieces_t *pl, size_t size) {
  uint32_t i = 0;
  while (i + 1 < pl->n && pl->end[i] < size)
    i++;
  pl->end[i] = size;
  pl->n = i + 1;
}

/* Pieces that overlap [from, to). */
static uint32_t pieces_in(const pieces_t *pl, size_t from, size_t to) {
  uint32_t k = 0;
  for (uint32_t i = 0; i < pl->n; i++) {
    size_t start = i ? pl->end[i - 1] : 0;
    if (start < to && pl->end[i] > from) k++;
  }
  return k;
}

/* A move onto committed memory replaced its pages: the kernel unmapped those
 * bytes without os.c seeing it, so its count of mapped bytes drops here. */
static void mapped_replaced(size_t n) {
  atomic_fetch_sub_explicit(&os_stats.mapped, n, memory_order_relaxed);
}

/* Move [from, to) of the mapping at src (pieces pl) onto dst, committed
 * memory, one mremap per piece, recording the new boundaries (relative to
 * base) in out. A piece the kernel refuses to move (a program may have
 * changed the protection of part of its block) is copied when `copy` (a live
 * block) or else left as dst's fresh pages. Either way the source range is
 * gone afterwards. */
static void move_range(uint8_t *src, const pieces_t *pl, size_t from, size_t to,
                       uint8_t *dst, uint8_t *base, pieces_t *out, bool copy) {
  for (uint32_t i = 0; i < pl->n; i++) {
    size_t a = i ? pl->end[i - 1] : 0, b = pl->end[i];
    if (a < from) a = from;
    if (b > to) b = to;
    if (a >= b) continue;
    uint8_t *d = dst + (a - from);
    pieces_add(out, (size_t)(d - base));
    if (os_remap_fixed(src + a, b - a, b - a, d)) {
      mapped_replaced(b - a);
    } else {
      if (copy) memcpy(d, src + a, b - a);
      os_unmap(src + a, b - a);
    }
    pieces_add(out, (size_t)(d - base) + (b - a));
  }
}

static size_t offset_for(size_t align) {
  if (align <= LARGE_OFFSET) return LARGE_OFFSET;
  if (align >= SEG_SIZE) return SEG_SIZE;
  return align;
}

static void cache_unmap(segment_t *s) {
  segment_unregister(s);
  if (unlikely(g.secure))
    secure_large_unmap(s); /* and its guard regions */
  else
    os_unmap(s, s->map_size);
}

/* Under large_lock: put s in the cache, in a free slot or in place of the
 * smallest entry if that is smaller than s (*evict, to unmap after the lock):
 * the pages of the larger one save more faults. False if s stays out. */
static bool cache_insert_locked(segment_t *s, segment_t **evict) {
  size_t slot = CACHE_SLOTS, small = CACHE_SLOTS;
  *evict = NULL;
  for (size_t i = 0; i < CACHE_SLOTS; i++) {
    if (!cache[i]) {
      slot = i;
      break;
    }
    if (small == CACHE_SLOTS || cache[i]->map_size < cache[small]->map_size)
      small = i;
  }
  if (slot == CACHE_SLOTS) {
    if (cache[small]->map_size >= s->map_size ||
        cache_bytes - cache[small]->map_size + s->map_size > CACHE_MAX_BYTES)
      return false;
    slot = small;
    *evict = cache_take(slot);
  } else if (cache_bytes + s->map_size > CACHE_MAX_BYTES) {
    return false;
  }
  cache[slot] = s;
  cache_bytes += s->map_size;
  return true;
}

/* Unmap cached mappings older than four purge delays (all when forced).
 * Returns when the next one is due (UINT64_MAX: cache empty). */
uint64_t large_collect(bool force) {
  uint64_t now = os_now_ms(), next = UINT64_MAX;
  uint64_t keep = (uint64_t)g.purge_delay_ms * 4;
  segment_t *drop[CACHE_SLOTS];
  size_t n = 0;
  os_lock(&large_lock);
  for (size_t i = 0; i < CACHE_SLOTS; i++) {
    segment_t *s = cache[i];
    if (!s) continue;
    if (force || now >= s->cached_at + keep) {
      drop[n++] = cache_take(i);
    } else if (s->cached_at + keep < next) {
      next = s->cached_at + keep;
    }
  }
  os_unlock(&large_lock);
  for (size_t i = 0; i < n; i++)
    cache_unmap(drop[i]);
  return next;
}

/* A fresh segment is about to be mapped (segment.c): the oldest cached
 * mappings, want bytes or more of them, go back to the OS first. Their pages
 * are resident, and a program whose small or medium memory grows does not
 * take them: in sqlite, a block grown by realloc to about 20 MiB and freed
 * just before the page cache grew stayed cached beside the new segments
 * until large_collect came round, in 3 runs of 5 on a loaded machine (peak
 * RSS 130 MiB against 120 when it was gone in time). */
void large_cache_yield(size_t want) {
  if (!atomic_load_explicit(&cache_bytes, memory_order_relaxed)) return;
  segment_t *drop[CACHE_SLOTS];
  size_t n = 0, got = 0;
  os_lock(&large_lock);
  while (got < want) {
    size_t old = CACHE_SLOTS;
    for (size_t i = 0; i < CACHE_SLOTS; i++)
      if (cache[i] &&
          (old == CACHE_SLOTS || cache[i]->cached_at < cache[old]->cached_at))
        old = i;
    if (old == CACHE_SLOTS) break;
    drop[n] = cache_take(old);
    got += drop[n++]->map_size;
  }
  os_unlock(&large_lock);
  for (size_t i = 0; i < n; i++)
    cache_unmap(drop[i]);
}

/* A cached mapping that serves map_size as it is: large enough, with at most
 * 1/8 to spare (the spare stays with the block; size classes waste as much). */
static segment_t *cache_take_whole(size_t map_size) {
  segment_t *best = NULL;
  size_t besti = 0;
  os_lock(&large_lock);
  for (size_t i = 0; i < CACHE_SLOTS; i++) {
    segment_t *s = cache[i];
    if (s && s->map_size >= map_size &&
        s->map_size - map_size <= map_size / 8 &&
        (!best || s->map_size < best->map_size)) {
      best = s;
      besti = i;
    }
  }
  if (best) cache_take(besti);
  os_unlock(&large_lock);
  return best;
}

/* Fill [at, end) of the committed mapping at base with cached pages: the
 * tail of the smallest cached mapping that covers what is left, else the
 * whole of the largest, and so on (measured on `large`: fewer pieces, fewer
 * faults and a lower peak than using up the largest whole first). Records piece
 * boundaries in out; returns the end of the filled part (it holds old data;
 * past it, and in any piece that could not be moved, base keeps its fresh zero
 * pages). */
static size_t fill_from_cache(uint8_t *base, size_t at, size_t end,
                              pieces_t *out) {
  segment_t *take[CACHE_SLOTS];
  size_t use[CACHE_SLOTS], n = 0, need = end - at;
  os_lock(&large_lock);
  while (need) {
    size_t bi = CACHE_SLOTS;
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
      segment_t *s = cache[i];
      if (!s) continue;
      if (bi == CACHE_SLOTS) {
        bi = i;
        continue;
      }
      size_t bsz = cache[bi]->map_size, sz = s->map_size;
      bool fits = sz >= need, bfits = bsz >= need;
      if ((fits && (!bfits || sz < bsz)) || (!fits && !bfits && sz > bsz))
        bi = i;
    }
    if (bi == CACHE_SLOTS) break;
    segment_t *s = cache_take(bi);
    take[n] = s;
    use[n] = s->map_size < need ? s->map_size : need;
    need -= use[n++];
  }
  os_unlock(&large_lock);

  size_t pos = at;
  segment_t *back[CACHE_SLOTS];
  size_t nback = 0;
  for (size_t i = 0; i < n; i++) {
    segment_t *s = take[i];
    size_t size = s->map_size, from = size - use[i];
    pieces_t src = *pieces_of(s); /* the header may move with piece 0 */
    if (out->n + 2 * pieces_in(&src, from, size) + 1 > MAX_PIECES - 1) {
      back[nback++] = s; /* too fragmented to add: keep it for later */
      continue;
    }
    if (from == 0) {
      segment_unregister(s);
    } else {
      /* walkers see only what stays; allot_check, bounds never past the
       * mapping (the size first, introspect.c's check_global) */
      if (s->large_size > from - s->large_offset)
        s->large_size = from - s->large_offset;
      __atomic_store_n(&s->map_size, from, __ATOMIC_RELEASE);
      pieces_cut(pieces_of(s), from);
    }
    move_range((uint8_t *)s, &src, from, size, base + pos, base, out, false);
    pos += size - from;
    if (from) back[nback++] = s;
  }
  if (nback) {
    segment_t *drop[2 * CACHE_SLOTS];
    size_t nd = 0;
    os_lock(&large_lock);
    for (size_t i = 0; i < nback; i++) {
      segment_t *evict;
      if (!cache_insert_locked(back[i], &evict)) drop[nd++] = back[i];
      if (evict) drop[nd++] = evict;
    }
    os_unlock(&large_lock);
    for (size_t i = 0; i < nd; i++)
      cache_unmap(drop[i]);
  }
  return pos;
}

/* Checked mode's heap walk (checked.c, leak) reads a live block's trailer
 * and canary while other threads free it, holding no lock they take: a
 * free made the block inaccessible (the quarantine), or its mapping went
 * to the cache, where a new block takes its tail, under a read already
 * past the state check. So the walk pins the block, and a free, after its
 * state has left LARGE_LIVE, waits for the pin to go before the memory
 * changes: either the walk sees the block no longer live or the free sees
 * the pin (a sequentially consistent write and read on each side). Pins
 * are held for one look at a block, never across a wait. realloc changes a
 * live block's mapping without a state change, but only in the default
 * mode, whose walk reads no block (checked mode's realloc moves blocks
 * itself). */
bool large_pin(segment_t *s) {
  atomic_fetch_add(&s->large_pins, 1);
  if (atomic_load(&s->large_state) == LARGE_LIVE) return true;
  large_unpin(s);
  return false;
}
void large_unpin(segment_t *s) {
  atomic_fetch_sub_explicit(&s->large_pins, 1, memory_order_release);
}
void large_unpinned(segment_t *s) {
  while (unlikely(atomic_load(&s->large_pins)))
    sched_yield();
}

void *large_malloc(size_t size, size_t align, bool zero) {
  if (cache_bytes) large_collect(false);
  size_t off = offset_for(align);
  if (size > PTRDIFF_MAX - off - SEG_SIZE - align) {
    errno = ENOMEM;
    return NULL;
  }
  bool cacheable = off == LARGE_OFFSET && !g.secure;
  size_t need = (off + size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  size_t map_size = cacheable ? (need + GRAIN - 1) & ~(GRAIN - 1) : need;
  /* Bytes from the segment start that may hold old data: the rest are
   * fresh pages the kernel zeroes. */
  size_t dirty = 0;
  segment_t *s = NULL;
  if (cacheable && cache_bytes && (s = cache_take_whole(map_size)))
    dirty = s->map_size;
  if (!s) {
    if (unlikely(g.secure)) {
      s = secure_large_map(map_size, align); /* with guard regions */
    } else if (align > SEG_SIZE) {
      /* the user pointer, SEG_SIZE past the header, must be align-aligned */
      uint8_t *raw = os_map_aligned(map_size + align, SEG_SIZE);
      if (raw) {
        uintptr_t user = ((uintptr_t)raw + SEG_SIZE + align - 1) & ~(align - 1);
        s = (segment_t *)(user - SEG_SIZE);
        size_t head = (uintptr_t)s - (uintptr_t)raw;
        size_t tail = map_size + align - head - map_size;
        os_unmap(raw, head);
        os_unmap((uint8_t *)s + map_size, tail);
      }
    } else {
      s = os_map_aligned(map_size, SEG_SIZE);
    }
    if (!s) {
      errno = ENOMEM;
      return NULL;
    }
    pieces_t pl = {0};
    if (cacheable && !g.use_brk && cache_bytes)
      dirty = fill_from_cache((uint8_t *)s, 0, map_size, &pl);
    pieces_add(&pl, map_size);
    segment_register(s, SEG_LARGE, map_size);
    *pieces_of(s) = pl;
  }
  s->large_offset = off;
  s->large_size = need - off; /* the grain's slack is not the program's */
  void *p = (uint8_t *)s + off;
  /* before it is live: zeroing megabytes of cached pages takes long, and a
   * live block that is neither made nor in its maker's hands yet
   * (checked.c, in_flight) looks damaged to the heap walk */
  if (zero && dirty > off)
    memset(p, 0, dirty - off < size ? dirty - off : size);
  atomic_store_explicit(&s->large_state, LARGE_LIVE, memory_order_release);
  if (unlikely(g.prof)) prof_large(p, size); /* heap profile (prof.c) */
  return p;
}

static COLD void large_bad(segment_t *s, void *p, const char *fn) {
  uint32_t st = atomic_load_explicit(&s->large_state, memory_order_relaxed);
  if (p == (uint8_t *)s + s->large_offset && st == LARGE_CACHED)
    fault(fn, "double free", p);
  fault(fn, "invalid pointer (not the start of a block)", p);
}

void large_free(segment_t *s, void *p, const char *fn) {
  uint32_t live = LARGE_LIVE;
  if (unlikely(p != (uint8_t *)s + s->large_offset ||
               !atomic_compare_exchange_strong(&s->large_state, &live,
                                               LARGE_CACHED)))
    large_bad(s, p, fn);
  large_unpinned(s); /* the heap walk's look ends before the memory goes */
  if (unlikely(g.prof) && prof_maybe_sample(p)) prof_free(p); /* profile */
  /* a first-class heap's block leaves its list (heapapi.c) */
  if (unlikely(atomic_load_explicit(&s->heap, memory_order_relaxed) != NULL))
    heap_large_unlink(s);
  /* secure mode never takes from the cache (its mappings must stay with
   * their guards), so its mappings go back at once: the quarantine already
   * delays their reuse. */
  if (s->large_offset == LARGE_OFFSET && s->map_size <= CACHE_MAX_ONE &&
      !g.secure) {
    s->cached_at = os_now_ms();
    segment_t *evict;
    os_lock(&large_lock);
    bool cached = cache_insert_locked(s, &evict);
    os_unlock(&large_lock);
    if (evict) cache_unmap(evict);
    if (cached) {
      purge_notify();
      purge_poll();
      return;
    }
  }
  cache_unmap(s);
}

/* Grow a live block by moving it, without copying, to a new mapping of
 * map_size and filling the rest from the cache. NULL (block untouched) when
 * no mapping can be had. */
static segment_t *large_move(segment_t *s, size_t map_size) {
  pieces_t src = *pieces_of(s), out = {0};
  size_t old = s->map_size;
  /* too fragmented to add a piece: realloc copies into a new block */
  if (src.n >= MAX_PIECES - 1) return NULL;
  if (src.n == 1 && !cache_bytes) {
    /* one piece: the kernel moves and extends it in one call */
    void *target = os_reserve_aligned(map_size, SEG_SIZE);
    if (!target) return NULL;
    heap_t *owner = heap_large_unlink(s); /* its list links would go stale */
    segment_unregister(s);
    segment_t *n = os_remap_fixed(s, old, map_size, target);
    if (!n) {
      os_unmap(target, map_size);
      segment_register_moved(s);
      if (owner) heap_large_link(owner, s);
      return NULL;
    }
    n->map_size = map_size;
    pieces_single(n, map_size);
    segment_register_moved(n);
    if (owner) heap_large_link(owner, n);
    return n;
  }
  uint8_t *target = os_map_aligned(map_size, SEG_SIZE);
  if (!target) return NULL;
  heap_t *owner = heap_large_unlink(s);
  segment_unregister(s);
  /* The first piece (with the header) decides: if it cannot move, nothing
   * has; after it, a piece that cannot move is copied. */
  if (!os_remap_fixed(s, src.end[0], src.end[0], target)) {
    os_unmap(target, map_size);
    segment_register_moved(s);
    if (owner) heap_large_link(owner, s);
    return NULL;
  }
  mapped_replaced(src.end[0]);
  pieces_add(&out, src.end[0]);
  move_range((uint8_t *)s, &src, src.end[0], old, target + src.end[0], target,
             &out, true);
  fill_from_cache(target, old, map_size, &out);
  pieces_add(&out, map_size);
  segment_t *n = (segment_t *)target;
  n->map_size = map_size;
  *pieces_of(n) = out;
  segment_register_moved(n);
  if (owner) heap_large_link(owner, n);
  return n;
}

/* Resize a live large block, keeping its address where the kernel can extend
 * the mapping, else moving its pages to a new aligned place without copying;
 * growth takes cached pages first. Returns NULL (block untouched) when it
 * cannot. */
void *large_realloc(segment_t *s, void *p, size_t size) {
  if (p != (uint8_t *)s + s->large_offset ||
      atomic_load_explicit(&s->large_state, memory_order_acquire) != LARGE_LIVE)
    large_bad(s, p, "realloc");
  if (size <= s->large_size && size >= s->large_size / 2) return p;
  /* secure mode: a moved block would leave its guards behind */
  if (s->large_offset != LARGE_OFFSET || size <= MEDIUM_MAX || g.secure)
    return NULL;
  if (size > PTRDIFF_MAX - SEG_SIZE) return NULL;
  size_t need = (LARGE_OFFSET + size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  size_t map_size = (need + GRAIN - 1) & ~(GRAIN - 1);
  size_t old = s->map_size;
  pieces_t *pl = pieces_of(s);
  if (map_size <= old) {
    /* within the mapping; a tail of whole grains goes back at once (the
     * size first: allot_check finds bounds past the mapping damaged) */
    s->large_size = need - LARGE_OFFSET;
    if (map_size < old) {
      pieces_cut(pl, map_size);
      os_unmap((uint8_t *)s + map_size, old - map_size);
      __atomic_store_n(&s->map_size, map_size, __ATOMIC_RELEASE);
    }
    return p;
  }
  size_t last = pl->n > 1 ? pl->end[pl->n - 2] : 0;
  if (os_remap_inplace((uint8_t *)s + last, old - last, map_size - last)) {
    s->map_size = map_size; /* the mapping first (check_global) */
    __atomic_store_n(&s->large_size, need - LARGE_OFFSET, __ATOMIC_RELEASE);
    /* cached pages rather than fresh ones for the extension */
    if (cache_bytes && !g.use_brk &&
        fill_from_cache((uint8_t *)s, old, map_size, pl) > old)
      pieces_add(pl, map_size);
    else
      pl->end[pl->n - 1] = map_size; /* the last piece grew */
    return p;
  }
  segment_t *n = large_move(s, map_size);
  if (!n) return NULL;
  n->large_size = need - LARGE_OFFSET;
  if (unlikely(g.prof)) prof_moved(p, (uint8_t *)n + LARGE_OFFSET);
  return (uint8_t *)n + LARGE_OFFSET;
}

void large_lock_all(void) {
  os_lock(&large_lock);
}
void large_unlock_all(void) {
  os_unlock(&large_lock);
}
void large_reset_lock(void) {
  os_lock_init(&large_lock);
}
