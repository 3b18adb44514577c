/* test_chunk.c: tests of the boundary-tag chunk heap (src/chunk.c) on its
 * own, in buffers the test owns: splitting and merging, the region walk
 * against a model of what was allocated, randomised operations with payload
 * checks in buffers from 4 KiB to 1 GiB (each heap with only the bin rows
 * its region needs, in exactly its bytes), fault detection, exhaustion, and
 * a timing report (printed, never asserted).
 *
 *   test_chunk            all tests, with a short timing run
 *   test_chunk --timing   only the timing run, longer */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "chunk.h"

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define GIB ((size_t)1 << 30)

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
  uint64_t x = rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545F4914F6CDD1Dull;
}
/* Roughly log-uniform in [0, max]. */
static size_t rnd_size(size_t max) {
  unsigned bits = 64u - (unsigned)__builtin_clzll(max | 1);
  size_t s = rnd() & (((size_t)1 << (rnd() % (bits + 1))) - 1);
  return s > max ? max : s;
}

static void *map(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  CHECK(p != MAP_FAILED);
  return p;
}

/* Mirrors of the heap's size rules, to predict its answers. */
static size_t chunk_need(size_t size) {
  size_t n = (size + CHUNK_HEADER + 15) & ~(size_t)15;
  return n < CHUNK_MIN ? CHUNK_MIN : n;
}
static size_t bin_floor_of(size_t chunk) {
  if (chunk < (1u << (CHUNK_SL_LOG2 + 4))) return chunk;
  unsigned b = 63u - (unsigned)__builtin_clzll(chunk);
  return chunk & ~(((size_t)1 << (b - CHUNK_SL_LOG2)) - 1);
}

/* ---- fault capture -------------------------------------------------------
 */

static jmp_buf fault_jb;
static int fault_armed; /* longjmp back when set */
static int fault_hits;  /* faults seen since reset */
static const char *fault_what;
static const void *fault_addr;

static void on_fault(const char *what, const void *addr) {
  fault_hits++;
  fault_what = what;
  fault_addr = addr;
  if (fault_armed) {
    fault_armed = 0;
    longjmp(fault_jb, 1);
  }
  fprintf(stderr, "unexpected fault: %s at %p\n", what, addr);
  exit(1);
}
/* chunk_check's handler may return: record only. */
static void record_fault(const char *what, const void *addr) {
  fault_hits++;
  fault_what = what;
  fault_addr = addr;
}

