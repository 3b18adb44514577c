/* chunk.c: the boundary-tag chunk heap (medium objects, heaps in a caller's
 * buffer).
 *
 * Owns chunk headers, the two-level segregated free bins and their bitmaps,
 * splitting and merging, aligned allocation, in-place resizing, the region
 * walk and the consistency checker. It never calls the OS and takes no locks.
 * See docs/chunk.md for the layout; in short, each chunk starts with two
 * 64-bit words:
 *
 *   w0 = prev_size | tag0 << 48   (size of the chunk before this one)
 *   w1 = size | flags | tag1 << 48
 *
 * Sizes are multiples of 16 below 2^47, so the low 48 bits of each word hold
 * the value and the top 16 bits a tag: binary 10 followed by 14 bits of a
 * keyed hash of (chunk address, the word's value). Each word checks itself, so
 * rewriting one (the next chunk's prev_size, say) never needs the other, and
 * a bad free can be told apart from a corrupted header: garbage fails both
 * words, an overwritten header usually keeps one intact. The fixed "10" bits
 * mean zeroes, small integers, user-space pointers, ASCII text and -1 never
 * pass for a header word. */
#include "chunk.h"

#include <string.h>

/* Headers live in memory the user also writes through other types. */
typedef struct chunk {
  uint64_t w0;
  uint64_t w1;
  struct chunk *next, *prev; /* free chunks only: bin list links */
} __attribute__((may_alias)) chunk_t;

#define FIELD (((uint64_t)1 << 48) - 1)
#define USED 1u  /* this chunk is in use */
#define PUSED 2u /* the chunk before it is in use (or is the fence) */
#define FLAGS 15u
#define SIZE_OF(w1) ((size_t)((w1)&FIELD & ~(uint64_t)FLAGS))

/* Bin geometry: sizes below LINEAR_MAX go to first level 0, one bin per 16
 * bytes; above, first level fl covers [2^(fl+FL_OFFSET), 2^(fl+FL_OFFSET+1))
 * in CHUNK_SL_COUNT equal steps. */
#define LINEAR_MAX (1u << (CHUNK_SL_LOG2 + 4))
#define FL_OFFSET (CHUNK_SL_LOG2 + 3)
/* Chunks are smaller than this (the last first level's upper end). */
#define MAX_CHUNK ((size_t)1 << (CHUNK_FL_COUNT + FL_OFFSET))
#define MAX_REQUEST (MAX_CHUNK - 2 * CHUNK_HEADER)

#if (CHUNK_FL_COUNT + FL_OFFSET) > 47
#error "chunk sizes must fit the 48-bit header fields"
#endif

/* ---- header words ---------------------------------------------------- */

/* A combined check failed: x ORs the checks' results, 0 when all pass. */
#define ANY(x) __builtin_expect((x) != 0, 0)

#define TOP ((uint64_t)1 << 63)       /* the "1" of the "10" prefix */
#define DOMAIN1 0x2545F4914F6CDD1Dull /* separates w1 tags from w0 tags */

/* The address half is shared by both words of a header (the compiler
 * computes it once); the domain constant keeps w0 and w1 tags apart. */
static inline uint64_t addr_mix(uint64_t key, const void *at) {
  return ((uint64_t)(uintptr_t)at ^ key) * 0x9E3779B97F4A7C15ull;
}
static inline uint64_t half1(uint64_t a) {
  return a ^ DOMAIN1;
}
static inline uint64_t word_hash(uint64_t a, uint64_t v) {
  return (a ^ v) * 0xD6E8FEB86659FD93ull;
}
/* The word holding v for the header whose address half is a (half1(a)
 * for w1): v, the hash's top 14 bits at bits 48..61, and the prefix. */
static inline uint64_t word_of(uint64_t a, uint64_t v) {
  return v | ((word_hash(a, v) >> 50) << 48) | TOP;
}
/* The fast paths' checks, which OR their results together and branch once.
 * word_err is 0 iff w is the word holding v; tag_err's top 16 bits are 0
 * iff w's tag matches its own value (its low 48 bits are noise): bits
 * 50..63 of the hash shifted right by 2 land on bits 48..61. */
static inline uint64_t word_err(uint64_t a, uint64_t w, uint64_t v) {
  return w ^ word_of(a, v);
}
static inline uint64_t tag_err(uint64_t a, uint64_t w) {
  return w ^ (word_hash(a, w & FIELD) >> 2) ^ TOP;
}
static inline uint64_t mk_w0(uint64_t key, const chunk_t *c, uint64_t prev) {
  return word_of(addr_mix(key, c), prev);
}
static inline uint64_t mk_w1(uint64_t key, const chunk_t *c, uint64_t head) {
  return word_of(half1(addr_mix(key, c)), head);
}
static inline bool w0_ok(uint64_t key, const chunk_t *c, uint64_t w) {
  return w == mk_w0(key, c, w & FIELD);
}
static inline bool w1_ok(uint64_t key, const chunk_t *c, uint64_t w) {
  return w == mk_w1(key, c, w & FIELD);
}
static inline void set_w0(uint64_t key, chunk_t *c, size_t prev) {
  c->w0 = mk_w0(key, c, prev);
}
/* Atomic (a plain store): realloc reads a live block's size word without
 * the heap's lock (chunk_usable_size) while a free of the chunk before it
 * clears its "previous in use" bit, which the size does not include. */
static inline void store_w1(chunk_t *c, uint64_t w) {
  __atomic_store_n(&c->w1, w, __ATOMIC_RELAXED);
}
static inline void set_w1(uint64_t key, chunk_t *c, uint64_t head) {
  store_w1(c, mk_w1(key, c, head));
}

