/* unit_sizes.c: size-class edges. Aligned allocation at every power-of-two
 * alignment from 16 bytes to 1 MiB with small, medium and large sizes, and
 * realloc across every small size-class boundary and across the small/medium
 * (8 KiB) and medium/large (1 MiB) thresholds, in both directions, checking
 * that contents survive and that blocks alive together never overlap.
 *
 * Built against liballot.so with TEST_ALLOT; without it the same checks run
 * against the system malloc (to validate the test itself). */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TEST_ALLOT
#include "allot.h"
#endif

static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond);       \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      if (++failures > 50) {                                                   \
        fprintf(stderr, "unit_sizes: too many failures, giving up\n");         \
        exit(1);                                                               \
      }                                                                        \
    }                                                                          \
  } while (0)

/* The pattern is a sequence of 64-bit words so checking megabytes is cheap;
 * any byte range can still be filled or checked. */
static uint64_t pattern_word(uint64_t seed, size_t k) {
  return ((seed + 1) * 0x9E3779B97F4A7C15ull) ^ (k * 0xD6E8FEB86659FD93ull);
}

static uint8_t pattern_byte(uint64_t seed, size_t i) {
  return (uint8_t)(pattern_word(seed, i >> 3) >> ((i & 7) * 8));
}

/* Blocks are 16-byte aligned, so offset i is word-aligned when i % 8 == 0. */
static void fill(void *p, size_t from, size_t to, uint64_t seed) {
  uint8_t *b = p;
  size_t i = from;
  for (; i < to && (i & 7); i++)
    b[i] = pattern_byte(seed, i);
  for (; i + 8 <= to; i += 8) {
    uint64_t w = pattern_word(seed, i >> 3);
    memcpy(b + i, &w, 8);
  }
  for (; i < to; i++)
    b[i] = pattern_byte(seed, i);
}

static size_t verify(const void *p, size_t n, uint64_t seed) {
  const uint8_t *b = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    if (w != pattern_word(seed, i >> 3)) break;
  }
  for (; i < n; i++)
    if (b[i] != pattern_byte(seed, i)) return i;
  return SIZE_MAX;
}

static int aligned(const void *p, size_t a) {
  return ((uintptr_t)p & (a - 1)) == 0;
}

static void check_block(void *p, size_t size, size_t align, const char *what) {
  CHECK(p != NULL, "%s(align %zu, size %zu) returned NULL", what, align, size);
  if (!p) return;
  CHECK(aligned(p, align < 16 ? 16 : align),
        "%s(align %zu, size %zu) = %p misaligned", what, align, size, p);
  CHECK(malloc_usable_size(p) >= size, "%s(align %zu, size %zu): usable %zu",
        what, align, size, malloc_usable_size(p));
#ifdef TEST_ALLOT
  CHECK(allot_owns(p), "%s(align %zu, size %zu) = %p not owned by allot", what,
        align, size, p);
#endif
}

/* ---- aligned allocation --------------------------------------------------*/

struct live {
  void *p;
  size_t usable;
  uint64_t seed;
};