/* Run stmt expecting exactly one fault with the given what and addr. */
#define EXPECT_FAULT(stmt, WHAT, ADDR)                                         \
  do {                                                                         \
    fault_hits = 0;                                                            \
    fault_what = NULL;                                                         \
    fault_addr = NULL;                                                         \
    fault_armed = 1;                                                           \
    if (!setjmp(fault_jb)) {                                                   \
      stmt;                                                                    \
    }                                                                          \
    fault_armed = 0;                                                           \
    if (fault_hits != 1 || !fault_what || strcmp(fault_what, WHAT) ||          \
        fault_addr != (const void *)(ADDR)) {                                  \
      fprintf(stderr,                                                          \
              "%s:%d: expected fault \"%s\" at %p, got %d: %s at %p\n",        \
              __FILE__, __LINE__, WHAT, (const void *)(ADDR), fault_hits,      \
              fault_what ? fault_what : "(none)", fault_addr);                 \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

/* ---- a heap under test and its model ---------------------------------------
 */

#define MAX_REGIONS 8

typedef struct blk {
  uint8_t *p;
  size_t size;
  uint32_t seed;
} blk_t;

typedef struct arena {
  chunk_heap_t *hp; /* malloc'd at its exact size: overreads are caught */
  void *reg[MAX_REGIONS];
  size_t rsz[MAX_REGIONS];
  int mapped[MAX_REGIONS];
  int nreg;
  blk_t *blk;
  size_t nblk, cap;
} arena_t;

/* A heap with every bin row (as the medium heaps have). */
static void arena_init(arena_t *a, uint64_t key) {
  memset(a, 0, sizeof *a);
  a->hp = malloc(sizeof *a->hp);
  CHECK(a->hp);
  chunk_heap_init(a->hp, key);
  chunk_set_fault(a->hp, on_fault);
}

/* A heap with only the bin rows regions up to max_region need (as a heap in
 * a caller's buffer has), in exactly chunk_heap_size() bytes. */
static void arena_init_sized(arena_t *a, uint64_t key, size_t max_region) {
  memset(a, 0, sizeof *a);
  size_t bytes = chunk_heap_size(max_region);
  CHECK(bytes % 16 == 0 && bytes <= sizeof(chunk_heap_t));
  a->hp = malloc(bytes);
  CHECK(a->hp);
  chunk_heap_init_sized(a->hp, key, max_region);
  chunk_set_fault(a->hp, on_fault);
}

static void arena_add(arena_t *a, size_t size) {
  CHECK(a->nreg < MAX_REGIONS);
  void *mem;
  int mapped = size >= 64 * KIB;
  if (mapped) {
    mem = map(size);
  } else {
    mem = aligned_alloc(16, size);
    CHECK(mem);
  }
  size_t payload = chunk_add_region(a->hp, mem, size);
  CHECK(payload == size - CHUNK_REGION_OVERHEAD - CHUNK_HEADER);
  CHECK(chunk_region_empty(a->hp, mem, size));
  CHECK(chunk_usable_size((char *)mem + 2 * CHUNK_HEADER) == payload);
  a->reg[a->nreg] = mem;
  a->rsz[a->nreg] = size;
  a->mapped[a->nreg] = mapped;
  a->nreg++;
}

static void arena_destroy(arena_t *a) {
  for (int i = 0; i < a->nreg; i++) {
    CHECK(chunk_region_empty(a->hp, a->reg[i], a->rsz[i]));
    chunk_remove_region(a->hp, a->reg[i], a->rsz[i]);
    if (a->mapped[i])
      munmap(a->reg[i], a->rsz[i]);
    else
      free(a->reg[i]);
  }
  CHECK(a->hp->regions == 0 && a->hp->free_bytes == 0 &&
        a->hp->used_bytes == 0 && a->hp->used_count == 0 &&
        a->hp->fl_bitmap == 0);
  free(a->blk);
  free(a->hp);
}

/* Pattern bytes: the first FILL_HEAD and last FILL_TAIL bytes of a block
 * (all of a small one), so 1 GiB blocks stay cheap and mostly untouched. */
#define FILL_HEAD 1024
#define FILL_TAIL 256
static uint8_t pat(uint32_t seed, size_t i) {
  return (uint8_t)((seed ^ (i * 0x9Du)) + (i >> 8));
}
static int filled(size_t size, size_t i) {
  return i < FILL_HEAD || i + FILL_TAIL >= size;
}
static void fill(blk_t *b) {
  size_t head = b->size < FILL_HEAD ? b->size : FILL_HEAD;
  for (size_t i = 0; i < head; i++)
    b->p[i] = pat(b->seed, i);
  size_t t = b->size > FILL_TAIL ? b->size - FILL_TAIL : 0;
  for (size_t i = t > head ? t : head; i < b->size; i++)
    b->p[i] = pat(b->seed, i);
}
/* Bytes [0, limit) that fill() wrote for size must still be there. */
static void verify(const blk_t *b, size_t size, size_t limit) {
  for (size_t i = 0; i < limit; i++) {
    if (!filled(size, i)) {
      size_t t = size > FILL_TAIL ? size - FILL_TAIL : 0;
      if (t > i) i = t - 1;
      continue;
    }
    if (b->p[i] != pat(b->seed, i)) {
      fprintf(stderr, "block %p (size %zu): byte %zu overwritten\n",
              (void *)b->p, size, i);
      exit(1);
    }
  }
}

static void add_blk(arena_t *a, void *p, size_t size) {
  if (a->nblk == a->cap) {
    a->cap = a->cap ? 2 * a->cap : 64;
    a->blk = realloc(a->blk, a->cap * sizeof *a->blk);
    CHECK(a->blk);
  }
  blk_t *b = &a->blk[a->nblk++];
  b->p = p;
  b->size = size;
  b->seed = (uint32_t)rnd();
  fill(b);
}
static void del_blk(arena_t *a, size_t i) {
  a->blk[i] = a->blk[--a->nblk];
}

/* The walk of every region, as a flat list. */
typedef struct entry {
  uint8_t *p;
  size_t size;
  bool used;
} entry_t;
typedef struct walk {
  entry_t *e;
  size_t n, cap;
} walk_t;

static int collect(void *payload, size_t size, bool used, void *arg) {
  walk_t *w = arg;
  if (w->n == w->cap) {
    w->cap = w->cap ? 2 * w->cap : 256;
    w->e = realloc(w->e, w->cap * sizeof *w->e);
    CHECK(w->e);
  }
  w->e[w->n++] = (entry_t){payload, size, used};
  return 0;
}

static int cmp_blk(const void *x, const void *y) {
  const blk_t *a = x, *b = y;
  return a->p < b->p ? -1 : a->p > b->p;
}

static void check_heap(arena_t *a) {
  fault_hits = 0;
  bool ok = chunk_check(a->hp, a->reg, a->rsz, (size_t)a->nreg, record_fault);
  if (!ok || fault_hits) {
    fprintf(stderr, "chunk_check: %s at %p\n", fault_what, fault_addr);
    exit(1);
  }
}

/* Cross-check the walk against the model: every used chunk is a block the
 * test holds, at its address, big enough; free chunks never touch; sizes
 * tile each region; the statistics agree. Returns the largest free chunk. */
static size_t check_walk(arena_t *a) {
  walk_t w = {0};
  size_t used_bytes = 0, free_bytes = 0, largest = 0;
  for (int r = 0; r < a->nreg; r++) {
    size_t first = w.n, sum = 0;
    CHECK(chunk_walk_region(a->reg[r], a->rsz[r], collect, &w) == 0);
    CHECK(w.n > first);
    CHECK(w.e[first].p == (uint8_t *)a->reg[r] + 2 * CHUNK_HEADER);
    for (size_t i = first; i < w.n; i++) {
      entry_t *e = &w.e[i];
      sum += e->size + CHUNK_HEADER;
      CHECK(chunk_usable_size(e->p) == e->size);
      if (i > first) {
        CHECK(e->p == w.e[i - 1].p + w.e[i - 1].size + CHUNK_HEADER);
        CHECK(e->used || w.e[i - 1].used);
      }
      if (e->used) {
        used_bytes += e->size + CHUNK_HEADER;
        CHECK(chunk_is_live(a->hp, e->p));
      } else {
        free_bytes += e->size + CHUNK_HEADER;
        if (e->size + CHUNK_HEADER > largest) largest = e->size + CHUNK_HEADER;
        CHECK(!chunk_is_live(a->hp, e->p));
      }
    }
    CHECK(sum == a->rsz[r] - CHUNK_REGION_OVERHEAD);
  }
  qsort(a->blk, a->nblk, sizeof *a->blk, cmp_blk);
  size_t k = 0;
  for (size_t i = 0; i < w.n; i++) {
    if (!w.e[i].used) continue;
    CHECK(k < a->nblk);
    /* Regions are walked in the order added, the model is sorted by
     * address: find the block by binary search. */
    blk_t key = {.p = w.e[i].p}, *b;
    b = bsearch(&key, a->blk, a->nblk, sizeof *a->blk, cmp_blk);
    CHECK(b != NULL);
    CHECK(w.e[i].size >= b->size);
    k++;
  }
  CHECK(k == a->nblk);
  CHECK(a->hp->used_count == a->nblk);
  CHECK(a->hp->used_bytes == used_bytes);
  CHECK(a->hp->free_bytes == free_bytes);
  CHECK(chunk_largest_free(a->hp) ==
        (largest ? bin_floor_of(largest) - CHUNK_HEADER : 0));
  free(w.e);
  return largest;
}

/* The chunk that follows payload p in its region: its payload size, or -1 if
 * it is used or the end. */
typedef struct next_find {
  uint8_t *want;
  int found;
  long long next_free;
} next_find_t;
static int find_next(void *payload, size_t size, bool used, void *arg) {
  next_find_t *f = arg;
  if (f->found) {
    f->next_free = used ? -1 : (long long)size;
    return 1;
  }
  if (payload == f->want) f->found = 1;
  return 0;
}
static long long next_free_size(arena_t *a, void *p) {
  for (int r = 0; r < a->nreg; r++) {
    if ((uint8_t *)p < (uint8_t *)a->reg[r] ||
        (uint8_t *)p >= (uint8_t *)a->reg[r] + a->rsz[r])
      continue;
    next_find_t f = {p, 0, -1};
    chunk_walk_region(a->reg[r], a->rsz[r], find_next, &f);
    CHECK(f.found);
    return f.next_free;
  }
  CHECK(!"block outside every region");
  return -1;
}

static void free_all(arena_t *a) {
  while (a->nblk) {
    size_t i = rnd() % a->nblk;
    verify(&a->blk[i], a->blk[i].size, a->blk[i].size);
    chunk_free(a->hp, a->blk[i].p, on_fault);
    del_blk(a, i);
  }
  check_heap(a);
  check_walk(a);
}

/* ---- split / merge ------------------------------------------------------ */

static void test_split_merge(void) {
  /* Four blocks then the free tail; free them in all 24 orders. */
  static const size_t sizes[4] = {1000, 2000, 3000, 40};
  int perm[4] = {0, 1, 2, 3};
  for (int n = 0; n < 24; n++) {
    /* n-th permutation (factorial number system) */
    int avail[4] = {0, 1, 2, 3}, m = n, na = 4;
    for (int i = 0; i < 4; i++) {
      int f = 1;
      for (int j = 1; j < na; j++)
        f *= j;
      int k = m / f;
      m %= f;
      perm[i] = avail[k];
      for (int j = k; j < na - 1; j++)
        avail[j] = avail[j + 1];
      na--;
    }
    arena_t a;
    arena_init(&a, 0x1234567890ABCDEFull);
    arena_add(&a, 64 * KIB);
    uint8_t *p[4];
    for (int i = 0; i < 4; i++) {
      p[i] = chunk_malloc(a.hp, sizes[i]);
      CHECK(p[i]);
      add_blk(&a, p[i], sizes[i]);
    }
    /* Allocations are carved from the front, in order, exactly sized. */
    for (int i = 1; i < 4; i++)
      CHECK(p[i] == p[i - 1] + chunk_need(sizes[i - 1]));
    CHECK(chunk_usable_size(p[3]) == chunk_need(40) - CHUNK_HEADER);
    check_walk(&a);
    check_heap(&a);
    for (int i = 0; i < 4; i++) {
      int j = perm[i];
      size_t k;
      for (k = 0; a.blk[k].p != p[j]; k++)
        ;
      verify(&a.blk[k], a.blk[k].size, a.blk[k].size);
      chunk_free(a.hp, p[j], on_fault);
      del_blk(&a, k);
      /* check_walk asserts no two free chunks are adjacent, so every free
       * has merged with whichever neighbours were free. */
      check_walk(&a);
      check_heap(&a);
      walk_t w = {0};
      chunk_walk_region(a.reg[0], a.rsz[0], collect, &w);
      /* Expected chunk count: the live blocks plus one free chunk per
       * maximal run of freed blocks (and the tail, merged with p[3] if it
       * went). */
      size_t expect = 0;
      bool prev_free = false;
      for (int q = 0; q < 5; q++) {
        bool live = false;
        for (size_t b = 0; q < 4 && b < a.nblk; b++)
          live |= a.blk[b].p == p[q];
        if (live)
          expect++, prev_free = false;
        else if (!prev_free)
          expect++, prev_free = true;
      }
      CHECK(w.n == expect);
      free(w.e);
    }
    CHECK(chunk_region_empty(a.hp, a.reg[0], a.rsz[0]));
    arena_destroy(&a);
  }

  /* Explicit merges: left, right, both. */
  arena_t a;
  arena_init(&a, 7);
  arena_add(&a, 64 * KIB);
  uint8_t *x = chunk_malloc(a.hp, 496), *y = chunk_malloc(a.hp, 496),
          *z = chunk_malloc(a.hp, 496), *g = chunk_malloc(a.hp, 496);
  CHECK(x && y && z && g);
  size_t cs = chunk_need(496);
  chunk_free(a.hp, x, on_fault);
  chunk_free(a.hp, y, on_fault); /* merges left with x */
  CHECK(chunk_usable_size(x) == 2 * cs - CHUNK_HEADER);
  CHECK(!chunk_is_live(a.hp, x) && !chunk_is_live(a.hp, y));
  uint8_t *y2 =
      chunk_malloc(a.hp, 2 * cs - CHUNK_HEADER); /* refit: on a bin floor */
  CHECK(y2 == x);
  chunk_free(a.hp, y2, on_fault);
  chunk_free(a.hp, g, on_fault); /* merges right with the tail */
  CHECK(chunk_usable_size(g) ==
        64 * KIB - CHUNK_REGION_OVERHEAD - 3 * cs - CHUNK_HEADER);
  chunk_free(a.hp, z, on_fault); /* merges both ways */
  CHECK(chunk_region_empty(a.hp, a.reg[0], a.rsz[0]));
  CHECK(chunk_largest_free(a.hp) ==
        bin_floor_of(64 * KIB - CHUNK_REGION_OVERHEAD) - CHUNK_HEADER);
  check_heap(&a);
  arena_destroy(&a);
  printf("split/merge: ok\n");
}

/* ---- bin lists: merges and splits inside shared lists ------------------
 * chunk_free and chunk_malloc leave a chunk where it is when its new size
 * keeps it in its bin, put a merged or split chunk in its neighbour's list
 * place, and unlink neighbours from the middle of a list: these build lists
 * of several chunks and take each of those paths, checking the whole heap
 * after every step. */

static void free_blk(arena_t *a, void *p) {
  size_t k = 0;
  while (k < a->nblk && a->blk[k].p != p)
    k++;
  CHECK(k < a->nblk);
  verify(&a->blk[k], a->blk[k].size, a->blk[k].size);
  chunk_free(a->hp, p, on_fault);
  del_blk(a, k);
  check_heap(a);
  check_walk(a);
}

static uint8_t *alloc_blk(arena_t *a, size_t size) {
  uint8_t *p = chunk_malloc(a->hp, size);
  CHECK(p);
  add_blk(a, p, size);
  check_heap(a);
  return p;
}

static void test_bin_lists(void) {
  arena_t a;
  arena_init(&a, 0x5EEDull);
  enum { R = 3, N = 6 };
  const size_t big_size = 580 * KIB;
  /* Three regions laid out alike: a big block, two small ones, pairs of an
   * F and a G block, then the free tail. Chunks of equal size in different
   * regions share a bin, so the lists below hold several chunks. */
  uint8_t *big[R], *s1[R], *f[R][N], *g[R][N], *plug[R];
  for (int r = 0; r < R; r++) {
    arena_add(&a, 1 * MIB);
    big[r] = alloc_blk(&a, big_size);
    s1[r] = alloc_blk(&a, 1000);
    alloc_blk(&a, 1000);
    for (int i = 0; i < N; i++) {
      f[r][i] = alloc_blk(&a, 20000);
      g[r][i] = alloc_blk(&a, 3000);
    }
    /* the tail, taken whole so the next region's blocks come from that
     * region (its head is a valid header: the usable size is read there) */
    plug[r] = g[r][N - 1] + chunk_need(3000);
    CHECK(alloc_blk(&a, chunk_usable_size(plug[r])) == plug[r]);
    CHECK(big[r] == (uint8_t *)a.reg[r] + 2 * CHUNK_HEADER &&
          s1[r] == big[r] + chunk_need(big_size));
  }
  /* All F chunks but the last of each region: one list of R * (N - 1). */
  for (int i = 0; i < N - 1; i++)
    for (int r = 0; r < R; r++)
      free_blk(&a, f[r][i]);
  /* A G between two free F chunks: both leave the middle of that list. */
  for (int r = 0; r < R; r++) {
    free_blk(&a, g[r][2]);
    CHECK(chunk_usable_size(f[r][2]) ==
          2 * chunk_need(20000) + chunk_need(3000) - CHUNK_HEADER);
  }
  /* A left merge into a big free chunk that stays in its bin, and in its
   * place in the list the other big chunks share. */
  for (int r = 0; r < R; r++)
    free_blk(&a, big[r]);
  size_t bs = chunk_need(big_size);
  CHECK(bin_floor_of(bs + chunk_need(1000)) == bin_floor_of(bs));
  for (int r = 0; r < R; r++) {
    free_blk(&a, s1[r]);
    CHECK(chunk_usable_size(big[r]) == bs + chunk_need(1000) - CHUNK_HEADER);
  }
  /* A right-only merge (the F before it is live) into the free tail: the
   * freed chunk takes the tail's place in its list, the other tails around
   * it. */
  for (int r = 0; r < R; r++)
    free_blk(&a, plug[r]);
  for (int r = 0; r < R; r++) {
    size_t ts = chunk_usable_size(plug[r]) + CHUNK_HEADER;
    CHECK(bin_floor_of(ts + chunk_need(3000)) == bin_floor_of(ts));
    free_blk(&a, g[r][N - 1]);
    CHECK(chunk_usable_size(g[r][N - 1]) ==
          ts + chunk_need(3000) - CHUNK_HEADER);
  }
  /* Splits that change the bin, from lists of several chunks. */
  for (int k = 0; k < 2 * R; k++)
    alloc_blk(&a, 9000);
  while (a.nblk)
    free_blk(&a, a.blk[rnd() % a.nblk].p);
  for (int r = 0; r < R; r++)
    CHECK(chunk_region_empty(a.hp, a.reg[r], a.rsz[r]));
  arena_destroy(&a);

  /* Splits whose rest stays in the bin of the chunk split (two regions'
   * whole chunks share one): the rest takes its place in the list, the
   * other chunk after it. */
  arena_init(&a, 0xB1Bull);
  arena_add(&a, 1 * MIB);
  arena_add(&a, 1 * MIB);
  size_t whole = 1 * MIB - CHUNK_REGION_OVERHEAD, taken = 0;
  uint8_t *first = NULL;
  for (int k = 0; k < 8; k++) {
    size_t n = 4000 + 16 * (size_t)k;
    uint8_t *p = alloc_blk(&a, n);
    if (!first) first = p;
    CHECK(p == first + taken); /* carved one after another from one chunk */
    taken += chunk_need(n);
    CHECK(bin_floor_of(whole - taken) == bin_floor_of(whole));
  }
  while (a.nblk)
    free_blk(&a, a.blk[rnd() % a.nblk].p);
  arena_destroy(&a);

  /* memalign's leading gap in the bin of the chunk it is cut from: the
   * chunk stays where it is. A free chunk C of 64 KiB + 1 KiB, the only one
   * (the rest of the region is taken), whose payload lies 16 bytes below a
   * 64 KiB boundary: the gap is then 64 KiB + 16 (16 cannot be a chunk). */
  const size_t A = 64 * KIB, got = A + 1024;
  arena_init(&a, 0xA11Cull);
  arena_add(&a, 1 * MIB);
  uintptr_t r0 = (uintptr_t)a.reg[0];
  size_t need_x = (A - (r0 + 3 * CHUNK_HEADER) % A) % A;
  if (need_x < CHUNK_MIN) need_x += A;
  uint8_t *x = alloc_blk(&a, need_x - CHUNK_HEADER);
  uint8_t *cb = alloc_blk(&a, got - CHUNK_HEADER);
  CHECK(cb == x + need_x && ((uintptr_t)cb + CHUNK_HEADER) % A == 0);
  uint8_t *rest = cb + got;
  CHECK(alloc_blk(&a, chunk_usable_size(rest)) == rest);
  free_blk(&a, cb);
  CHECK(bin_floor_of(A + CHUNK_HEADER) == bin_floor_of(got));
  uint8_t *q = chunk_memalign(a.hp, A, 32);
  CHECK(q == cb + A + CHUNK_HEADER && (uintptr_t)q % A == 0);
  add_blk(&a, q, 32);
  check_heap(&a);
  check_walk(&a);
  CHECK(chunk_usable_size(cb) == A); /* the gap: a free chunk of A + 16 */
  while (a.nblk)
    free_blk(&a, a.blk[rnd() % a.nblk].p);
  arena_destroy(&a);
  printf("bin lists: ok\n");
}

/* ---- memalign and resize, deterministic cases -----------------------------
 */

static void test_memalign_resize(void) {
  /* Every alignment, with the found chunk's payload already aligned, 16
   * bytes short of alignment (the gap cannot be a chunk: skip a step) and
   * further off. */
  static const size_t spacers[] = {0, 1, 16, 17, 32, 48, 1000, 4080};
  for (size_t align = 16; align <= 1 * MIB; align *= 2) {
    for (size_t k = 0; k < sizeof spacers / sizeof spacers[0]; k++) {
      arena_t a;
      arena_init(&a, align * 31 + k);
      arena_add(&a, 4 * MIB);
      /* the region is page aligned, so the spacer sets where the free
       * chunk's payload starts relative to small alignments */
      if (spacers[k]) {
        void *sp = chunk_malloc(a.hp, spacers[k]);
        CHECK(sp);
        add_blk(&a, sp, spacers[k]);
      }
      void *p = chunk_memalign(a.hp, align, 5000);
      CHECK(p && ((uintptr_t)p & (align - 1)) == 0);
      CHECK(chunk_usable_size(p) >= 5000);
      add_blk(&a, p, 5000);
      void *q = chunk_memalign(a.hp, align, 1);
      CHECK(q && ((uintptr_t)q & (align - 1)) == 0);
      add_blk(&a, q, 1);
      check_heap(&a);
      check_walk(&a);
      free_all(&a);
      arena_destroy(&a);
    }
  }

  arena_t a;
  arena_init(&a, 5);
  arena_add(&a, 1 * MIB);
  uint8_t *p = chunk_malloc(a.hp, 10000), *q = chunk_malloc(a.hp, 10000);
  uint8_t *r = chunk_malloc(a.hp, 10000);
  CHECK(p && q && r);
  size_t c = chunk_need(10000);
  /* shrink by less than a chunk with a used neighbour: unchanged */
  CHECK(chunk_resize_in_place(a.hp, p, 10000 - 16));
  CHECK(chunk_usable_size(p) == c - 16);
  /* shrink by more: the tail becomes a free chunk */
  CHECK(chunk_resize_in_place(a.hp, p, 5000));
  CHECK(chunk_usable_size(p) == chunk_need(5000) - 16);
  CHECK(!chunk_is_live(a.hp, p + chunk_need(5000)));
  check_heap(&a);
  /* grow back into it, exactly: no split */
  CHECK(chunk_resize_in_place(a.hp, p, c - 16));
  CHECK(chunk_usable_size(p) == c - 16 && chunk_is_live(a.hp, q));
  /* used neighbour: no growth */
  CHECK(!chunk_resize_in_place(a.hp, p, c));
  chunk_free(a.hp, q, on_fault);
  /* grow into the free neighbour, splitting it */
  CHECK(chunk_resize_in_place(a.hp, p, c + 100));
  CHECK(chunk_usable_size(p) == chunk_need(c + 100) - 16);
  check_heap(&a);
  /* grow into all of it, leaving less than a chunk: absorbed */
  CHECK(chunk_resize_in_place(a.hp, p, 2 * c - 16 - 16));
  CHECK(chunk_usable_size(p) == 2 * c - 16);
  CHECK(!chunk_resize_in_place(a.hp, p, 2 * c));
  /* an interior pointer where q's header was is no chunk any more */
  CHECK(!chunk_is_live(a.hp, q));
  /* shrink next to a free neighbour by 16 bytes: the boundary moves */
  chunk_free(a.hp, r, on_fault);
  CHECK(chunk_resize_in_place(a.hp, p, 2 * c - 16 - 16));
  CHECK(chunk_usable_size(p) == 2 * c - 32);
  check_heap(&a);
  chunk_free(a.hp, p, on_fault);
  CHECK(chunk_region_empty(a.hp, a.reg[0], a.rsz[0]));
  arena_destroy(&a);
  printf("memalign/resize: ok\n");
}

/* ---- randomised operations against the model -------------------------- */

typedef struct stats {
  size_t mallocs, null_mallocs, memaligns, frees, grows, grow_fails, shrinks;
} stats_t;

static void random_ops(arena_t *a, size_t ops, size_t max_size, size_t max_live,
                       size_t check_every, stats_t *st) {
  size_t min_region = (size_t)-1;
  for (int r = 0; r < a->nreg; r++)
    if (a->rsz[r] < min_region) min_region = a->rsz[r];
  for (size_t op = 1; op <= ops; op++) {
    unsigned what = (unsigned)(rnd() % 100);
    if (a->nblk >= max_live && what < 55) what += 45;
    if (what < 40) {
      size_t size = rnd_size(max_size);
      void *p = chunk_malloc(a->hp, size);
      st->mallocs++;
      if (p) {
        CHECK(((uintptr_t)p & 15) == 0);
        CHECK(chunk_usable_size(p) >= size);
        add_blk(a, p, size);
      } else {
        st->null_mallocs++;
        /* good fit: a request at or below the largest free chunk's bin floor
         * must have been found */
        size_t largest = check_walk(a);
        CHECK(chunk_need(size) > (largest ? bin_floor_of(largest) : 0));
        CHECK(!largest || size > chunk_largest_free(a->hp));
      }
    } else if (what < 55) {
      unsigned maxlog = 4;
      while (maxlog < 20 && ((size_t)32 << maxlog) <= min_region / 4)
        maxlog++;
      size_t align = (size_t)1 << (4 + rnd() % (maxlog - 3));
      size_t size = rnd_size(max_size);
      void *p = chunk_memalign(a->hp, align, size);
      st->memaligns++;
      if (p) {
        CHECK(((uintptr_t)p & (align - 1)) == 0);
        CHECK(chunk_usable_size(p) >= size);
        add_blk(a, p, size);
      }
    } else if (what < 85) {
      if (!a->nblk) continue;
      size_t i = rnd() % a->nblk;
      verify(&a->blk[i], a->blk[i].size, a->blk[i].size);
      chunk_free(a->hp, a->blk[i].p, on_fault);
      CHECK(!chunk_is_live(a->hp, a->blk[i].p));
      del_blk(a, i);
      st->frees++;
    } else {
      if (!a->nblk) continue;
      size_t i = rnd() % a->nblk;
      blk_t *b = &a->blk[i];
      size_t old = b->size, usable = chunk_usable_size(b->p);
      size_t size = rnd() & 1 ? rnd_size(max_size) : old + rnd_size(old);
      long long nf = next_free_size(a, b->p);
      size_t have =
          usable + CHUNK_HEADER + (nf >= 0 ? (size_t)nf + CHUNK_HEADER : 0);
      bool expect = chunk_need(size) <= have;
      bool ok = chunk_resize_in_place(a->hp, b->p, size);
      CHECK(ok == expect);
      if (ok) {
        CHECK(chunk_usable_size(b->p) >= size);
        verify(b, old, old < size ? old : size);
        if (size > usable)
          st->grows++;
        else
          st->shrinks++;
        b->size = size;
        b->seed = (uint32_t)rnd();
        fill(b);
      } else {
        st->grow_fails++;
        CHECK(chunk_usable_size(b->p) == usable);
        verify(b, old, old);
      }
    }
    if (op % check_every == 0) {
      check_heap(a);
      check_walk(a);
    }
  }
  check_heap(a);
  check_walk(a);
}

static void test_random(void) {
  static const struct {
    size_t region;
    size_t max_size;
    size_t max_live;
    size_t ops;
    size_t check_every;
  } cfg[] = {
      {4 * KIB, 1 * KIB, 64, 60000, 16},
      {64 * KIB, 16 * KIB, 128, 60000, 32},
      {1 * MIB, 256 * KIB, 256, 60000, 64},
      {16 * MIB, 2 * MIB, 512, 40000, 128},
      {256 * MIB, 64 * MIB, 512, 20000, 256},
      {1 * GIB, 256 * MIB, 256, 20000, 256},
  };
  for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
    arena_t a;
    stats_t st = {0};
    /* a heap with the bin rows its one region needs, as in a caller's
     * buffer */
    arena_init_sized(&a, c == 0 ? 0 : rnd(), cfg[c].region);
    arena_add(&a, cfg[c].region);
    random_ops(&a, cfg[c].ops, cfg[c].max_size, cfg[c].max_live,
               cfg[c].check_every, &st);
    free_all(&a);
    arena_destroy(&a);
    printf("random %7zu KiB: %zu malloc (%zu NULL), %zu memalign, %zu free, "
           "%zu grow, %zu shrink, %zu resize refused\n",
           cfg[c].region / KIB, st.mallocs, st.null_mallocs, st.memaligns,
           st.frees, st.grows, st.shrinks, st.grow_fails);
  }

  /* Several regions of different sizes in one heap. */
  arena_t a;
  stats_t st = {0};
  arena_init(&a, rnd());
  size_t sizes[] = {4 * KIB, 64 * KIB, 1 * MIB, 4 * MIB, 48 * KIB + 16};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    arena_add(&a, sizes[i]);
  random_ops(&a, 60000, 512 * KIB, 300, 64, &st);
  free_all(&a);
  arena_destroy(&a);
  printf("random multi-region: %zu malloc (%zu NULL), %zu memalign, "
         "%zu free\n",
         st.mallocs, st.null_mallocs, st.memaligns, st.frees);
}

/* ---- fault detection ----------------------------------------------------- */

static void test_faults(void) {
  arena_t a;
  arena_init(&a, 0xDEADBEEFCAFEF00Dull);
  arena_add(&a, 256 * KIB);
  chunk_heap_t *h = a.hp;
  uint8_t *p = chunk_malloc(h, 9000), *q = chunk_malloc(h, 9000),
          *r = chunk_malloc(h, 9000), *s = chunk_malloc(h, 9000);
  CHECK(p && q && r && s);
  memset(p, 0, 9000);
  chunk_heap_t before = *h;

  /* double free, plain and after the chunk merged into its neighbour */
  chunk_free(h, q, on_fault);
  before = *h;
  EXPECT_FAULT(chunk_free(h, q, on_fault), "double free", q);
  CHECK(!memcmp(&before, h, sizeof before));
  chunk_free(h, r, on_fault); /* r merges into q */
  before = *h;
  EXPECT_FAULT(chunk_free(h, r, on_fault), "double free", r);
  EXPECT_FAULT(chunk_resize_in_place(h, r, 100), "double free", r);
  CHECK(!memcmp(&before, h, sizeof before));
  check_heap(&a);

  /* interior pointers: aligned (into zeroed payload) and misaligned */
  EXPECT_FAULT(chunk_free(h, p + 64, on_fault), "invalid pointer", p + 64);
  EXPECT_FAULT(chunk_free(h, p + 8, on_fault), "invalid pointer", p + 8);
  CHECK(!chunk_is_live(h, p + 64));
  /* the region's first payload address minus the fence: not a chunk */
  uint8_t *fence_payload = (uint8_t *)a.reg[0] + CHUNK_HEADER;
  EXPECT_FAULT(chunk_free(h, fence_payload, on_fault), "invalid pointer",
               fence_payload);

  /* pointers outside any region: zeroed memory, text, small integers */
  static _Alignas(16) uint8_t outside[4096];
  EXPECT_FAULT(chunk_free(h, outside + 2048, on_fault), "invalid pointer",
               outside + 2048);
  memset(outside, 'x', sizeof outside);
  memcpy(outside + 1024, "not a chunk, just text..", 24);
  EXPECT_FAULT(chunk_free(h, outside + 1040, on_fault), "invalid pointer",
               outside + 1040);
  for (int i = 0; i < 512; i++)
    ((uint64_t *)outside)[i] = (uint64_t)i * 4096;
  EXPECT_FAULT(chunk_free(h, outside + 1040, on_fault), "invalid pointer",
               outside + 1040);
  CHECK(!memcmp(&before, h, sizeof before));
  check_heap(&a);

  /* corrupted header: each word of p's header in turn. A changed word
   * passes its 14-bit tag by chance once in 16384, so flip the first of a
   * few bits that is caught at all (chunk_is_live must see it). */
  uint64_t *hdr = (uint64_t *)(p - CHUNK_HEADER);
  for (volatile int w = 0; w < 2; w++) {
    uint64_t saved = hdr[w];
    int bit;
    for (bit = 8; bit < 16; bit++) {
      hdr[w] = saved ^ ((uint64_t)1 << bit); /* a size bit */
      if (!chunk_is_live(h, p)) break;
    }
    CHECK(bit < 12);
    EXPECT_FAULT(chunk_free(h, p, on_fault), "corrupted chunk header", p);
    CHECK(!chunk_is_live(h, p));
    EXPECT_FAULT(chunk_resize_in_place(h, p, 10), "corrupted chunk header", p);
    /* chunk_check names the damaged chunk */
    fault_hits = 0;
    CHECK(!chunk_check(h, a.reg, a.rsz, 1, record_fault));
    CHECK(fault_hits == 1 && !strcmp(fault_what, "corrupted chunk header") &&
          fault_addr == p);
    hdr[w] = saved;
    CHECK(chunk_is_live(h, p));
  }
  /* an overflow from p into the next header (q's, free, merged with r) */
  uint64_t saved = *(uint64_t *)(q - CHUNK_HEADER);
  memset(q - CHUNK_HEADER, 0x41, 8);
  EXPECT_FAULT(chunk_free(h, p, on_fault), "corrupted chunk header", q);
  fault_hits = 0;
  CHECK(!chunk_check(h, a.reg, a.rsz, 1, record_fault));
  CHECK(fault_hits == 1 && !strcmp(fault_what, "corrupted chunk header") &&
        fault_addr == q);
  /* malloc finds the corrupted free chunk too (p's next is q, the only free
   * chunk that fits) */
  EXPECT_FAULT(chunk_malloc(h, 17000), "corrupted free chunk", q);
  *(uint64_t *)(q - CHUNK_HEADER) = saved;
  CHECK(!memcmp(&before, h, sizeof before));
  /* the whole header overwritten: no longer recognisable */
  uint64_t saved2[2] = {hdr[0], hdr[1]};
  memset(hdr, 0, 16);
  EXPECT_FAULT(chunk_free(h, p, on_fault), "invalid pointer", p);
  hdr[0] = saved2[0];
  hdr[1] = saved2[1];
  /* a header forged without the key: copy s's header over p's. Each word
   * matches its new address's tag by chance once in 16384: then it is only
   * a corrupted header, still refused. */
  memcpy(hdr, s - CHUNK_HEADER, 16);
  CHECK(!chunk_is_live(h, p));
  fault_armed = 1;
  fault_hits = 0;
  if (!setjmp(fault_jb)) chunk_free(h, p, on_fault);
  fault_armed = 0;
  CHECK(fault_hits == 1 && fault_addr == p &&
        (!strcmp(fault_what, "invalid pointer") ||
         !strcmp(fault_what, "corrupted chunk header")));
  hdr[0] = saved2[0];
  hdr[1] = saved2[1];
  /* a free chunk's list links damaged (use after free): the unlink check */
  uint8_t *t = chunk_malloc(h, 20000), *u = chunk_malloc(h, 20000);
  CHECK(t && u);
  chunk_free(h, t, on_fault);
  uint64_t link = *(uint64_t *)(t + 8);
  *(uint64_t *)(t + 8) = (uint64_t)(uintptr_t)(p - CHUNK_HEADER);
  EXPECT_FAULT(chunk_free(h, u, on_fault), "corrupted free list", t);
  fault_hits = 0;
  CHECK(!chunk_check(h, a.reg, a.rsz, 1, record_fault));
  CHECK(fault_hits == 1);
  *(uint64_t *)(t + 8) = link;
  chunk_free(h, u, on_fault);
  check_heap(&a);

  /* chunk_check on other inconsistencies */
  before = *h;
  h->used_count++;
  fault_hits = 0;
  CHECK(!chunk_check(h, a.reg, a.rsz, 1, record_fault));
  CHECK(fault_hits == 1 && !strcmp(fault_what, "used chunk count wrong"));
  *h = before;
  h->sl_bitmap[3] |= 1;
  fault_hits = 0;
  CHECK(!chunk_check(h, a.reg, a.rsz, 1, record_fault));
  CHECK(fault_hits == 1);
  *h = before;
  check_heap(&a);

  /* removing a region that is in use */
  EXPECT_FAULT(chunk_remove_region(h, a.reg[0], a.rsz[0]),
               "removing a region that is in use", a.reg[0]);

  chunk_free(h, p, on_fault);
  chunk_free(h, s, on_fault);
  CHECK(chunk_region_empty(h, a.reg[0], a.rsz[0]));
  check_heap(&a);
  arena_destroy(&a);
  printf("faults: ok\n");
}

/* ---- exhaustion ------------------------------------------------------------
 */

static void test_exhaustion(void) {
  arena_t a;
  arena_init(&a, 42);
  size_t rs = 1 * MIB;
  arena_add(&a, rs);
  /* the whole region in one block, and not a byte more */
  size_t all = rs - CHUNK_REGION_OVERHEAD - CHUNK_HEADER;
  CHECK(chunk_malloc(a.hp, all + 1) == NULL);
  void *p = chunk_malloc(a.hp, all);
  CHECK(p && chunk_usable_size(p) == all);
  CHECK(chunk_malloc(a.hp, 0) == NULL && chunk_largest_free(a.hp) == 0);
  chunk_free(a.hp, p, on_fault);
  CHECK(chunk_region_empty(a.hp, a.reg[0], rs));
  CHECK(chunk_malloc(a.hp, SIZE_MAX) == NULL);
  CHECK(chunk_malloc(a.hp, SIZE_MAX - 8) == NULL);
  CHECK(chunk_memalign(a.hp, 64, SIZE_MAX - 100) == NULL);
  CHECK(chunk_memalign(a.hp, (size_t)1 << 62, 16) == NULL);
  CHECK(chunk_memalign(a.hp, 48, 16) == NULL); /* not a power of two */

  /* fill with medium blocks, then with the smallest, until nothing fits */
  size_t n = 0;
  for (void *q; (q = chunk_malloc(a.hp, 9000 + rnd() % 5000));)
    add_blk(&a, q, chunk_usable_size(q)), n++;
  CHECK(n >= rs / 14100 - 1);
  for (void *q; (q = chunk_malloc(a.hp, rnd() % 64));)
    add_blk(&a, q, chunk_usable_size(q)), n++;
  for (void *q; (q = chunk_malloc(a.hp, 0));)
    add_blk(&a, q, chunk_usable_size(q)), n++;
  CHECK(a.hp->free_bytes == 0 && a.hp->fl_bitmap == 0);
  CHECK(chunk_largest_free(a.hp) == 0);
  CHECK(a.hp->used_bytes == rs - CHUNK_REGION_OVERHEAD);
  CHECK(!chunk_region_empty(a.hp, a.reg[0], rs));
  check_heap(&a);
  check_walk(&a);
  free_all(&a);
  CHECK(chunk_region_empty(a.hp, a.reg[0], rs));
  CHECK(a.hp->free_bytes == rs - CHUNK_REGION_OVERHEAD);

  /* a bad region is refused */
  chunk_heap_t h2;
  chunk_heap_init(&h2, 1);
  static _Alignas(16) uint8_t small[128];
  CHECK(chunk_add_region(&h2, small + 8, 64) == 0);
  CHECK(chunk_add_region(&h2, small, 48) == 0);
  CHECK(chunk_add_region(&h2, small, 72) == 0);
  CHECK(h2.regions == 0);
  CHECK(chunk_add_region(&h2, small, 64) == 16);
  void *m = chunk_malloc(&h2, 16);
  CHECK(m && chunk_malloc(&h2, 0) == NULL);
  chunk_free(&h2, m, on_fault);
  CHECK(chunk_region_empty(&h2, small, 64));
  arena_destroy(&a);
  printf("exhaustion: %zu blocks, ok\n", n);
}

/* ---- heaps with fewer bin rows ------------------------------------------- */

/* Rows a region of `region` bytes needs: its one chunk's first level + 1. */
static unsigned rows_for(size_t region) {
  size_t c = region - CHUNK_REGION_OVERHEAD;
  if (c < 256) return 1;
  return (63u - (unsigned)__builtin_clzll(c)) - 6;
}

static void test_sized(void) {
  static const size_t regions[] = {64,      272,     288,      512,
                                   1 * KIB, 4 * KIB, 64 * KIB, 1 * MIB,
                                   4 * MIB, 1 * GIB, 64 * GIB};
  for (size_t i = 0; i < sizeof regions / sizeof *regions; i++) {
    size_t r = regions[i], rows = rows_for(r);
    size_t want = (offsetof(chunk_heap_t, bins) +
                   rows * sizeof(void *[CHUNK_SL_COUNT]) + 15) &
                  ~(size_t)15;
    CHECK(chunk_heap_size(r) == want);
  }
  CHECK(chunk_heap_size(4 * KIB) ==
        offsetof(chunk_heap_t, bins) + 5 * sizeof(void *[CHUNK_SL_COUNT]));
  CHECK(chunk_heap_size((size_t)1 << 47) == sizeof(chunk_heap_t));

  /* A 4 KiB heap in exactly its bytes, followed by a pattern that would be
   * followed as a pointer (and fault) if a bin past the table were read,
   * and that must be unchanged after everything. */
  size_t rs = 4 * KIB, bytes = chunk_heap_size(rs), tail = 1024;
  uint8_t *mem = aligned_alloc(16, bytes + tail);
  CHECK(mem);
  memset(mem + bytes, 0xA5, tail);
  chunk_heap_t *h = (chunk_heap_t *)mem;
  chunk_heap_init_sized(h, 7, rs);
  chunk_set_fault(h, on_fault);
  CHECK(h->fl_count == 5 && h->limit == 4 * KIB);
  void *reg = aligned_alloc(16, 8 * KIB);
  CHECK(reg);
  CHECK(chunk_add_region(h, reg, rs + 32) == 0); /* chunk 4096: too big */
  CHECK(chunk_add_region(h, reg, 8 * KIB) == 0);
  CHECK(chunk_add_region(h, reg, rs + 16) == rs + 16 - 48);
  CHECK(chunk_malloc(h, rs) == NULL);
  CHECK(chunk_malloc(h, 1 * MIB) == NULL);
  CHECK(chunk_malloc(h, (size_t)1 << 40) == NULL);
  CHECK(chunk_memalign(h, 64 * KIB, 16) == NULL);
  CHECK(chunk_memalign(h, 4 * KIB, 1 * KIB) == NULL);
  void *all = chunk_malloc(h, rs + 16 - 48); /* the whole region */
  CHECK(all != NULL && chunk_malloc(h, 16) == NULL);
  CHECK(!chunk_resize_in_place(h, all, 1 * MIB));
  CHECK(chunk_resize_in_place(h, all, 100));
  void *p[64];
  size_t n = 0;
  while (n < 64 && (p[n] = chunk_malloc(h, 16 + rnd() % 200)))
    n++;
  CHECK(n > 4 && n < 64);
  for (size_t k = 0; k < n; k += 2)
    chunk_free(h, p[k], on_fault);
  void *reg1[1] = {reg};
  size_t rsz1[1] = {rs + 16};
  fault_hits = 0;
  CHECK(chunk_check(h, reg1, rsz1, 1, record_fault) && !fault_hits);

  /* the table's size is checked first, and rows past it must stay empty */
  h->fl_count = 41;
  CHECK(!chunk_check(h, reg1, rsz1, 1, record_fault) &&
        !strcmp(fault_what, "bin table size corrupted"));
  h->fl_count = 5;
  h->sl_bitmap[5] = 1;
  CHECK(
      !chunk_check(h, reg1, rsz1, 1, record_fault) &&
      !strcmp(fault_what, "second-level bitmap set for a level with no bins"));
  h->sl_bitmap[5] = 0;
  CHECK(chunk_check(h, reg1, rsz1, 1, record_fault));

  /* a heap with fewer rows cannot take in one with more */
  chunk_heap_t *big = malloc(sizeof *big);
  CHECK(big);
  chunk_heap_init(big, 7);
  EXPECT_FAULT(chunk_heap_absorb(h, big), "absorbing a heap with more bin rows",
               big);
  chunk_heap_absorb(big, h); /* the other way round is fine */
  CHECK(big->used_count == n - (n + 1) / 2 + 1 && h->used_count == 0 &&
        h->fl_count == 5 && h->limit == 4 * KIB);
  free(big);

  for (size_t k = 0; k < tail; k++)
    CHECK(mem[bytes + k] == 0xA5);
  free(reg);
  free(mem);
  printf("sized heaps: ok\n");
}

/* ---- absorbing another heap ---------------------------------------------- */

static void test_absorb(void) {
  arena_t a, b;
  arena_init(&a, 99);
  arena_init(&b, 99);
  arena_add(&a, 1 * MIB);
  arena_add(&b, 1 * MIB);
  stats_t st = {0};
  random_ops(&a, 2000, 64 * KIB, 100, 100, &st);
  random_ops(&b, 2000, 64 * KIB, 100, 100, &st);
  chunk_heap_absorb(a.hp, b.hp);
  CHECK(b.hp->regions == 0 && b.hp->fl_bitmap == 0 && b.hp->used_count == 0);
  a.reg[1] = b.reg[0];
  a.rsz[1] = b.rsz[0];
  a.mapped[1] = b.mapped[0];
  a.nreg = 2;
  a.cap = a.nblk + b.nblk + 1;
  a.blk = realloc(a.blk, a.cap * sizeof *a.blk);
  CHECK(a.blk);
  for (size_t i = 0; i < b.nblk; i++)
    a.blk[a.nblk++] = b.blk[i];
  free(b.blk);
  free(b.hp);
  check_heap(&a);
  check_walk(&a);
  random_ops(&a, 2000, 64 * KIB, 150, 100, &st);
  free_all(&a);
  arena_destroy(&a);
  printf("absorb: ok\n");
}

/* ---- timing ---------------------------------------------------------------
 */

static inline uint64_t ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#elif defined(__aarch64__)
  uint64_t v;
  __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
  return v;
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}
static const char *tick_unit(void) {
#if defined(__x86_64__) || defined(__i386__)
  return "TSC cycles";
#elif defined(__aarch64__)
  return "cntvct ticks";
#else
  return "ns";
#endif
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static void report(const char *name, uint64_t *t, size_t n, uint64_t base) {
  if (!n) return;
  qsort(t, n, sizeof *t, cmp_u64);
  double sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += (double)t[i];
  printf("  %-14s n=%-8zu mean %6.0f  median %5llu  p99 %5llu  p99.9 %6llu  "
         "max %8llu  (%s; timer floor %llu)\n",
         name, n, sum / (double)n, (unsigned long long)t[n / 2],
         (unsigned long long)t[n * 99 / 100],
         (unsigned long long)t[n * 999 / 1000], (unsigned long long)t[n - 1],
         tick_unit(), (unsigned long long)base);
}

/* Fragment a region (fill 3/4 with random sizes, free half at random), then
 * time chunk_malloc and chunk_free in steady state: each step allocates one
 * block and frees a random live one, so the live set keeps its size. */
static void timing(size_t rs, size_t ops, size_t min_size, size_t max_size,
                   const char *label) {
  void *mem = map(rs);
  memset(mem, 0, rs); /* no page faults in the timed part */
  chunk_heap_t h;
  chunk_heap_init(&h, 0x5EED5EED5EEDull);
  chunk_add_region(&h, mem, rs);
  size_t cap = rs / (min_size + 16) + 2, n = 0;
  void **live = malloc(cap * sizeof *live);
  uint64_t *tm = malloc(ops * sizeof *tm), *tf = malloc(ops * sizeof *tf);
  CHECK(live && tm && tf);
  size_t span = max_size - min_size + 1;
  while (h.used_bytes < rs / 4 * 3 && n < cap) {
    void *p = chunk_malloc(&h, min_size + rnd() % span);
    if (!p) break;
    live[n++] = p;
  }
  for (size_t k = n / 2; k; k--) {
    size_t i = rnd() % n;
    chunk_free(&h, live[i], on_fault);
    live[i] = live[--n];
  }
  size_t target = n;
  uint64_t base = (uint64_t)-1;
  for (int i = 0; i < 1000; i++) {
    uint64_t t0 = ticks(), t1 = ticks();
    if (t1 - t0 < base) base = t1 - t0;
  }
  size_t nm = 0, nf = 0, fails = 0;
  for (size_t op = 0; op < ops; op++) {
    size_t size = min_size + rnd() % span;
    uint64_t t0 = ticks();
    void *p = chunk_malloc(&h, size);
    uint64_t t1 = ticks();
    tm[nm++] = t1 - t0;
    if (p)
      live[n++] = p;
    else
      fails++;
    if (n && (n > target || !p)) {
      size_t i = rnd() % n;
      void *q = live[i];
      t0 = ticks();
      chunk_free(&h, q, on_fault);
      t1 = ticks();
      tf[nf++] = t1 - t0;
      live[i] = live[--n];
    }
  }
  walk_t w = {0};
  chunk_walk_region(mem, rs, collect, &w);
  size_t nfree = 0;
  for (size_t i = 0; i < w.n; i++)
    nfree += !w.e[i].used;
  free(w.e);
  printf("timing %s: %zu MiB region, %zu..%zu bytes, %zu live, %zu free "
         "chunks, %zu/%zu malloc NULL\n",
         label, rs / MIB, min_size, max_size, n, nfree, fails, nm);
  report("chunk_malloc", tm, nm, base);
  report("chunk_free", tf, nf, base);
  void *r = mem;
  size_t rsz = rs;
  fault_hits = 0;
  CHECK(chunk_check(&h, &r, &rsz, 1, record_fault));
  free(live);
  free(tm);
  free(tf);
  munmap(mem, rs);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 1 && !strcmp(argv[1], "--timing")) {
    timing(4 * MIB, 2000000, 8 * KIB + 1, 1 * MIB, "medium/segment");
    timing(4 * MIB, 2000000, 8 * KIB + 1, 64 * KIB, "8-64K/segment");
    timing(256 * MIB, 2000000, 8 * KIB + 1, 1 * MIB, "medium/big");
    timing(256 * MIB, 2000000, 16, 16 * KIB, "mixed/big");
    return 0;
  }
  if (argc > 1) {
    fprintf(stderr, "usage: %s [--timing]\n", argv[0]);
    return 2;
  }
  const char *seed = getenv("CHUNK_TEST_SEED");
  if (seed) rng_state = strtoull(seed, NULL, 0) | 1;
  printf("seed %#llx (set CHUNK_TEST_SEED to repeat another)\n",
         (unsigned long long)rng_state);
  test_split_merge();
  test_bin_lists();
  test_memalign_resize();
  test_faults();
  test_exhaustion();
  test_absorb();
  test_sized();
  test_random();
  timing(4 * MIB, 200000, 8 * KIB + 1, 64 * KIB, "8-64K/segment");
  timing(256 * MIB, 200000, 8 * KIB + 1, 1 * MIB, "medium/big");
  printf("all chunk tests passed\n");
  return 0;
}