/* Address arithmetic through integers: a bad size must not be UB. */
static inline chunk_t *chunk_at(const void *c, size_t off) {
  return (chunk_t *)((uintptr_t)c + off);
}
static inline chunk_t *chunk_before(const void *c, size_t off) {
  return (chunk_t *)((uintptr_t)c - off);
}
static inline void *payload(const chunk_t *c) {
  return (void *)((uintptr_t)c + CHUNK_HEADER);
}
static inline chunk_t *chunk_of(const void *p) {
  return (chunk_t *)((uintptr_t)p - CHUNK_HEADER);
}

static inline size_t request_size(size_t size) {
  size_t need = (size + CHUNK_HEADER + 15) & ~(size_t)15;
  return need < CHUNK_MIN ? CHUNK_MIN : need;
}

/* ---- bins ------------------------------------------------------------- */

static inline void bin_of(size_t s, unsigned *fl, unsigned *sl) {
  if (s < LINEAR_MAX) {
    *fl = 0;
    *sl = (unsigned)(s >> 4);
  } else {
    unsigned b = 63u - (unsigned)__builtin_clzll(s);
    *fl = b - FL_OFFSET;
    *sl = (unsigned)(s >> (b - CHUNK_SL_LOG2)) & (CHUNK_SL_COUNT - 1);
  }
}

/* Smallest chunk size the bin (fl, sl) holds. */
static inline size_t bin_floor(unsigned fl, unsigned sl) {
  if (fl == 0) return (size_t)sl << 4;
  unsigned b = fl + FL_OFFSET;
  return ((size_t)1 << b) + ((size_t)sl << (b - CHUNK_SL_LOG2));
}

/* The bin of a chunk size as one index, fl * CHUNK_SL_COUNT + sl, without
 * a branch: a size below LINEAR_MAX is taken as if its top bit were
 * LINEAR_MAX's, which makes its index s >> 4 (first level 0). */
static inline unsigned bin_idx(size_t s) {
  unsigned b = 63u - (unsigned)__builtin_clzll(s | LINEAR_MAX);
  return ((b - (FL_OFFSET + 1)) << CHUNK_SL_LOG2) +
         (unsigned)(s >> (b - CHUNK_SL_LOG2));
}
static inline chunk_t **bin_slot(chunk_heap_t *h, unsigned idx) {
  return (chunk_t **)&h->bins[idx >> CHUNK_SL_LOG2][idx & (CHUNK_SL_COUNT - 1)];
}

/* List operations; the callers keep free_bytes. */
static inline void bin_link(chunk_heap_t *h, chunk_t *c, unsigned idx) {
  chunk_t **slot = bin_slot(h, idx), *head = *slot;
  c->next = head;
  c->prev = NULL;
  if (head) {
    head->prev = c;
  } else {
    h->sl_bitmap[idx >> CHUNK_SL_LOG2] |= 1u << (idx & (CHUNK_SL_COUNT - 1));
    h->fl_bitmap |= (uint64_t)1 << (idx >> CHUNK_SL_LOG2);
  }
  *slot = c;
}
static inline void bin_clear(chunk_heap_t *h, unsigned idx) {
  unsigned fl = idx >> CHUNK_SL_LOG2;
  h->sl_bitmap[fl] &= ~(1u << (idx & (CHUNK_SL_COUNT - 1)));
  if (!h->sl_bitmap[fl]) h->fl_bitmap &= ~((uint64_t)1 << fl);
}
static inline void bin_unlink(chunk_heap_t *h, chunk_t *c, unsigned idx) {
  chunk_t *n = c->next, *p = c->prev;
  if (n) n->prev = p;
  if (p) {
    p->next = n;
  } else {
    *bin_slot(h, idx) = n;
    if (!n) bin_clear(h, idx);
  }
}
/* Put r where c is in c's list (same bin): no bitmap to touch. */
static inline void bin_replace(chunk_heap_t *h, chunk_t *c, chunk_t *r,
                               unsigned idx) {
  chunk_t *n = c->next, *p = c->prev;
  r->next = n;
  r->prev = p;
  if (n) n->prev = r;
  if (p)
    p->next = r;
  else
    *bin_slot(h, idx) = r;
}

static inline void bin_insert(chunk_heap_t *h, chunk_t *c, size_t size) {
  bin_link(h, c, bin_idx(size));
  h->free_bytes += size;
}

static inline void bin_remove(chunk_heap_t *h, chunk_t *c, size_t size) {
  bin_unlink(h, c, bin_idx(size));
  h->free_bytes -= size;
}

/* The links of free chunk c agree with its neighbours in the list, so
 * unlinking it writes only where it should. */
static inline bool links_ok_at(const chunk_heap_t *h, const chunk_t *c,
                               unsigned idx) {
  const chunk_t *n = c->next, *p = c->prev;
  if (((uintptr_t)n | (uintptr_t)p) & 15) return false;
  if (p ? p->next != c : *bin_slot((chunk_heap_t *)h, idx) != c) return false;
  return !n || n->prev == c;
}
static inline bool links_ok(const chunk_heap_t *h, const chunk_t *c,
                            size_t size) {
  return links_ok_at(h, c, bin_idx(size));
}

static void heap_fault(const chunk_heap_t *h, const char *what,
                       const void *addr) {
  if (h->fault) h->fault(what, addr);
  /* No handler, or it returned: stop rather than run on a broken heap. */
  __builtin_trap();
}

/* ---- validation --------------------------------------------------------- */

/* A used chunk and its successor, as read by validate_used. */
typedef struct used_view {
  chunk_t *c, *n;
  uint64_t w1, nw1;
  size_t size;
  const void *where;
} used_view_t;

/* Check that p is the payload of a used chunk whose tags agree with its
 * successor's. Returns NULL, or what is wrong (and u->where the payload
 * address it concerns). Reads only. */