static void test_aligned(void) {
  static const size_t sizes[] = {
      1,      8,    16,    48,     100,           1000,    4000,
      8192,   8193, 20000, 100000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1,
      3 << 20};
  enum { NS = sizeof sizes / sizeof *sizes, NFN = 4 };
  static struct live live[NS * NFN];
  uint64_t seed = 1;
  for (size_t align = 16; align <= ((size_t)1 << 20); align <<= 1) {
    int n = 0;
    for (size_t i = 0; i < NS; i++) {
      size_t size = sizes[i];
      void *blocks[NFN];
      blocks[0] = aligned_alloc(align, size);
      check_block(blocks[0], size, align, "aligned_alloc");
      blocks[1] = NULL;
      int r = posix_memalign(&blocks[1], align, size);
      CHECK(r == 0, "posix_memalign(%zu, %zu) returned %d", align, size, r);
      check_block(blocks[1], size, align, "posix_memalign");
      blocks[2] = memalign(align, size);
      check_block(blocks[2], size, align, "memalign");
      /* rounded-up sizes, as C11 aligned_alloc callers often pass */
      size_t round = (size + align - 1) & ~(align - 1);
      blocks[3] = aligned_alloc(align, round);
      check_block(blocks[3], round, align, "aligned_alloc");
      for (int k = 0; k < NFN; k++) {
        if (!blocks[k]) continue;
        live[n].p = blocks[k];
        live[n].usable = malloc_usable_size(blocks[k]);
        live[n].seed = seed++;
        fill(live[n].p, 0, live[n].usable, live[n].seed);
        n++;
      }
    }
    /* all the blocks of this alignment are alive together */
    for (int k = 0; k < n; k++) {
      size_t bad = verify(live[k].p, live[k].usable, live[k].seed);
      CHECK(bad == SIZE_MAX,
            "align %zu: block %p (usable %zu) corrupted at byte %zu", align,
            live[k].p, live[k].usable, bad);
    }
    /* aligned blocks realloc like any other: every other one grows, the
     * rest shrink */
    for (int k = 0; k < n; k++) {
      size_t to = (k & 1) ? live[k].usable / 2 + 1 : live[k].usable + 100;
      void *q = realloc(live[k].p, to);
      CHECK(q != NULL, "realloc of an aligned block (%zu -> %zu) failed",
            live[k].usable, to);
      if (!q) continue;
      size_t keep = live[k].usable < to ? live[k].usable : to;
      size_t bad = verify(q, keep, live[k].seed);
      CHECK(bad == SIZE_MAX, "align %zu: realloc %zu -> %zu lost byte %zu",
            align, live[k].usable, to, bad);
      live[k].p = q;
    }
    for (int k = 0; k < n; k++)
      free(live[k].p);
  }

  /* runs of one aligned class, interleaved with plain mallocs */
  static const size_t run[][2] = {{32, 16},      {64, 48},      {64, 100},
                                  {128, 24},     {256, 300},    {512, 512},
                                  {1024, 1},     {4096, 4000},  {8192, 5000},
                                  {2048, 10000}, {4096, 12288}, {16384, 16384}};
  for (size_t r = 0; r < sizeof run / sizeof *run; r++) {
    enum { N = 1500 };
    static void *a[N], *m[N];
    size_t align = run[r][0], size = run[r][1];
    for (int i = 0; i < N; i++) {
      a[i] = aligned_alloc(align, size);
      check_block(a[i], size, align, "aligned_alloc (run)");
      if (a[i]) fill(a[i], 0, size, (uint64_t)i * 2);
      m[i] = malloc(size);
      check_block(m[i], size, 16, "malloc (run)");
      if (m[i]) fill(m[i], 0, size, (uint64_t)i * 2 + 1);
    }
    for (int i = 0; i < N; i++) {
      CHECK(!a[i] || verify(a[i], size, (uint64_t)i * 2) == SIZE_MAX,
            "aligned run %zu/%zu: block %d corrupted", align, size, i);
      CHECK(!m[i] || verify(m[i], size, (uint64_t)i * 2 + 1) == SIZE_MAX,
            "aligned run %zu/%zu: malloc block %d corrupted", align, size, i);
    }
    for (int i = 0; i < N; i += 2)
      free(a[i]);
    for (int i = 0; i < N; i += 2) {
      a[i] = aligned_alloc(align, size);
      check_block(a[i], size, align, "aligned_alloc (reuse)");
    }
    for (int i = 0; i < N; i++) {
      free(a[i]);
      free(m[i]);
    }
  }
}

#ifdef TEST_ALLOT
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* Aligned requests of 2 KiB alignment or more whose rounded size is 8..16
 * KiB come from small pages of 12 or 16 KiB blocks (the last two classes):
 * their usable size is the block's, the statistics count them there, and
 * allot_free_aligned_sized holds them to that class. */
static size_t paged_expected(size_t align, size_t size) {
  size_t need = (size + align - 1) & ~(align - 1);
  if (align < 2048 || need <= 8192 || need > 16384) return 0;
  return need <= 12288 && align <= 4096 ? 12288 : 16384;
}

static size_t class_blocks(size_t row) {
  allot_stats_t st;
  CHECK(allot_stats_get(&st) == 0, "allot_stats_get failed");
  return st.rows[row].blocks;
}

/* The statistics row of the class of `bsize`-byte blocks (0: none). */
static size_t class_row(size_t bsize) {
  allot_stats_t st;
  CHECK(allot_stats_get(&st) == 0, "allot_stats_get failed");
  for (size_t r = 1; r < ALLOT_STATS_MEDIUM; r++)
    if (st.rows[r].block_size == bsize) return r;
  return 0;
}

