/* large.c: blocks above MEDIUM_MAX, each in its own mapping.
 *
 * The mapping starts with a segment header (on its own OS page, so user data
 * stays page-aligned and apart from metadata) and is aligned to SEG_SIZE, so
 * free() finds the header by the same masking as for every other block.
 * Freed mappings wait in a small cache for a while before going back to the
 * OS, and realloc grows a block by moving its pages with mremap rather than
 * copying them. */
#include "internal.h"

#include <errno.h>

#define CACHE_SLOTS 16
#define CACHE_MAX_BYTES ((size_t)256 << 20)
#define CACHE_MAX_ONE ((size_t)64 << 20)

static os_lock_t large_lock;
static segment_t *cache[CACHE_SLOTS];
static _Atomic size_t cache_bytes; /* read without the lock as a hint */

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
      cache[i] = NULL;
      cache_bytes -= s->map_size;
      drop[n++] = s;
    } else if (s->cached_at + keep < next) {
      next = s->cached_at + keep;
    }
  }
  os_unlock(&large_lock);
  for (size_t i = 0; i < n; i++)
    cache_unmap(drop[i]);
  return next;
}

/* The cached mapping that serves map_size best: the smallest that is large
 * enough, else the largest there is. Its resident pages are what a cache
 * saves (page faults and the kernel's zeroing cost more than the mmap), so
 * any of them is worth reusing; cache_fit then cuts or extends it. */
static segment_t *cache_take(size_t map_size) {
  segment_t *best = NULL;
  size_t besti = 0;
  os_lock(&large_lock);
  for (size_t i = 0; i < CACHE_SLOTS; i++) {
    segment_t *s = cache[i];
    if (!s) continue;
    bool fits = s->map_size >= map_size;
    bool best_fits = best && best->map_size >= map_size;
    if (!best || (fits && (!best_fits || s->map_size < best->map_size)) ||
        (!fits && !best_fits && s->map_size > best->map_size)) {
      best = s;
      besti = i;
    }
  }
  if (best) {
    cache[besti] = NULL;
    cache_bytes -= best->map_size;
  }
  os_unlock(&large_lock);
  return best;
}

/* Make a cached mapping exactly map_size: give a surplus tail back, or
 * extend it — in place if the kernel can, else by moving its pages to a new
 * aligned reservation (no copying). NULL if that fails (mapping released). */
static segment_t *cache_fit(segment_t *s, size_t map_size) {
  if (s->map_size == map_size) return s;
  if (s->map_size > map_size || os_remap_inplace(s, s->map_size, map_size)) {
    if (s->map_size > map_size && !os_remap_inplace(s, s->map_size, map_size))
      return s; /* keep the surplus rather than fail */
    s->map_size = map_size;
    return s;
  }
  void *target = os_reserve_aligned(map_size, SEG_SIZE);
  if (!target) {
    cache_unmap(s);
    return NULL;
  }
  size_t old = s->map_size;
  segment_unregister(s);
  segment_t *n = os_remap_fixed(s, old, map_size, target);
  if (!n) {
    os_unmap(target, map_size);
    segment_register_moved(s);
    cache_unmap(s);
    return NULL;
  }
  n->map_size = map_size;
  segment_register_moved(n);
  return n;
}

void *large_malloc(size_t size, size_t align, bool zero) {
  if (cache_bytes) large_collect(false);
  size_t off = offset_for(align);
  if (size > PTRDIFF_MAX - off - SEG_SIZE - align) {
    errno = ENOMEM;
    return NULL;
  }
  size_t map_size = (off + size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  segment_t *s = NULL;
  bool fresh = false;
  if (off == LARGE_OFFSET && !g.secure && (s = cache_take(map_size)))
    s = cache_fit(s, map_size);
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
    fresh = true;
    segment_register(s, SEG_LARGE, map_size);
  }
  s->large_offset = off;
  s->large_size = s->map_size - off;
  atomic_store_explicit(&s->large_state, LARGE_LIVE, memory_order_release);
  void *p = (uint8_t *)s + off;
  if (zero && !fresh) memset(p, 0, size);
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
  /* a first-class heap's block leaves its list (heapapi.c) */
  if (unlikely(atomic_load_explicit(&s->heap, memory_order_relaxed) != NULL))
    heap_large_unlink(s);
  /* secure mode never takes from the cache (cache_fit would move a mapping
   * away from its guards), so its mappings go back at once: the quarantine
   * already delays their reuse */
  if (s->large_offset == LARGE_OFFSET && s->map_size <= CACHE_MAX_ONE &&
      !g.secure) {
    s->cached_at = os_now_ms();
    segment_t *evict = NULL;
    os_lock(&large_lock);
    size_t slot = CACHE_SLOTS, oldest = 0;
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
      if (!cache[i]) {
        slot = i;
        break;
      }
      if (!oldest || cache[i]->cached_at < cache[oldest - 1]->cached_at)
        oldest = i + 1;
    }
    if (slot == CACHE_SLOTS) {
      slot = oldest - 1;
      evict = cache[slot];
      cache_bytes -= evict->map_size;
      cache[slot] = NULL;
    }
    if (cache_bytes + s->map_size <= CACHE_MAX_BYTES) {
      cache[slot] = s;
      cache_bytes += s->map_size;
      s = NULL;
    }
    os_unlock(&large_lock);
    if (evict) cache_unmap(evict);
    if (!s) {
      purge_notify();
      purge_poll();
      return;
    }
  }
  cache_unmap(s);
}

/* Resize a live large block, keeping its address where the kernel can extend
 * the mapping, else moving the pages to a new aligned place without copying.
 * Returns NULL (block untouched) when it cannot. */
void *large_realloc(segment_t *s, void *p, size_t size) {
  if (p != (uint8_t *)s + s->large_offset ||
      atomic_load_explicit(&s->large_state, memory_order_acquire) != LARGE_LIVE)
    large_bad(s, p, "realloc");
  if (size <= s->large_size && size >= s->large_size / 2) return p;
  if (s->large_offset != LARGE_OFFSET || size <= MEDIUM_MAX) return NULL;
  if (size > PTRDIFF_MAX - SEG_SIZE) return NULL;
  size_t map_size =
      (LARGE_OFFSET + size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  if (map_size < s->map_size) {
    /* shrinking: the tail goes back to the OS at once */
    if (!os_remap_inplace(s, s->map_size, map_size)) return NULL;
    s->map_size = map_size;
    s->large_size = map_size - LARGE_OFFSET;
    return p;
  }
  if (os_remap_inplace(s, s->map_size, map_size)) {
    s->map_size = map_size;
    s->large_size = map_size - LARGE_OFFSET;
    return p;
  }
  void *target = os_reserve_aligned(map_size, SEG_SIZE);
  if (!target) return NULL;
  size_t old_map = s->map_size;
  heap_t *owner = heap_large_unlink(s); /* its list links would go stale */
  segment_unregister(s);
  segment_t *n = os_remap_fixed(s, old_map, map_size, target);
  if (!n) {
    os_unmap(target, map_size);
    segment_register_moved(s);
    if (owner) heap_large_link(owner, s);
    return NULL;
  }
  n->map_size = map_size;
  n->large_size = map_size - LARGE_OFFSET;
  segment_register_moved(n);
  if (owner) heap_large_link(owner, n);
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
