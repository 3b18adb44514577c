/* secure.c: secure mode's changes to the layout of memory (ALLOT_SECURE=1).
 *
 * Owns the guard pages of small and medium segments, the guard regions
 * around large blocks, the random order in which a small page's blocks are
 * handed out, and the thread-local random numbers behind it. The layers call
 * in here only when g.secure is set (fixed at start-up), so the default mode
 * pays one predictable branch in slow paths and nothing on the fast paths.
 * Canaries, the quarantine and zeroing are per block and live in checked.c.
 *
 * Guards cost address space and mappings, not memory: a small segment gets
 * a PROT_NONE tail on page 0 (below the first page of blocks) and on each
 * page in use, so a linear overflow or underflow out of a page faults; each
 * page loses one OS page of blocks to it. A medium segment's region ends one
 * OS page early, before a guard. A large block sits between two reserved,
 * never committed regions of GUARD bytes. Each guard is a kernel mapping:
 * the kernel's limit (vm.max_map_count, 65530 by default) caps a secure
 * heap at about 2 GiB of small pages in use; past it guards are skipped. */
#include "internal.h"

#include <sys/mman.h>

#define GUARD ((size_t)1 << 20) /* around large blocks: >= 1 MiB */

/* Bytes of page 0 that the segment header may use; the rest is a guard. */
#define HEADER_SPAN                                                            \
  (((sizeof(segment_t) + OS_PAGE - 1) / OS_PAGE) * (size_t)OS_PAGE)
_Static_assert(HEADER_SPAN < PAGE_SIZE, "page 0 has room for a guard");

/* ---- random numbers (xorshift64*, per thread, seeded from the OS) ------ */
static __thread uint64_t rng_state;

static uint64_t rng_next(void) {
  uint64_t x = rng_state;
  if (unlikely(x == 0)) x = os_random_seed() | 1;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, n), n > 0 (multiply-shift: no division, bias < 2^-32). */
static uint32_t rng_below(uint32_t n) {
  return (uint32_t)(((rng_next() >> 32) * (uint64_t)n) >> 32);
}

uint32_t secure_random_below(uint32_t n) {
  return rng_below(n);
}

/* Guards are best effort: the kernel's limit on mappings (vm.max_map_count)
 * can refuse them, and a missing guard is weaker, not wrong. Restoring
 * access is not optional, and needs no stats: the memory stays counted as
 * mapped. */
static void protect_rw(void *p, size_t size) {
  if (mprotect(p, size, PROT_READ | PROT_WRITE) != 0)
    fault("malloc", "cannot make a guard page accessible again", p);
}

/* A segment fresh from the OS or from the segment cache, where it may have
 * served the other kind. Page 0's tail guards the first page of blocks from
 * below; each page of a small segment gets its own guard when it is carved
 * (secure_page_extend), so only pages in use cost mappings; a medium region
 * ends one OS page early, before a guard. */
void secure_segment_init(segment_t *s) {
  uint8_t *base = (uint8_t *)s;
  os_protect_none(base + HEADER_SPAN, PAGE_SIZE - HEADER_SPAN);
  if (s->kind == SEG_MEDIUM) {
    protect_rw(base + PAGE_SIZE, SEG_SIZE - PAGE_SIZE - OS_PAGE);
    os_protect_none(base + SEG_SIZE - OS_PAGE, OS_PAGE);
    s->region_size = SEG_SIZE - PAGE_SIZE - OS_PAGE;
  }
}

/* A random permutation of [0, n) for n <= 2^16 without a table: a
 * four-round Feistel network over the smallest even number of bits that
 * covers n, with random round keys, walking the cycle past values >= n. */
typedef struct perm {
  uint32_t half, mask, n;
  uint32_t key[4];
} perm_t;

static void perm_init(perm_t *pm, uint32_t n) {
  uint32_t bits = 2;
  while (((uint32_t)1 << bits) < n)
    bits += 2;
  pm->half = bits / 2;
  pm->mask = ((uint32_t)1 << pm->half) - 1;
  pm->n = n;
  uint64_t r = rng_next(), r2 = rng_next();
  pm->key[0] = (uint32_t)r;
  pm->key[1] = (uint32_t)(r >> 32);
  pm->key[2] = (uint32_t)r2;
  pm->key[3] = (uint32_t)(r2 >> 32);
}

static uint32_t perm_round(uint32_t x, uint32_t k) {
  x = (x ^ k) * 0x9E3779B1u;
  return x ^ (x >> 15);
}

static uint32_t perm_at(const perm_t *pm, uint32_t x) {
  do {
    uint32_t l = x >> pm->half, r = x & pm->mask;
    for (int i = 0; i < 4; i++) {
      uint32_t t = l ^ (perm_round(r, pm->key[i]) & pm->mask);
      l = r;
      r = t;
    }
    x = l << pm->half | r;
  } while (x >= pm->n);
  return x;
}