static inline const char *validate_used(const chunk_heap_t *h, const void *p,
                                        used_view_t *u) {
  uint64_t key = h->key;
  u->where = p;
  if ((uintptr_t)p & 15 || (uintptr_t)p < 4096) return "invalid pointer";
  chunk_t *c = chunk_of(p);
  uint64_t w0 = c->w0, w1 = c->w1;
  bool ok0 = w0_ok(key, c, w0), ok1 = w1_ok(key, c, w1);
  if (__builtin_expect(!(ok0 & ok1), 0))
    return (ok0 | ok1) ? "corrupted chunk header" : "invalid pointer";
  if (__builtin_expect(!(w1 & USED), 0)) return "double free";
  size_t size = SIZE_OF(w1);
  if (__builtin_expect(size < CHUNK_MIN, 0)) return "invalid pointer";
  if (__builtin_expect(size > h->max_chunk, 0)) return "corrupted chunk header";
  chunk_t *n = chunk_at(c, size);
  uint64_t nw0 = n->w0, nw1 = n->w1;
  if (__builtin_expect(!w0_ok(key, n, nw0) || !w1_ok(key, n, nw1), 0)) {
    u->where = payload(n);
    return "corrupted chunk header";
  }
  if (__builtin_expect((nw0 & FIELD) != size || !(nw1 & PUSED), 0))
    return "corrupted chunk header";
  u->c = c;
  u->n = n;
  u->w1 = w1;
  u->nw1 = nw1;
  u->size = size;
  return NULL;
}

/* Check free chunk c of the given size (found through a neighbour's tag) and
 * its successor, before it is merged away. On success *after is the chunk
 * following it and *after_w1 that chunk's w1. */
static inline const char *validate_free_neighbour(const chunk_heap_t *h,
                                                  chunk_t *c, size_t size,
                                                  chunk_t **after,
                                                  uint64_t *after_w1,
                                                  const void **where) {
  uint64_t key = h->key;
  *where = payload(c);
  uint64_t w1 = c->w1;
  if (!w0_ok(key, c, c->w0) || !w1_ok(key, c, w1))
    return "corrupted chunk header";
  if (SIZE_OF(w1) != size || (w1 & USED) || !(w1 & PUSED))
    return "corrupted chunk header";
  chunk_t *n = chunk_at(c, size);
  uint64_t nw0 = n->w0, nw1 = n->w1;
  if (!w0_ok(key, n, nw0) || !w1_ok(key, n, nw1) || (nw0 & FIELD) != size ||
      (nw1 & PUSED) || !(nw1 & USED)) {
    *where = payload(n);
    return "corrupted chunk header";
  }
  if (!links_ok(h, c, size)) return "corrupted free list";
  *after = n;
  *after_w1 = nw1;
  return NULL;
}

/* ---- allocation core -------------------------------------------------------
 */

/* A free chunk found for an allocation: the head of bin idx. */
typedef struct fit {
  chunk_t *c, *n; /* the chunk and the one after it */
  size_t size;
  unsigned idx;
} fit_t;

/* Find a free chunk of at least need bytes and check it and its successor;
 * it stays at the head of its bin (carve takes it out). Good fit: the
 * search starts at the first bin whose every chunk fits, so it is two bit
 * scans, after one look at the head of need's own bin (below); when that
 * finds nothing, the head of need's own bin is tried too (it may still be
 * large enough). */
static inline bool find_fit(chunk_heap_t *h, size_t need, fit_t *f) {
  unsigned fl, sl;
  chunk_t *c = NULL;
  size_t least = need; /* what any chunk of the bin used must hold */
  size_t r = need;
  if (r >= LINEAR_MAX) { /* up to the next bin floor */
    unsigned b = 63u - (unsigned)__builtin_clzll(r);
    r += ((size_t)1 << (b - CHUNK_SL_LOG2)) - 1;
    /* The rounding skips the bin need itself falls in, yet that bin's head
     * often fits: programs free and ask again for the same sizes. Taking it
     * leaves a larger chunk whole instead of splitting it, which keeps a
     * churning heap from spreading over more memory (peak RSS: pareto
     * 8.7 -> 7.9 MiB, realloc 26.8 -> 24.8 MiB). */
    bin_of(need, &fl, &sl);
    /* the bit, not the bin: the bin table may be cut short (see below) */
    if (fl < CHUNK_FL_COUNT && (h->sl_bitmap[fl] >> sl & 1)) {
      chunk_t *e = h->bins[fl][sl];
      if (SIZE_OF(e->w1) >= need) {
        c = e;
        least = bin_floor(fl, sl);
        goto found;
      }
    }
  }
  bin_of(r, &fl, &sl);
  /* sl_bitmap has every row (only the bin table is cut to fl_count rows)
   * and the rows past fl_count stay empty, so this path reads a bin only
   * where a bit vouches for it and can compare fl with the constant; the
   * fallback below reads a bin with no bit, so it compares with fl_count.
   * (Loading fl_count here cost one instruction per malloc: measured.) */
  if (__builtin_expect(fl < CHUNK_FL_COUNT, 1)) {
    uint32_t sb = h->sl_bitmap[fl] & (~0u << sl);
    if (!sb) {
      uint64_t fb = h->fl_bitmap & (~(uint64_t)0 << (fl + 1));
      if (fb) {
        fl = (unsigned)__builtin_ctzll(fb);
        sb = h->sl_bitmap[fl];
      }
    }
    if (sb) {
      sl = (unsigned)__builtin_ctz(sb);
      c = h->bins[fl][sl];
      least = bin_floor(fl, sl);
    }
  }
  if (__builtin_expect(!c, 0)) {
    bin_of(need, &fl, &sl);
    if (fl >= h->fl_count) return false;
    c = h->bins[fl][sl];
    if (!c) return false;
    least = bin_floor(fl, sl);
  }

found:;
  uint64_t key = h->key, ac = addr_mix(key, c);
  uint64_t w1 = c->w1;
  size_t size = SIZE_OF(w1);
  chunk_t *next = c->next;
  if (ANY(((tag_err(ac, c->w0) | tag_err(half1(ac), w1)) >> 48) |
          ((w1 & (USED | PUSED)) ^ PUSED) | (uintptr_t)c->prev |
          ((uintptr_t)next & 15) | (size > h->max_chunk) | (size < least)) ||
      (next && next->prev != c)) {
    heap_fault(h, "corrupted free chunk", payload(c));
    return false;
  }
  if (size < need) return false; /* the fallback bin's head is too small */
  chunk_t *n = chunk_at(c, size);
  uint64_t an = addr_mix(key, n), nw1 = n->w1;
  if (ANY(word_err(an, n->w0, size) | ((tag_err(half1(an), nw1) >> 48)) |
          ((nw1 & (USED | PUSED)) ^ USED))) {
    heap_fault(h, "corrupted chunk header", payload(n));
    return false;
  }
  f->c = c;
  f->n = n;
  f->size = size;
  f->idx = fl * CHUNK_SL_COUNT + sl;
  return true;
}