static void test_paged_aligned(void) {
  /* checked modes (debug, secure, statistics) keep to the classes by size */
  if (allot_option_get(ALLOT_OPTION_DEBUG) ||
      allot_option_get(ALLOT_OPTION_SECURE) ||
      allot_option_get(ALLOT_OPTION_STATS)) {
    printf("unit_sizes: paged aligned classes not used in checked mode\n");
    return;
  }
  static const size_t aligns[] = {1024, 2048, 4096, 8192, 16384, 32768};
  static const size_t sizes[] = {100,   8192,  8193,  9000,  10240,
                                 12288, 12289, 16384, 16385, 20000};
  size_t r12 = class_row(12288), r16 = class_row(16384);
  CHECK(r12 && r16 == ALLOT_STATS_MEDIUM - 1 && r12 == r16 - 1,
        "the 12 and 16 KiB classes are rows %zu and %zu", r12, r16);
  for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++)
    for (size_t j = 0; j < sizeof sizes / sizeof *sizes; j++) {
      size_t a = aligns[i], n = sizes[j], want = paged_expected(a, n);
      size_t b12 = class_blocks(r12), b16 = class_blocks(r16);
      void *p = NULL;
      int r = posix_memalign(&p, a, n);
      CHECK(r == 0, "posix_memalign(%zu, %zu) returned %d", a, n, r);
      check_block(p, n, a, "posix_memalign (paged)");
      if (!p) continue;
      size_t got12 = class_blocks(r12) - b12, got16 = class_blocks(r16) - b16;
      if (want) {
        CHECK(malloc_usable_size(p) == want,
              "posix_memalign(%zu, %zu): usable %zu, want a %zu-byte block", a,
              n, malloc_usable_size(p), want);
        CHECK(got12 == (want == 12288) && got16 == (want == 16384),
              "posix_memalign(%zu, %zu): 12 KiB class +%zu, 16 KiB +%zu", a, n,
              got12, got16);
      } else {
        CHECK(got12 == 0 && got16 == 0,
              "posix_memalign(%zu, %zu) took a paged block (+%zu, +%zu)", a, n,
              got12, got16);
      }
      fill(p, 0, n, a + n);
      CHECK(verify(p, n, a + n) == SIZE_MAX, "paged block %zu/%zu", a, n);
      allot_free_aligned_sized(p, a, n);
      CHECK(class_blocks(r12) == b12 && class_blocks(r16) == b16,
            "free_aligned_sized(%zu, %zu) left the block counted", a, n);
    }
  /* a paged block freed with the other class's size is refused */
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    void *p = aligned_alloc(4096, 12288);
    allot_free_aligned_sized(p, 4096, 16384);
    _exit(0);
  }
  int st = 0;
  CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFSIGNALED(st) &&
            WTERMSIG(st) == SIGABRT,
        "free_aligned_sized of a 12 KiB block as 16 KiB: status %#x", st);
}
#endif

/* ---- realloc across boundaries -------------------------------------------*/

/* The sizes that straddle every size class: each multiple of 16 and its two
 * neighbours up to 8 KiB, then samples to 10000. */
static size_t boundary_sizes(size_t *out) {
  size_t n = 0;
  out[n++] = 1;
  for (size_t m = 16; m <= 8192; m += 16) {
    out[n++] = m - 1;
    out[n++] = m;
    out[n++] = m + 1;
  }
  for (size_t s = 8200; s <= 10000; s += 97)
    out[n++] = s;
  out[n++] = 10000;
  return n;
}

/* realloc p (holding `have` bytes of the pattern `seed`) to `want`, check the
 * kept bytes, and extend the pattern over the new bytes. */
static void *step(void *p, size_t have, size_t want, uint64_t seed) {
  void *q = realloc(p, want);
  check_block(q, want, 16, "realloc");
  if (!q) {
    fprintf(stderr, "unit_sizes: realloc(%zu -> %zu) failed, giving up\n", have,
            want);
    exit(1);
  }
  size_t keep = have < want ? have : want;
  size_t bad = verify(q, keep, seed);
  CHECK(bad == SIZE_MAX, "realloc %zu -> %zu: byte %zu of %zu lost", have, want,
        bad, keep);
  if (want > keep) fill(q, keep, want, seed);
  return q;
}