/* Carve the page's next blocks into its free list, about one OS page of
 * them at a time as page.c does (memory becomes resident only as it is
 * used), in random order, so neighbours in memory are not neighbours in
 * time. The first carving also sets the page's guards: its last OS page,
 * which page_init left out of the blocks, and the one below it. */
void secure_page_extend(page_t *pg) {
  uint32_t n = pg->reserved - pg->capacity;
  uint32_t step = OS_PAGE / pg->bsize;
  if (step < 8) step = 8;
  if (n > step) n = step;
  if (n == 0) return;
  segment_t *s = segment_of(pg);
  uint8_t *start = page_start(s, pg);
  if (pg->capacity == 0) {
    /* best effort. The page below may be unused: its last OS page is never
     * a block in secure mode, so it can be the guard under this one now. */
    os_protect_none(start + PAGE_SIZE - OS_PAGE, OS_PAGE);
    if (pg != &s->pages[1]) os_protect_none(start - OS_PAGE, OS_PAGE);
  }
  uint8_t *first = start + (size_t)pg->capacity * pg->bsize;
  /* free blocks are zero in secure mode (checked.c relies on it); the page
   * may have held another class */
  memset(first, 0, (size_t)n * pg->bsize);
  perm_t pm;
  perm_init(&pm, n);
  block_t *next = pg->free;
  for (uint32_t i = n; i-- > 0;) {
    block_t *b = (block_t *)(first + (size_t)perm_at(&pm, i) * pg->bsize);
    b->next = link_encode(next, b);
    b->mark = free_mark(b);
    next = b;
  }
  pg->free = next;
  page_set_capacity(pg, pg->capacity + n);
  segment_count_carved(s, (size_t)n * pg->bsize);
}

/* A large block's mapping with GUARD bytes reserved before and after it.
 * The segment start is SEG_SIZE-aligned, and when align > SEG_SIZE the user
 * pointer (SEG_SIZE past it) is align-aligned, as large.c expects. */
segment_t *secure_large_map(size_t map_size, size_t align) {
  size_t extra = align > SEG_SIZE ? align : SEG_SIZE;
  size_t total = GUARD + extra + map_size + GUARD;
  if (total < map_size) return NULL;
  uint8_t *raw = os_reserve_aligned(total, OS_PAGE);
  if (!raw) return NULL;
  uintptr_t s;
  if (align > SEG_SIZE)
    s = (((uintptr_t)raw + GUARD + SEG_SIZE + align - 1) & ~(align - 1)) -
        SEG_SIZE;
  else
    s = ((uintptr_t)raw + GUARD + SEG_MASK) & ~(uintptr_t)SEG_MASK;
  uint8_t *lo = (uint8_t *)(s - GUARD);
  uint8_t *hi = (uint8_t *)(s + map_size + GUARD);
  os_unreserve(raw, (size_t)(lo - raw));
  os_unreserve(hi, (size_t)(raw + total - hi));
  if (!os_commit((void *)s, map_size)) {
    os_unreserve(lo, (size_t)(hi - lo));
    return NULL;
  }
  return (segment_t *)s;
}

void secure_large_unmap(segment_t *s) {
  uint8_t *base = (uint8_t *)s;
  size_t size = s->map_size; /* the header goes with the mapping */
  os_unmap(base, size);
  os_unreserve(base - GUARD, GUARD);
  os_unreserve(base + size, GUARD);
}

/* Pick a random block among the first few of its page's free list instead
 * of b (just popped from that page), so the order of allocation does not
 * follow the order of frees either. The caller owns the page. The blocks
 * looked at are checked as page_take checks a link, and more: each must be a
 * block of the page and still carry its free mark, so a stray write into
 * the first bytes of a free block (an overflow that skipped the canaries of
 * the block below) is caught before that block is handed out. */
#define PICK_WINDOW 4

static void check_free_block(page_t *pg, block_t *c, block_t *from) {
  if (((uintptr_t)c ^ (uintptr_t)from) >> PAGE_SHIFT || !page_is_block(pg, c))
    fault("malloc", "corrupted free list", from);
  if (c->mark != free_mark(c))
    fault("malloc", "write to a free block (its free mark was overwritten)", c);
}

void *secure_pick(void *bp) {
  block_t *b = bp;
  segment_t *s = segment_of(b);
  page_t *pg = page_of(s, b);
  uint32_t depth = rng_below(PICK_WINDOW);
  /* walk the next blocks (1 = the head), remembering the depth-th and its
   * link's owner */
  block_t *prev = NULL, *c = NULL, *at = pg->free, *before = NULL;
  for (uint32_t k = 1; k < PICK_WINDOW && at; k++) {
    check_free_block(pg, at, b);
    if (k == depth) {
      prev = before;
      c = at;
    }
    before = at;
    at = link_decode(at->next, at);
  }
  if (!c) return b;
  block_t *after = link_decode(c->next, c);
  /* b takes c's place in the list; c goes to the caller */
  b->next = link_encode(after, b);
  b->mark = free_mark(b);
  if (prev)
    prev->next = link_encode(b, prev);
  else
    pg->free = b;
  c->mark = 0;
  return c;
}