/* Make the free chunk c (size bytes, its successor n) a used chunk of need
 * bytes, the tail going back to the bins when it is big enough to be a
 * chunk. c is the head of bin idx when in_bin (a found fit: when the tail
 * falls in the same bin, as it does when small blocks are cut from a large
 * chunk one after another, it takes c's place with no bitmap to change),
 * else out of the bins with n's prev_size still to be set to size when
 * set_n0. pflag is c's PREV_IN_USE bit. */
static inline void *carve(chunk_heap_t *h, chunk_t *c, chunk_t *n, size_t size,
                          size_t need, uint64_t pflag, bool in_bin,
                          unsigned idx, bool set_n0) {
  uint64_t key = h->key;
  size_t rem = size - need;
  if (rem >= CHUNK_MIN) {
    chunk_t *r = chunk_at(c, need);
    unsigned ridx = bin_idx(rem);
    if (in_bin && ridx == idx) {
      bin_replace(h, c, r, idx);
    } else {
      if (in_bin) bin_unlink(h, c, idx);
      bin_link(h, r, ridx);
    }
    uint64_t ar = addr_mix(key, r);
    r->w0 = word_of(ar, need);
    store_w1(r, word_of(half1(ar), rem | PUSED));
    set_w0(key, n, rem);
    set_w1(key, c, need | USED | pflag);
    if (in_bin)
      h->free_bytes -= need;
    else
      h->free_bytes += rem;
    h->used_bytes += need;
  } else {
    if (in_bin) bin_unlink(h, c, idx);
    set_w1(key, c, size | USED | pflag);
    uint64_t an = addr_mix(key, n);
    if (set_n0) n->w0 = word_of(an, size);
    store_w1(n, word_of(half1(an), (n->w1 & FIELD) | PUSED));
    if (in_bin) h->free_bytes -= size;
    h->used_bytes += size;
  }
  h->used_count++;
  return payload(c);
}

/* ---- public API ---------------------------------------------------------- */

/* First levels a heap needs for chunks of up to max_chunk bytes. */
static unsigned levels_for(size_t max_chunk) {
  unsigned fl, sl;
  bin_of(max_chunk, &fl, &sl);
  return fl + 1 < CHUNK_FL_COUNT ? fl + 1 : CHUNK_FL_COUNT;
}

static size_t heap_bytes(unsigned levels) {
  size_t n =
      offsetof(chunk_heap_t, bins) + levels * sizeof(void *[CHUNK_SL_COUNT]);
  return (n + 15) & ~(size_t)15;
}

static void init_levels(chunk_heap_t *h, uint64_t key, unsigned levels) {
  memset(h, 0,
         offsetof(chunk_heap_t, bins) +
             levels * sizeof(void *[CHUNK_SL_COUNT]));
  h->key = key;
  h->fl_count = levels;
  h->limit = (size_t)1 << (levels + FL_OFFSET);
}

void chunk_heap_init(chunk_heap_t *h, uint64_t key) {
  init_levels(h, key, CHUNK_FL_COUNT);
}

size_t chunk_heap_size(size_t max_region) {
  size_t m = max_region > CHUNK_REGION_OVERHEAD
                 ? max_region - CHUNK_REGION_OVERHEAD
                 : 0;
  return heap_bytes(levels_for(m));
}

void chunk_heap_init_sized(chunk_heap_t *h, uint64_t key, size_t max_region) {
  size_t m = max_region > CHUNK_REGION_OVERHEAD
                 ? max_region - CHUNK_REGION_OVERHEAD
                 : 0;
  init_levels(h, key, levels_for(m));
}

void chunk_set_fault(chunk_heap_t *h, chunk_fault_fn fault) {
  h->fault = fault;
}

size_t chunk_add_region(chunk_heap_t *h, void *mem, size_t size) {
  if (((uintptr_t)mem & 15) || (size & 15) ||
      size < CHUNK_REGION_OVERHEAD + CHUNK_MIN ||
      size - CHUNK_REGION_OVERHEAD >= h->limit)
    return 0;
  uint64_t key = h->key;
  size_t s = size - CHUNK_REGION_OVERHEAD;
  chunk_t *fence = mem;
  chunk_t *c = chunk_at(mem, CHUNK_HEADER);
  chunk_t *end = chunk_at(mem, size - CHUNK_HEADER);
  set_w0(key, fence, 0);
  set_w1(key, fence, CHUNK_HEADER | USED | PUSED);
  set_w0(key, c, CHUNK_HEADER);
  set_w1(key, c, s | PUSED);
  set_w0(key, end, s);
  set_w1(key, end, USED);
  bin_insert(h, c, s);
  h->regions++;
  if (s > h->max_chunk) h->max_chunk = s;
  return s - CHUNK_HEADER;
}

bool chunk_region_empty(const chunk_heap_t *h, void *mem, size_t size) {
  const chunk_t *c = chunk_at(mem, CHUNK_HEADER);
  uint64_t w1 = c->w1;
  return w1_ok(h->key, c, w1) && !(w1 & USED) &&
         SIZE_OF(w1) == size - CHUNK_REGION_OVERHEAD;
}