static void test_realloc_classes(void) {
  static size_t sizes[4096];
  size_t n = boundary_sizes(sizes);

  /* one block up through every boundary, then down again */
  void *p = malloc(1);
  fill(p, 0, 1, 5);
  size_t have = 1;
  for (size_t i = 0; i < n; i++) {
    p = step(p, have, sizes[i], 5);
    have = sizes[i];
  }
  for (size_t i = n; i-- > 0;) {
    p = step(p, have, sizes[i], 5);
    have = sizes[i];
  }
  free(p);

  /* from each boundary size, to each neighbour and far away, on fresh
   * blocks with a live neighbour allocated right after */
  for (size_t i = 0; i < n; i++) {
    size_t s = sizes[i];
    const size_t targets[] = {s + 1,     s > 1 ? s - 1 : 1, s + 16, s * 2,
                              s / 2 + 1, 3 * s + 7,         1};
    for (size_t t = 0; t < sizeof targets / sizeof *targets; t++) {
      void *a = malloc(s);
      void *nb = malloc(s);
      check_block(a, s, 16, "malloc");
      check_block(nb, s, 16, "malloc");
      if (!a || !nb) exit(1);
      uint64_t seed = i * 8 + t;
      fill(a, 0, s, seed);
      fill(nb, 0, s, ~seed);
      a = step(a, s, targets[t], seed);
      size_t bad = verify(nb, s, ~seed);
      CHECK(bad == SIZE_MAX, "realloc %zu -> %zu clobbered a neighbour at %zu",
            s, targets[t], bad);
      free(a);
      free(nb);
    }
  }
}

static void test_realloc_thresholds(void) {
  const size_t K = 1024, M = 1024 * 1024;
  /* values around the small/medium and medium/large thresholds */
  const size_t around[] = {
      8 * K - 17, 8 * K - 16, 8 * K - 1, 8 * K,      8 * K + 1,  8 * K + 16,
      8 * K + 17, 12 * K,     16 * K,    64 * K + 3, 256 * K,    M - 4096,
      M - 17,     M - 16,     M - 1,     M,          M + 1,      M + 16,
      M + 4096,   M + 4097,   2 * M,     4 * M + 1,  16 * M - 5, 40 * M};
  const size_t na = sizeof around / sizeof *around;
  /* every ordered pair: growth, shrink, and jumps across two thresholds */
  for (size_t i = 0; i < na; i++)
    for (size_t j = 0; j < na; j++) {
      if (i == j) continue;
      size_t from = around[i], to = around[j];
      if (from > 8 * M && to > 8 * M) continue; /* enough big copies */
      uint64_t seed = i * 64 + j;
      void *p = malloc(from);
      check_block(p, from, 16, "malloc");
      if (!p) exit(1);
      fill(p, 0, from, seed);
      p = step(p, from, to, seed);
      /* and back */
      p = step(p, to, from, seed);
      free(p);
    }

  /* small <-> large directly */
  void *p = malloc(100);
  fill(p, 0, 100, 9);
  p = step(p, 100, 5 * M, 9);
  p = step(p, 5 * M, 50, 9);
  p = step(p, 50, 600 * K, 9);
  p = step(p, 600 * K, 3 * M, 9);
  p = step(p, 3 * M, 30 * M, 9);
  p = step(p, 30 * M, 7 * M, 9);
  p = step(p, 7 * M, 9 * K, 9);
  p = step(p, 9 * K, 8 * K, 9);
  free(p);

  /* medium blocks growing in place or moving, between live neighbours */
  enum { NM = 64 };
  void *m[NM];
  size_t msz[NM];
  for (int i = 0; i < NM; i++) {
    msz[i] = 9 * K + (size_t)i * 1500;
    m[i] = malloc(msz[i]);
    check_block(m[i], msz[i], 16, "malloc");
    if (!m[i]) exit(1);
    fill(m[i], 0, msz[i], 1000 + i);
  }
  for (int i = 0; i < NM; i += 4) { /* make holes to grow into */
    free(m[i]);
    m[i] = NULL;
  }
  for (int round = 0; round < 6; round++)
    for (int i = 1; i < NM; i++) {
      if (!m[i]) continue;
      size_t to =
          (round & 1) ? msz[i] / 2 + 8 * K : msz[i] + 3000 + round * 700;
      m[i] = step(m[i], msz[i], to, 1000 + i);
      msz[i] = to;
    }
  for (int i = 0; i < NM; i++) {
    if (!m[i]) continue;
    size_t bad = verify(m[i], msz[i], 1000 + i);
    CHECK(bad == SIZE_MAX, "medium block %d corrupted at %zu", i, bad);
    free(m[i]);
  }
}

/* Enough small blocks to need hundreds of pages and many segments: each
 * block holds its own index at both ends. */
static void test_many(void) {
  enum { MANY = 1500000 };
  uint8_t **v = malloc(MANY * sizeof *v);
  if (!v) exit(1);
  for (size_t i = 0; i < MANY; i++) {
    size_t size = 16 + (i * 37) % 121;
    v[i] = malloc(size);
    if (!v[i]) {
      CHECK(v[i] != NULL, "malloc(%zu) #%zu returned NULL", size, i);
      exit(1);
    }
    memcpy(v[i], &i, 8);
    memcpy(v[i] + size - 8, &i, 8);
  }
  for (int pass = 0; pass < 2; pass++)
    for (size_t i = 0; i < MANY; i++) {
      /* first pass frees every other block, scattered over all pages */
      if (!v[i] || (pass == 0 && (i & 1))) continue;
      size_t size = 16 + (i * 37) % 121, a, b;
      memcpy(&a, v[i], 8);
      memcpy(&b, v[i] + size - 8, 8);
      CHECK(a == i && b == i, "small block #%zu (size %zu) overwritten", i,
            size);
      free(v[i]);
      v[i] = NULL;
    }
  free(v);
}

#ifdef TEST_ALLOT
/* The first block of a fresh page must not sit at the page's start for every
 * class: pages are 64 KiB-aligned, so those blocks would all share one set of
 * the L1 cache (address bits 6-11), and a program reusing one block of each
 * of its classes would miss the cache at every malloc (src/page.c,
 * extend_blocks). Run first, before anything else allocates, so that each
 * class's page is fresh. */
static void test_first_blocks_spread(void) {
  enum { N = 24 };
  void *p[N];
  uint64_t sets = 0; /* the L1 sets (0..63) the first blocks fall in */
  size_t size = 16;
  for (int i = 0; i < N; i++, size += size / 8 + 16) {
    p[i] = malloc(size);
    CHECK(p[i] != NULL, "malloc(%zu)", size);
    sets |= (uint64_t)1 << (((uintptr_t)p[i] >> 6) & 63);
  }
  int distinct = __builtin_popcountll(sets);
  CHECK(distinct >= N / 2,
        "the first blocks of %d fresh classes fall in %d L1 sets", N, distinct);
  for (int i = 0; i < N; i++)
    free(p[i]);
}

/* free's test of a small block (src/api.c, small_valid), seen through
 * allot_owns, which runs it: in a fresh first-class heap's page of each
 * class, the one block handed out is owned, no offset inside it is (the
 * multiple-of-size test), and no other block start of the page is: blocks
 * carved and free carry the free mark, the rest are not carved yet and
 * their memory is zero, which only the carved bound rejects. */
static void test_block_starts(void) {
  /* debug and secure mode place and size blocks their own way (canaries,
   * guards, the size asked as the usable size) */
  if (allot_option_get(ALLOT_OPTION_DEBUG) ||
      allot_option_get(ALLOT_OPTION_SECURE))
    return;
  for (size_t size = 16; size <= 8192;) {
    allot_heap_t *h = allot_heap_new();
    CHECK(h != NULL, "allot_heap_new");
    if (!h) return;
    uint8_t *p = allot_heap_malloc(h, size);
    CHECK(p != NULL, "allot_heap_malloc(%zu)", size);
    if (!p) return;
    size_t bsize = allot_malloc_usable_size(p);
    uint8_t *page = (uint8_t *)((uintptr_t)p & ~(uintptr_t)0xffff);
    CHECK(allot_owns(p), "class %zu: its block %p is not owned", bsize,
          (void *)p);
    int bad = 0;
    for (size_t off = 1; off < bsize && bad < 3; off++)
      if (allot_owns(p + off)) {
        CHECK(0, "class %zu: interior pointer p + %zu owned", bsize, off);
        bad++;
      }
    for (size_t k = 0; (k + 1) * bsize <= 65536 && bad < 3; k++) {
      uint8_t *q = page + k * bsize;
      if (q != p && allot_owns(q)) {
        CHECK(0, "class %zu: block %zu of the page, not handed out, owned",
              bsize, k);
        bad++;
      }
    }
    allot_heap_destroy(h);
    size = bsize + 1;
  }
}
#endif

int main(void) {
#ifdef TEST_ALLOT
  test_first_blocks_spread();
  test_block_starts();
#endif
  test_many();
  test_aligned();
#ifdef TEST_ALLOT
  test_paged_aligned();
#endif
  test_realloc_classes();
  test_realloc_thresholds();
  if (failures) {
    fprintf(stderr, "unit_sizes: %d check(s) FAILED\n", failures);
    return 1;
  }
  printf("unit_sizes: all checks passed\n");
  return 0;
}