void chunk_remove_region(chunk_heap_t *h, void *mem, size_t size) {
  chunk_t *c = chunk_at(mem, CHUNK_HEADER);
  size_t s = size - CHUNK_REGION_OVERHEAD;
  if (!chunk_region_empty(h, mem, size) || !w0_ok(h->key, c, c->w0) ||
      !links_ok(h, c, s)) {
    heap_fault(h, "removing a region that is in use", mem);
    return;
  }
  bin_remove(h, c, s);
  h->regions--;
}

void *chunk_malloc(chunk_heap_t *h, size_t size) {
  if (__builtin_expect(size > MAX_REQUEST, 0)) return NULL;
  size_t need = request_size(size);
  fit_t f;
  if (__builtin_expect(!find_fit(h, need, &f), 0)) return NULL;
  return carve(h, f.c, f.n, f.size, need, PUSED, true, f.idx, false);
}

void *chunk_memalign(chunk_heap_t *h, size_t alignment, size_t size) {
  if (alignment <= 16) return chunk_malloc(h, size);
  if ((alignment & (alignment - 1)) || alignment > MAX_CHUNK ||
      size > MAX_REQUEST)
    return NULL;
  size_t need = request_size(size);
  /* The aligned payload is at most alignment + 16 past the found payload:
   * a leading gap must itself be a chunk (>= CHUNK_MIN) or nothing. */
  size_t want = need + alignment + CHUNK_HEADER;
  if (want >= MAX_CHUNK) return NULL;
  fit_t f;
  if (!find_fit(h, want, &f)) return NULL;
  chunk_t *c = f.c;
  size_t got = f.size;
  uintptr_t p0 = (uintptr_t)payload(c);
  size_t gap = ((p0 + alignment - 1) & ~(uintptr_t)(alignment - 1)) - p0;
  if (gap && gap < CHUNK_MIN) gap += alignment;
  if (!gap) return carve(h, c, f.n, got, need, PUSED, true, f.idx, false);
  /* The found chunk's neighbours are in use (free chunks never touch), so
   * the leading gap becomes a free chunk of its own. */
  uint64_t key = h->key;
  chunk_t *ac = chunk_at(c, gap);
  unsigned gidx = bin_idx(gap);
  if (gidx != f.idx) {
    bin_unlink(h, c, f.idx);
    bin_link(h, c, gidx);
  }
  set_w1(key, c, gap | PUSED);
  set_w0(key, ac, gap);
  h->free_bytes -= got - gap;
  return carve(h, ac, f.n, got - gap, need, 0, false, 0, true);
}

/* A free's change once every check has passed, shared by chunk_free and
 * free_slow. Chunk c (size bytes) becomes free, merged with prev (psize
 * bytes, bin pidx) when that is free (else NULL) and with its successor n
 * (header word nw1) when n is free (nsize bytes, bin nidx; else 0), after
 * being the chunk that follows n. ac, an, ap, aa: addr_mix of c, n, prev,
 * after, as the caller's checks computed them. A chunk that stays in its bin
 * stays put in its list. */
typedef struct merge {
  chunk_t *c, *prev, *n, *after;
  size_t size, psize, nsize;
  uint64_t ac, ap, an, aa, nw1;
  unsigned pidx, nidx;
} merge_t;

static inline __attribute__((always_inline)) void free_merge(chunk_heap_t *h,
                                                             const merge_t *m) {
  h->used_bytes -= m->size;
  h->used_count--;
  h->free_bytes += m->size;
  size_t total = m->size + m->psize + m->nsize;
  unsigned tidx = bin_idx(total);
  if (m->prev) {
    /* Leave a stale but valid "free" header behind, so freeing p again is
     * reported as a double free rather than an invalid pointer. */
    store_w1(m->c, word_of(half1(m->ac), m->size));
    if (m->nsize) bin_unlink(h, m->n, m->nidx);
    if (tidx != m->pidx) {
      bin_unlink(h, m->prev, m->pidx);
      bin_link(h, m->prev, tidx);
    }
    store_w1(m->prev, word_of(half1(m->ap), total | PUSED));
  } else {
    if (m->nsize && tidx == m->nidx) {
      bin_replace(h, m->n, m->c, m->nidx);
    } else {
      if (m->nsize) bin_unlink(h, m->n, m->nidx);
      bin_link(h, m->c, tidx);
    }
    store_w1(m->c, word_of(half1(m->ac), total | PUSED));
  }
  if (m->nsize) {
    m->after->w0 = word_of(m->aa, total); /* its PREV_IN_USE is clear */
  } else {
    if (m->prev) m->n->w0 = word_of(m->an, total);
    store_w1(m->n, word_of(half1(m->an), (m->nw1 & FIELD) & ~(uint64_t)PUSED));
  }
}

/* chunk_free when its fast path's checks fail (or a neighbour's header has
 * flag bits it does not expect): every check again, in the order that
 * names the problem, then the free. */
static __attribute__((noinline, cold)) void free_slow(chunk_heap_t *h, void *p,
                                                      chunk_fault_fn fault) {
  used_view_t u;
  const char *what = validate_used(h, p, &u);
  const void *where = u.where;
  if (__builtin_expect(what != NULL, 0)) goto bad;

  chunk_t *c = u.c, *n = u.n, *prev = NULL, *after = n;
  size_t size = u.size, psize = 0, nsize = 0;
  uint64_t after_w1 = u.nw1;
  if (!(u.w1 & PUSED)) {
    psize = c->w0 & FIELD;
    if (psize < CHUNK_MIN || psize > h->max_chunk) {
      what = "corrupted chunk header";
      goto bad;
    }
    prev = chunk_before(c, psize);
    chunk_t *pafter; /* is c: prev's size came from c's own tag */
    uint64_t pafter_w1;
    what = validate_free_neighbour(h, prev, psize, &pafter, &pafter_w1, &where);
    if (__builtin_expect(what != NULL, 0)) goto bad;
  }
  if (!(u.nw1 & USED)) {
    nsize = SIZE_OF(u.nw1);
    if (nsize < CHUNK_MIN || nsize > h->max_chunk) {
      what = "corrupted chunk header";
      where = payload(n);
      goto bad;
    }
    what = validate_free_neighbour(h, n, nsize, &after, &after_w1, &where);
    if (__builtin_expect(what != NULL, 0)) goto bad;
  }

  /* Everything checked; now change things. */
  uint64_t key = h->key;
  merge_t m = {.c = c,
               .prev = prev,
               .n = n,
               .after = after,
               .size = size,
               .psize = psize,
               .nsize = nsize,
               .ac = addr_mix(key, c),
               .ap = prev ? addr_mix(key, prev) : 0,
               .an = addr_mix(key, n),
               .aa = nsize ? addr_mix(key, after) : 0,
               .nw1 = u.nw1,
               .pidx = prev ? bin_idx(psize) : 0,
               .nidx = nsize ? bin_idx(nsize) : 0};
  free_merge(h, &m);
  return;

bad:
  if (fault) fault(what, where);
}

/* The common case in one pass: the checks of validate_used and
 * validate_free_neighbour (less those the chunk's own verified header
 * already vouches for: the predecessor's successor is p's chunk, the free
 * successor was checked as p's successor), their results ORed and tested
 * once before each dependent read; anything that fails goes to free_slow,
 * which checks again and names the problem. */
void chunk_free(chunk_heap_t *h, void *p, chunk_fault_fn fault) {
  uintptr_t pa = (uintptr_t)p;
  if (__builtin_expect((pa & 15) != 0 || pa < 4096, 0)) {
    if (p) free_slow(h, p, fault);
    return;
  }
  uint64_t key = h->key;
  size_t maxc = h->max_chunk;
  chunk_t *c = chunk_of(p);
  uint64_t w0 = c->w0, w1 = c->w1, ac = addr_mix(key, c);
  size_t size = SIZE_OF(w1);
  if (ANY(((tag_err(ac, w0) | tag_err(half1(ac), w1)) >> 48) | (~w1 & USED) |
          (size < CHUNK_MIN) | (size > maxc)))
    goto slow;

  chunk_t *n = chunk_at(c, size), *prev = NULL;
  uint64_t nw1 = n->w1, an = addr_mix(key, n), ap = 0;
  uint64_t err = word_err(an, n->w0, size) | (tag_err(half1(an), nw1) >> 48) |
                 (~nw1 & PUSED);
  size_t psize = 0;
  unsigned pidx = 0;
  if (!(w1 & PUSED)) {
    psize = w0 & FIELD;
    if (ANY((psize < CHUNK_MIN) | (psize > maxc))) goto slow;
    prev = chunk_before(c, psize);
    ap = addr_mix(key, prev);
    pidx = bin_idx(psize);
    err |= word_err(half1(ap), prev->w1, psize | PUSED) |
           (tag_err(ap, prev->w0) >> 48);
    if (!err && !links_ok_at(h, prev, pidx)) err = 1;
  }
  if (ANY(err)) goto slow;

  chunk_t *after = n;
  size_t nsize = 0;
  unsigned nidx = 0;
  uint64_t aa = 0;
  if (!(nw1 & USED)) {
    nsize = SIZE_OF(nw1);
    if (ANY((nsize < CHUNK_MIN) | (nsize > maxc))) goto slow;
    after = chunk_at(n, nsize);
    aa = addr_mix(key, after);
    uint64_t aw1 = after->w1;
    nidx = bin_idx(nsize);
    if (ANY(word_err(aa, after->w0, nsize) | (tag_err(half1(aa), aw1) >> 48) |
            ((aw1 & (USED | PUSED)) ^ USED)) ||
        !links_ok_at(h, n, nidx))
      goto slow;
  }

  /* Everything checked; now change things. */
  merge_t m = {.c = c,
               .prev = prev,
               .n = n,
               .after = after,
               .size = size,
               .psize = psize,
               .nsize = nsize,
               .ac = ac,
               .ap = ap,
               .an = an,
               .aa = aa,
               .nw1 = nw1,
               .pidx = pidx,
               .nidx = nidx};
  free_merge(h, &m);
  return;

slow:
  free_slow(h, p, fault);
}

/* validate_used's checks, combined as in chunk_free: realloc asks this of
 * every medium block it is given. */
bool chunk_is_live(const chunk_heap_t *h, const void *p) {
  uintptr_t pa = (uintptr_t)p;
  if ((pa & 15) != 0 || pa < 4096) return false;
  uint64_t key = h->key;
  const chunk_t *c = chunk_of(p);
  uint64_t w0 = c->w0, w1 = c->w1, ac = addr_mix(key, c);
  size_t size = SIZE_OF(w1);
  if (ANY(((tag_err(ac, w0) | tag_err(half1(ac), w1)) >> 48) | (~w1 & USED) |
          (size < CHUNK_MIN) | (size > h->max_chunk)))
    return false;
  const chunk_t *n = chunk_at(c, size);
  uint64_t nw1 = n->w1, an = addr_mix(key, n);
  return !(word_err(an, n->w0, size) | (tag_err(half1(an), nw1) >> 48) |
           (~nw1 & PUSED));
}

bool chunk_resize_in_place(chunk_heap_t *h, void *p, size_t size) {
  uint64_t key = h->key;
  used_view_t u;
  const char *what = validate_used(h, p, &u);
  if (what) {
    heap_fault(h, what, u.where);
    return false;
  }
  if (size > MAX_REQUEST) return false;
  size_t need = request_size(size), cur = u.size;
  uint64_t pflag = u.w1 & PUSED;
  chunk_t *c = u.c, *n = u.n;
  bool next_free = !(u.nw1 & USED);
  size_t nsize = next_free ? SIZE_OF(u.nw1) : 0;
  chunk_t *after = NULL;
  uint64_t after_w1 = 0;

  if (need <= cur) {
    size_t rem = cur - need;
    if (rem == 0 || (!next_free && rem < CHUNK_MIN)) return true;
    chunk_t *t = chunk_at(c, need);
    if (next_free) {
      /* Move the boundary: the freed tail joins the free neighbour. */
      const void *where;
      what = validate_free_neighbour(h, n, nsize, &after, &after_w1, &where);
      if (what) {
        heap_fault(h, what, where);
        return false;
      }
      bin_remove(h, n, nsize);
      set_w0(key, after, rem + nsize);
      rem += nsize;
    } else {
      set_w0(key, n, rem);
      set_w1(key, n, (u.nw1 & FIELD) & ~(uint64_t)PUSED);
    }
    set_w1(key, c, need | USED | pflag);
    set_w0(key, t, need);
    set_w1(key, t, rem | PUSED);
    bin_insert(h, t, rem);
    h->used_bytes -= cur - need;
    return true;
  }

  if (!next_free || cur + nsize < need) return false;
  const void *where;
  what = validate_free_neighbour(h, n, nsize, &after, &after_w1, &where);
  if (what) {
    heap_fault(h, what, where);
    return false;
  }
  bin_remove(h, n, nsize);
  /* n's header is now inside the payload: make sure it no longer looks like
   * a chunk, so an interior free there is reported as an invalid pointer. */
  n->w0 = 0;
  n->w1 = 0;
  size_t total = cur + nsize, rem = total - need;
  if (rem >= CHUNK_MIN) {
    chunk_t *t = chunk_at(c, need);
    set_w1(key, c, need | USED | pflag);
    set_w0(key, t, need);
    set_w1(key, t, rem | PUSED);
    set_w0(key, after, rem);
    bin_insert(h, t, rem);
    h->used_bytes += need - cur;
  } else {
    set_w1(key, c, total | USED | pflag);
    set_w0(key, after, total);
    set_w1(key, after, (after_w1 & FIELD) | PUSED);
    h->used_bytes += total - cur;
  }
  return true;
}

int chunk_walk_region(void *mem, size_t size, chunk_visit_fn visit, void *arg) {
  uintptr_t c = (uintptr_t)mem + CHUNK_HEADER;
  uintptr_t end = (uintptr_t)mem + size - CHUNK_HEADER;
  while (c < end) {
    uint64_t w1 = ((const chunk_t *)c)->w1;
    size_t s = SIZE_OF(w1);
    if (s < CHUNK_MIN || s > end - c) return -1;
    int r = visit((void *)(c + CHUNK_HEADER), s - CHUNK_HEADER,
                  (w1 & USED) != 0, arg);
    if (r) return r;
    c += s;
  }
  return c == end ? 0 : -1;
}

size_t chunk_largest_free(const chunk_heap_t *h) {
  if (!h->fl_bitmap) return 0;
  unsigned fl = 63u - (unsigned)__builtin_clzll(h->fl_bitmap);
  if (fl >= h->fl_count || !h->sl_bitmap[fl]) return 0; /* corrupt */
  unsigned sl = 31u - (unsigned)__builtin_clz(h->sl_bitmap[fl]);
  return bin_floor(fl, sl) - CHUNK_HEADER;
}

void chunk_heap_absorb(chunk_heap_t *into, chunk_heap_t *from) {
  if (into->fl_count < from->fl_count) {
    heap_fault(into, "absorbing a heap with more bin rows", from);
    return;
  }
  for (unsigned fl = 0; fl < from->fl_count; fl++) {
    for (unsigned sl = 0; sl < CHUNK_SL_COUNT; sl++) {
      chunk_t *c = from->bins[fl][sl];
      while (c) {
        chunk_t *next = c->next;
        bin_insert(into, c, SIZE_OF(c->w1));
        c = next;
      }
    }
  }
  into->used_bytes += from->used_bytes;
  into->used_count += from->used_count;
  into->regions += from->regions;
  if (from->max_chunk > into->max_chunk) into->max_chunk = from->max_chunk;
  uint64_t key = from->key;
  chunk_fault_fn fault = from->fault;
  init_levels(from, key, from->fl_count);
  from->fault = fault;
}

/* ---- consistency check ------------------------------------------------- */

typedef struct check_ctx {
  const chunk_heap_t *h;
  void *const *regions;
  const size_t *sizes;
  size_t nregions;
  chunk_fault_fn fault;
} check_ctx_t;

static bool fail(const check_ctx_t *x, const char *what, const void *addr) {
  if (x->fault) x->fault(what, addr);
  return false;
}

/* c is a plausible chunk address inside one of the listed regions. */
static bool in_regions(const check_ctx_t *x, const void *c) {
  uintptr_t a = (uintptr_t)c;
  if (a & 15) return false;
  for (size_t i = 0; i < x->nregions; i++) {
    uintptr_t lo = (uintptr_t)x->regions[i] + CHUNK_HEADER;
    uintptr_t hi = (uintptr_t)x->regions[i] + x->sizes[i] - CHUNK_HEADER;
    if (a >= lo && a + CHUNK_MIN <= hi) return true;
  }
  return false;
}

static bool check_bins(const check_ctx_t *x, size_t walked_free) {
  const chunk_heap_t *h = x->h;
  uint64_t key = h->key;
  size_t listed = 0;
  if (h->fl_bitmap >> (h->fl_count - 1) >> 1)
    return fail(x, "first-level bitmap has bits past the last level", h);
  for (unsigned fl = 0; fl < h->fl_count; fl++) {
    uint32_t sb = h->sl_bitmap[fl];
    if (sb >> (CHUNK_SL_COUNT - 1) >> 1)
      return fail(x, "second-level bitmap has bits past the last bin", h);
    if (!!sb != ((h->fl_bitmap >> fl) & 1))
      return fail(x, "first-level bitmap disagrees with second level", h);
    for (unsigned sl = 0; sl < CHUNK_SL_COUNT; sl++) {
      const chunk_t *c = h->bins[fl][sl], *prev = NULL;
      if (!!c != ((sb >> sl) & 1))
        return fail(x, "second-level bitmap disagrees with its bin", h);
      for (; c; prev = c, c = c->next) {
        if (++listed > walked_free)
          return fail(x, "more chunks in the bins than free chunks", c);
        if (!in_regions(x, c))
          return fail(x, "bin entry outside every region", c);
        uint64_t w1 = c->w1;
        if (!w0_ok(key, c, c->w0) || !w1_ok(key, c, w1))
          return fail(x, "corrupted chunk header", payload(c));
        if (w1 & USED) return fail(x, "used chunk in a bin", payload(c));
        unsigned f, s;
        bin_of(SIZE_OF(w1), &f, &s);
        if (f != fl || s != sl)
          return fail(x, "free chunk in the wrong bin", payload(c));
        if (c->prev != prev)
          return fail(x, "free list back link wrong", payload(c));
      }
    }
  }
  for (unsigned fl = h->fl_count; fl < CHUNK_FL_COUNT; fl++)
    if (h->sl_bitmap[fl])
      return fail(x, "second-level bitmap set for a level with no bins", h);
  if (listed != walked_free)
    return fail(x, "free chunk missing from the bins", h);
  return true;
}

bool chunk_check(const chunk_heap_t *h, void *const *regions,
                 const size_t *sizes, size_t nregions, chunk_fault_fn fault) {
  check_ctx_t x = {h, regions, sizes, nregions, fault};
  uint64_t key = h->key;
  size_t free_bytes = 0, used_bytes = 0, used_count = 0, free_count = 0;
  /* not set up yet (allot's heaps set theirs up with their first region):
   * all zero, or it has been written to */
  if (h->fl_count == 0 && nregions == 0 && !h->fl_bitmap && !h->limit &&
      !h->free_bytes && !h->used_bytes && !h->used_count && !h->regions)
    return true;
  /* the table's size first: every other read of a row depends on it */
  if (h->fl_count == 0 || h->fl_count > CHUNK_FL_COUNT ||
      h->limit != (size_t)1 << (h->fl_count + FL_OFFSET))
    return fail(&x, "bin table size corrupted", h);
  if (nregions != h->regions)
    return fail(&x, "region count differs from the heap's", h);
  for (size_t i = 0; i < nregions; i++) {
    void *mem = regions[i];
    size_t size = sizes[i];
    if (((uintptr_t)mem & 15) || (size & 15) ||
        size < CHUNK_REGION_OVERHEAD + CHUNK_MIN ||
        size - CHUNK_REGION_OVERHEAD >= h->limit)
      return fail(&x, "bad region bounds", mem);
    const chunk_t *fence = mem;
    if (!w0_ok(key, fence, fence->w0) || !w1_ok(key, fence, fence->w1) ||
        (fence->w1 & FIELD) != (CHUNK_HEADER | USED | PUSED))
      return fail(&x, "corrupted region fence", mem);
    uintptr_t c = (uintptr_t)mem + CHUNK_HEADER;
    uintptr_t end = (uintptr_t)mem + size - CHUNK_HEADER;
    size_t prev_size = CHUNK_HEADER;
    bool prev_used = true;
    while (c < end) {
      const chunk_t *ch = (const chunk_t *)c;
      uint64_t w0 = ch->w0, w1 = ch->w1;
      if (!w0_ok(key, ch, w0) || !w1_ok(key, ch, w1))
        return fail(&x, "corrupted chunk header", payload(ch));
      size_t s = SIZE_OF(w1);
      if (s < CHUNK_MIN || s > end - c)
        return fail(&x, "chunk size outside its region", payload(ch));
      if ((w0 & FIELD) != prev_size)
        return fail(&x, "prev_size disagrees with the previous chunk",
                    payload(ch));
      if (!!(w1 & PUSED) != prev_used)
        return fail(&x, "PREV_IN_USE flag wrong", payload(ch));
      bool used = w1 & USED;
      if (!used && !prev_used)
        return fail(&x, "two adjacent free chunks", payload(ch));
      if (used) {
        used_bytes += s;
        used_count++;
      } else {
        free_bytes += s;
        free_count++;
      }
      prev_size = s;
      prev_used = used;
      c += s;
    }
    const chunk_t *e = (const chunk_t *)end;
    if (c != end || !w0_ok(key, e, e->w0) || !w1_ok(key, e, e->w1) ||
        (e->w0 & FIELD) != prev_size ||
        (e->w1 & FIELD) != (USED | (prev_used ? PUSED : 0)))
      return fail(&x, "corrupted region end marker", e);
  }
  if (!check_bins(&x, free_count)) return false;
  /* The bins are sound and hold free_count chunks; now every free chunk of
   * the walk must be among them. */
  for (size_t i = 0; i < nregions; i++) {
    uintptr_t c = (uintptr_t)regions[i] + CHUNK_HEADER;
    uintptr_t end = (uintptr_t)regions[i] + sizes[i] - CHUNK_HEADER;
    for (; c < end; c += SIZE_OF(((const chunk_t *)c)->w1)) {
      const chunk_t *ch = (const chunk_t *)c;
      if (ch->w1 & USED) continue;
      unsigned fl, sl;
      bin_of(SIZE_OF(ch->w1), &fl, &sl);
      const chunk_t *e = h->bins[fl][sl];
      while (e && e != ch)
        e = e->next;
      if (!e) return fail(&x, "free chunk not in its bin", payload(ch));
    }
  }
  if (free_bytes != h->free_bytes) return fail(&x, "free byte count wrong", h);
  if (used_bytes != h->used_bytes) return fail(&x, "used byte count wrong", h);
  if (used_count != h->used_count) return fail(&x, "used chunk count wrong", h);
  return true;
}
