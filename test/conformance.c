/* conformance.c: every allocation function allot provides, against the C,
 * POSIX and glibc contracts: results, errno, alignment, usable sizes, the
 * glibc __libc_* aliases, and that writing a block's whole usable size never
 * reaches a neighbour.
 *
 * One source, three builds:
 *   default        the standard names, linked against liballot.so (TEST_ALLOT)
 *   -DUSE_PREFIX   the allot_* names, linked against allot-prefixed
 *   neither        the standard names against glibc (GLIBC_REFERENCE), to
 *                  check the test itself; allot-only checks are skipped. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(USE_PREFIX) && !defined(TEST_ALLOT)
#define TEST_ALLOT 1
#endif
#ifdef TEST_ALLOT
#include "allot.h"
#endif

#ifdef USE_PREFIX
#define F(name) allot_##name
#else
#define F(name) name
/* C23 names glibc 2.36 lacks; weak so the glibc reference build links. */
void free_sized(void *p, size_t size) __attribute__((weak));
void free_aligned_sized(void *p, size_t align, size_t size)
    __attribute__((weak));
/* glibc's internal names, which allot must also replace. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
#endif

static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond);       \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      failures++;                                                              \
    }                                                                          \
  } while (0)

/* Sizes pass through a volatile so the compiler neither folds the calls nor
 * warns about obviously impossible requests. */
static size_t opaque(size_t x) {
  volatile size_t v = x;
  return v;
}

/* The block a failing realloc must leave alone is read afterwards; hiding
 * the pointer keeps the compiler from calling that a use after free. */
static void *opaque_ptr(void *p) {
  void *volatile v = p;
  return v;
}

static size_t page_size(void) {
  return (size_t)sysconf(_SC_PAGESIZE);
}

static size_t usable(void *p) {
  return F(malloc_usable_size)(p);
}

static int aligned(const void *p, size_t a) {
  return ((uintptr_t)p & (a - 1)) == 0;
}

/* The pattern is a sequence of 64-bit words so checking megabytes is cheap
 * (also under a sanitizer); any byte range can still be checked. Blocks are
 * 16-byte aligned, so the words are aligned. */
static uint64_t pattern_word(uint64_t seed, size_t k) {
  return ((seed + 1) * 0x9E3779B97F4A7C15ull) ^ (k * 0xD6E8FEB86659FD93ull);
}

static uint8_t pattern_byte(uint64_t seed, size_t i) {
  return (uint8_t)(pattern_word(seed, i >> 3) >> ((i & 7) * 8));
}

static void fill(void *p, size_t n, uint64_t seed) {
  uint8_t *b = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = pattern_word(seed, i >> 3);
    memcpy(b + i, &w, 8);
  }
  for (; i < n; i++)
    b[i] = pattern_byte(seed, i);
}

/* Offset of the first byte that differs from the pattern, or SIZE_MAX. */
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

static size_t first_nonzero(const void *p, size_t n) {
  const uint8_t *b = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    if (w) break;
  }
  for (; i < n; i++)
    if (b[i]) return i;
  return SIZE_MAX;
}

/* A checked malloc result: non-NULL, 16-byte aligned, usable >= size. */
static void check_block(void *p, size_t size, const char *what) {
  CHECK(p != NULL, "%s(%zu) returned NULL", what, size);
  if (!p) return;
  CHECK(aligned(p, 16), "%s(%zu) = %p not 16-byte aligned", what, size, p);
  CHECK(usable(p) >= size, "%s(%zu): usable size %zu too small", what, size,
        usable(p));
#ifdef TEST_ALLOT
  CHECK(allot_owns(p), "%s(%zu) = %p is not an allot block", what, size, p);
#endif
}

/* ---- malloc ----------------------------------------------------------- */

static void test_malloc(void) {
  static const size_t sizes[] = {
      0,       1,    7,    8,    15,    16,     17,      100,           1000,
      4096,    8191, 8192, 8193, 65536, 100000, 1 << 20, (1 << 20) + 1, 5 << 20,
      64 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = opaque(sizes[i]);
    void *p = F(malloc)(n);
    check_block(p, n, "malloc");
    if (!p) continue;
    size_t u = usable(p);
    fill(p, u, i);
    size_t bad = verify(p, u, i);
    CHECK(bad == SIZE_MAX, "malloc(%zu): byte %zu changed", n, bad);
    F(free)(p);
  }

  /* malloc(0) gives distinct, freeable blocks (glibc never returns NULL). */
  void *z1 = F(malloc)(opaque(0)), *z2 = F(malloc)(opaque(0));
  CHECK(z1 && z2 && z1 != z2, "malloc(0) twice: %p %p", z1, z2);
  F(free)(z1);
  F(free)(z2);

  static const size_t huge_minus[] = {0,    1,    15,      16,     4095,
                                      4096, 8192, 1 << 20, 1 << 30};
  for (size_t i = 0; i < sizeof huge_minus / sizeof *huge_minus; i++) {
    size_t n = opaque(SIZE_MAX - huge_minus[i]);
    errno = 0;
    void *p = F(malloc)(n);
    CHECK(p == NULL && errno == ENOMEM,
          "malloc(SIZE_MAX-%zu) = %p errno %d, want NULL/ENOMEM", huge_minus[i],
          p, errno);
    if (p) F(free)(p);
  }
  static const size_t too_big[] = {PTRDIFF_MAX, (size_t)PTRDIFF_MAX + 1,
                                   (size_t)1 << 62, (size_t)1 << 48};
  for (size_t i = 0; i < sizeof too_big / sizeof *too_big; i++) {
    errno = 0;
    void *p = F(malloc)(opaque(too_big[i]));
    CHECK(p == NULL && errno == ENOMEM,
          "malloc(%zu) = %p errno %d, want NULL/ENOMEM", too_big[i], p, errno);
    if (p) F(free)(p);
  }
  /* a failure does not break later allocations */
  void *p = F(malloc)(opaque(32));
  check_block(p, 32, "malloc after failure");
  F(free)(p);

  F(free)(NULL);
}

/* ---- calloc ----------------------------------------------------------- */

static void test_calloc(void) {
  static const size_t sizes[] = {
      1,       16,      100, 1000, 8192, 8193, 50000, 1 << 20, (1 << 20) + 16,
      3 << 20, 17 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = sizes[i];
    /* dirty memory of that size first, so calloc must really clear reused
     * blocks; a few rounds let the same block come back */
    for (int round = 0; round < 3; round++) {
      void *d[4];
      for (int k = 0; k < 4; k++) {
        d[k] = F(malloc)(n);
        if (d[k]) memset(d[k], 0xA5, usable(d[k]));
      }
      for (int k = 0; k < 4; k++)
        F(free)(d[k]);
      uint8_t *p = F(calloc)(opaque(1), n);
      check_block(p, n, "calloc");
      if (!p) continue;
      size_t nz = first_nonzero(p, n);
      CHECK(nz == SIZE_MAX, "calloc(1, %zu) round %d: byte %zu is 0x%02x", n,
            round, nz, nz == SIZE_MAX ? 0 : p[nz]);
      F(free)(p);
      uint8_t *q = F(calloc)(n, opaque(1));
      check_block(q, n, "calloc");
      if (q) {
        nz = first_nonzero(q, n);
        CHECK(nz == SIZE_MAX, "calloc(%zu, 1): byte %zu not zero", n, nz);
      }
      F(free)(q);
    }
  }
  /* element count and size both > 1 */
  int *arr = F(calloc)(opaque(10000), sizeof(int));
  check_block(arr, 40000, "calloc");
  if (arr) {
    size_t nz = first_nonzero(arr, 40000);
    CHECK(nz == SIZE_MAX, "calloc(10000, 4): byte %zu not zero", nz);
  }
  F(free)(arr);

  /* zero-sized requests give freeable blocks, like glibc */
  void *z[3] = {F(calloc)(opaque(0), opaque(0)), F(calloc)(opaque(0), 5),
                F(calloc)(5, opaque(0))};
  for (int k = 0; k < 3; k++) {
    CHECK(z[k] != NULL, "calloc with a zero argument (#%d) returned NULL", k);
    F(free)(z[k]);
  }

  static const size_t overflow[][2] = {
      {SIZE_MAX, 2},
      {2, SIZE_MAX},
      {(size_t)1 << 33, (size_t)1 << 33},
      {SIZE_MAX / 2 + 1, 2},
      {SIZE_MAX / 16 + 1, 16},
      {65537, SIZE_MAX / 65536},
  };
  for (size_t i = 0; i < sizeof overflow / sizeof *overflow; i++) {
    errno = 0;
    void *p = F(calloc)(opaque(overflow[i][0]), opaque(overflow[i][1]));
    CHECK(p == NULL && errno == ENOMEM,
          "calloc(%zu, %zu) = %p errno %d, want NULL/ENOMEM", overflow[i][0],
          overflow[i][1], p, errno);
    if (p) F(free)(p);
  }
  /* no overflow, but far too big */
  static const size_t big[][2] = {
      {1, SIZE_MAX}, {SIZE_MAX, 1}, {(size_t)1 << 31, (size_t)1 << 31}};
  for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
    errno = 0;
    void *p = F(calloc)(opaque(big[i][0]), opaque(big[i][1]));
    CHECK(p == NULL && errno == ENOMEM,
          "calloc(%zu, %zu) = %p errno %d, want NULL/ENOMEM", big[i][0],
          big[i][1], p, errno);
    if (p) F(free)(p);
  }
}

/* ---- realloc / reallocarray ------------------------------------------- */

static void test_realloc(void) {
  /* NULL pointer: a plain malloc */
  void *p = F(realloc)(NULL, opaque(100));
  check_block(p, 100, "realloc(NULL, 100)");
  F(free)(p);
  p = F(realloc)(NULL, opaque(0));
  CHECK(p != NULL, "realloc(NULL, 0) returned NULL (glibc gives a block)");
  F(free)(p);

  /* size 0 with a block: glibc frees it and returns NULL */
  static const size_t zsizes[] = {16, 5000, 100000, 2 << 20};
  for (size_t i = 0; i < sizeof zsizes / sizeof *zsizes; i++) {
    p = F(malloc)(zsizes[i]);
    check_block(p, zsizes[i], "malloc");
    uintptr_t addr = (uintptr_t)p;
    void *r = F(realloc)(p, opaque(0));
    CHECK(r == NULL, "realloc(%#lx [%zu], 0) = %p, want NULL (freed)",
          (unsigned long)addr, zsizes[i], r);
#ifdef TEST_ALLOT
    /* the old block must really be freed */
    CHECK(!allot_owns((void *)addr), "realloc(p [%zu], 0) did not free p",
          zsizes[i]);
#else
    (void)addr;
#endif
    if (r) F(free)(r);
  }

  /* growth and shrink keep the contents */
  static const size_t chain[] = {
      1,       24,      200,    3000,     8192,
      8193,    20000,   300000, 1 << 20,  (1 << 20) + 1,
      9 << 20, 2 << 20, 500000, 9000,     8000,
      100,     17,      4,      40 << 20, 33};
  size_t cur = 0;
  p = NULL;
  for (size_t i = 0; i < sizeof chain / sizeof *chain; i++) {
    size_t n = chain[i];
    uint8_t *q = F(realloc)(p, opaque(n));
    check_block(q, n, "realloc");
    if (!q) break;
    size_t keep = cur < n ? cur : n;
    size_t bad = verify(q, keep, 77);
    CHECK(bad == SIZE_MAX, "realloc %zu -> %zu: byte %zu lost", cur, n, bad);
    fill(q, n, 77);
    p = q;
    cur = n;
  }
  F(free)(p);

  /* a failed realloc leaves the block alone */
  static const size_t kinds[] = {40, 6000, 200000, 3 << 20};
  static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 4096, PTRDIFF_MAX,
                                (size_t)PTRDIFF_MAX + 1};
  for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
    p = F(malloc)(kinds[i]);
    check_block(p, kinds[i], "malloc");
    if (!p) continue;
    fill(p, kinds[i], i);
    for (size_t k = 0; k < sizeof huge / sizeof *huge; k++) {
      errno = 0;
      void *r = F(realloc)(opaque_ptr(p), opaque(huge[k]));
      CHECK(r == NULL && errno == ENOMEM,
            "realloc([%zu], %zu) = %p errno %d, want NULL/ENOMEM", kinds[i],
            huge[k], r, errno);
      if (r) {
        p = r;
        break;
      }
      size_t bad = verify(p, kinds[i], i);
      CHECK(bad == SIZE_MAX, "failed realloc of a %zu block changed byte %zu",
            kinds[i], bad);
      CHECK(usable(p) >= kinds[i], "failed realloc shrank the block");
    }
    /* still a live block: grow it for real */
    uint8_t *q = F(realloc)(p, kinds[i] * 2);
    check_block(q, kinds[i] * 2, "realloc after failure");
    if (q) {
      size_t bad = verify(q, kinds[i], i);
      CHECK(bad == SIZE_MAX, "realloc after failure lost byte %zu", bad);
      p = q;
    }
    F(free)(p);
  }
}

static void test_reallocarray(void) {
  int *a = F(reallocarray)(NULL, opaque(100), sizeof(int));
  check_block(a, 400, "reallocarray(NULL, 100, 4)");
  if (!a) return;
  for (int i = 0; i < 100; i++)
    a[i] = i * 3;
  int *b = F(reallocarray)(a, opaque(5000), sizeof(int));
  check_block(b, 20000, "reallocarray(p, 5000, 4)");
  if (!b) {
    F(free)(a);
    return;
  }
  int ok = 1;
  for (int i = 0; i < 100; i++)
    ok &= b[i] == i * 3;
  CHECK(ok, "reallocarray lost contents");

  static const size_t overflow[][2] = {
      {SIZE_MAX, 2}, {(size_t)1 << 32, (size_t)1 << 32}, {SIZE_MAX / 4 + 1, 4}};
  for (size_t i = 0; i < sizeof overflow / sizeof *overflow; i++) {
    errno = 0;
    void *r = F(reallocarray)(opaque_ptr(b), opaque(overflow[i][0]),
                              opaque(overflow[i][1]));
    CHECK(r == NULL && errno == ENOMEM,
          "reallocarray(p, %zu, %zu) = %p errno %d, want NULL/ENOMEM",
          overflow[i][0], overflow[i][1], r, errno);
    if (r) {
      b = r;
      break;
    }
    ok = 1;
    for (int k = 0; k < 100; k++)
      ok &= b[k] == k * 3;
    CHECK(ok, "failed reallocarray changed the block");
  }
  errno = 0;
  void *r = F(reallocarray)(NULL, opaque(SIZE_MAX), opaque(SIZE_MAX));
  CHECK(r == NULL && errno == ENOMEM,
        "reallocarray(NULL, SIZE_MAX, SIZE_MAX) = %p errno %d", r, errno);
  F(free)(b);
}

/* ---- aligned allocation ----------------------------------------------- */

static void check_aligned_block(void *p, size_t align, size_t size,
                                const char *what) {
  check_block(p, size, what);
  if (!p) return;
  CHECK(aligned(p, align), "%s(%zu, %zu) = %p not aligned", what, align, size,
        p);
  size_t u = usable(p);
  fill(p, u, align ^ size);
  size_t bad = verify(p, u, align ^ size);
  CHECK(bad == SIZE_MAX, "%s(%zu, %zu): byte %zu changed", what, align, size,
        bad);
}

static void test_aligned_alloc(void) {
  static const size_t sizes[] = {1, 16, 100, 4096, 10000, 300000};
  for (size_t a = 1; a <= ((size_t)4 << 20); a <<= 1)
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      /* C17: the size need not be a multiple of the alignment */
      void *p = F(aligned_alloc)(opaque(a), opaque(sizes[i]));
      check_aligned_block(p, a, sizes[i], "aligned_alloc");
      F(free)(p);
    }
  void *p = F(aligned_alloc)(opaque(64), opaque(0));
  CHECK(p != NULL && aligned(p, 64), "aligned_alloc(64, 0) = %p", p);
  F(free)(p);

#ifndef GLIBC_REFERENCE /* glibc < 2.38 rounds the alignment up instead */
  static const size_t bad_align[] = {
      0, 3, 24, 48, 1000, 4097, SIZE_MAX, ((size_t)1 << 20) + 16};
  for (size_t i = 0; i < sizeof bad_align / sizeof *bad_align; i++) {
    errno = 0;
    p = F(aligned_alloc)(opaque(bad_align[i]), opaque(64));
    CHECK(p == NULL && errno == EINVAL,
          "aligned_alloc(%zu, 64) = %p errno %d, want NULL/EINVAL",
          bad_align[i], p, errno);
    if (p) F(free)(p);
  }
#endif
  static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 8192, PTRDIFF_MAX};
  for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
    errno = 0;
    p = F(aligned_alloc)(opaque(64), opaque(huge[i]));
    CHECK(p == NULL && errno == ENOMEM,
          "aligned_alloc(64, %zu) = %p errno %d, want NULL/ENOMEM", huge[i], p,
          errno);
    if (p) F(free)(p);
    errno = 0;
    p = F(aligned_alloc)(opaque(1 << 20), opaque(huge[i]));
    CHECK(p == NULL && errno == ENOMEM,
          "aligned_alloc(1 MiB, %zu) = %p errno %d, want NULL/ENOMEM", huge[i],
          p, errno);
    if (p) F(free)(p);
  }
  /* absurd alignments: either fail cleanly or honour them */
  static const size_t absurd[] = {(size_t)1 << 63, (size_t)1 << 50,
                                  (size_t)1 << 40, (size_t)1 << 33};
  for (size_t i = 0; i < sizeof absurd / sizeof *absurd; i++) {
    errno = 0;
    p = F(aligned_alloc)(opaque(absurd[i]), opaque(16));
    CHECK(p == NULL ? errno == ENOMEM || errno == EINVAL
                    : aligned(p, absurd[i]),
          "aligned_alloc(%zu, 16) = %p errno %d", absurd[i], p, errno);
    if (p) F(free)(p);
  }
}

static void test_posix_memalign(void) {
  void *sentinel = (void *)(uintptr_t)0x1234;
  static const size_t bad_align[] = {0, 1, 2, 4, 3, 12, 24, 48, 1000, SIZE_MAX};
  for (size_t i = 0; i < sizeof bad_align / sizeof *bad_align; i++) {
    void *out = sentinel;
    errno = 0;
    int r = F(posix_memalign)(&out, opaque(bad_align[i]), opaque(64));
    CHECK(r == EINVAL, "posix_memalign(align %zu) returned %d, want EINVAL",
          bad_align[i], r);
    CHECK(out == sentinel, "posix_memalign(align %zu) wrote *out on error",
          bad_align[i]);
    CHECK(errno == 0, "posix_memalign(align %zu) set errno to %d", bad_align[i],
          errno);
    if (r == 0) F(free)(out);
  }
  static const size_t sizes[] = {0, 1, 64, 5000, 100000, (1 << 20) + 5};
  for (size_t a = sizeof(void *); a <= ((size_t)2 << 20); a <<= 1)
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      void *out = sentinel;
      int r = F(posix_memalign)(&out, opaque(a), opaque(sizes[i]));
      CHECK(r == 0, "posix_memalign(%zu, %zu) returned %d", a, sizes[i], r);
      if (r) continue;
      CHECK(out != sentinel, "posix_memalign did not store the block");
      check_aligned_block(out, a, sizes[i], "posix_memalign");
      F(free)(out);
    }
  /* absurd alignments: fail cleanly or honour them */
  static const size_t absurd[] = {(size_t)1 << 63, (size_t)1 << 50,
                                  (size_t)1 << 40};
  for (size_t i = 0; i < sizeof absurd / sizeof *absurd; i++) {
    void *out = sentinel;
    int r = F(posix_memalign)(&out, opaque(absurd[i]), opaque(100));
    CHECK(r == 0 ? out != sentinel && aligned(out, absurd[i])
                 : (r == ENOMEM || r == EINVAL) && out == sentinel,
          "posix_memalign(%zu, 100) = %d, %p", absurd[i], r, out);
    if (r == 0) F(free)(out);
    errno = 0;
    void *p = F(memalign)(opaque(absurd[i]), opaque(100));
    CHECK(p ? aligned(p, absurd[i]) : errno == ENOMEM || errno == EINVAL,
          "memalign(%zu, 100) = %p errno %d", absurd[i], p, errno);
    if (p) F(free)(p);
  }
  static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 100000, PTRDIFF_MAX};
  for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
    void *out = sentinel;
    errno = 0;
    int r = F(posix_memalign)(&out, opaque(4096), opaque(huge[i]));
    CHECK(r == ENOMEM, "posix_memalign(4096, %zu) returned %d, want ENOMEM",
          huge[i], r);
    CHECK(out == sentinel, "posix_memalign(4096, %zu) wrote *out on error",
          huge[i]);
    if (r == 0) F(free)(out);
  }
}

static void test_memalign(void) {
  static const size_t sizes[] = {1, 100, 9000, 2000000};
  for (size_t a = 1; a <= ((size_t)1 << 20); a <<= 1)
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      void *p = F(memalign)(opaque(a), opaque(sizes[i]));
      check_aligned_block(p, a, sizes[i], "memalign");
      F(free)(p);
    }
  /* glibc: alignment 0 means none; others round up to a power of two */
  static const size_t odd[][2] = {{0, 16},        {3, 4},       {24, 32},
                                  {48, 64},       {1000, 1024}, {5000, 8192},
                                  {70000, 131072}};
  /* through a pointer: glibc declares memalign with alloc_align, and UBSan
   * would hold alignment 0 against the result */
  void *(*volatile memalign_fn)(size_t, size_t) = F(memalign);
  for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
    void *p = memalign_fn(opaque(odd[i][0]), opaque(200));
    check_aligned_block(p, odd[i][1], 200, "memalign");
    F(free)(p);
  }
  errno = 0;
  void *p = F(memalign)(opaque(SIZE_MAX), opaque(16));
  CHECK(p == NULL && errno == EINVAL, "memalign(SIZE_MAX, 16) = %p errno %d", p,
        errno);
  errno = 0;
  p = F(memalign)(opaque(64), opaque(SIZE_MAX));
  CHECK(p == NULL && errno == ENOMEM, "memalign(64, SIZE_MAX) = %p errno %d", p,
        errno);
}

static void test_valloc_pvalloc(void) {
  size_t pg = page_size();
  const size_t sizes[] = {0,      1,          pg - 1,        pg,
                          pg + 1, 3 * pg + 7, (1 << 20) + 1, 5 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = sizes[i];
    void *p = F(valloc)(opaque(n));
    check_aligned_block(p, pg, n, "valloc");
    F(free)(p);

    p = F(pvalloc)(opaque(n));
    size_t rounded = (n + pg - 1) / pg * pg;
    check_aligned_block(p, pg, rounded, "pvalloc");
    F(free)(p);
  }
  static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 4095,
                                PTRDIFF_MAX};
  for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
    errno = 0;
    void *p = F(valloc)(opaque(huge[i]));
    CHECK(p == NULL && errno == ENOMEM, "valloc(%zu) = %p errno %d", huge[i], p,
          errno);
    errno = 0;
    void *q = F(pvalloc)(opaque(huge[i]));
    CHECK(q == NULL && errno == ENOMEM, "pvalloc(%zu) = %p errno %d", huge[i],
          q, errno);
  }
}

static void test_usable_size(void) {
  CHECK(F(malloc_usable_size)(NULL) == 0, "malloc_usable_size(NULL) = %zu",
        F(malloc_usable_size)(NULL));
  for (size_t n = 0; n < 20000; n += (n < 600 ? 1 : 97)) {
    void *p = F(malloc)(opaque(n));
    check_block(p, n, "malloc");
    /* the usable size is a property of the block: it must not change */
    size_t u1 = usable(p), u2 = usable(p);
    CHECK(u1 == u2, "malloc_usable_size unstable: %zu then %zu", u1, u2);
    F(free)(p);
  }
}

static void test_free_variants(void) {
  F(free)(NULL);
#ifndef USE_PREFIX
  if (!free_sized || !free_aligned_sized) {
#ifdef GLIBC_REFERENCE
    printf("conformance: free_sized/free_aligned_sized absent (glibc), "
           "skipped\n");
    return;
#else
    CHECK(free_sized && free_aligned_sized,
          "free_sized/free_aligned_sized are not exported");
    return;
#endif
  }
#endif
  F(free_sized)(NULL, 0);
  F(free_sized)(NULL, 100);
  F(free_aligned_sized)(NULL, 64, 0);
  static const size_t sizes[] = {0, 1, 16, 100, 8192, 8193, 70000, 3 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = sizes[i];
    void *p = F(malloc)(opaque(n));
    check_block(p, n, "malloc");
    F(free_sized)(p, n);
    p = F(calloc)(opaque(1), n);
    check_block(p, n, "calloc");
    F(free_sized)(p, n);
    for (size_t a = 16; a <= 65536; a <<= 2) {
      p = F(aligned_alloc)(opaque(a), opaque(n));
      check_aligned_block(p, a, n, "aligned_alloc");
      F(free_aligned_sized)(p, a, n);
    }
  }
  /* blocks freed by size are reused like any other */
  void *again = F(malloc)(opaque(100));
  check_block(again, 100, "malloc after free_sized");
  F(free)(again);
}

#ifndef USE_PREFIX
static void test_libc_aliases(void) {
  size_t pg = page_size();
  void *p = __libc_malloc(opaque(100));
  check_block(p, 100, "__libc_malloc");
  if (p) fill(p, 100, 1);
  p = __libc_realloc(p, opaque(20000));
  check_block(p, 20000, "__libc_realloc");
  if (p) {
    size_t bad = verify(p, 100, 1);
    CHECK(bad == SIZE_MAX, "__libc_realloc lost byte %zu", bad);
  }
  __libc_free(p);

  uint8_t *c = __libc_calloc(opaque(300), 7);
  check_block(c, 2100, "__libc_calloc");
  if (c) CHECK(first_nonzero(c, 2100) == SIZE_MAX, "__libc_calloc not zeroed");
  free(c); /* blocks cross freely between the two sets of names */

  p = malloc(opaque(64));
  check_block(p, 64, "malloc");
  __libc_free(p);

  p = __libc_memalign(opaque(4096), opaque(5000));
  check_aligned_block(p, 4096, 5000, "__libc_memalign");
  __libc_free(p);
  p = __libc_valloc(opaque(100));
  check_aligned_block(p, pg, 100, "__libc_valloc");
  free(p);
  p = __libc_pvalloc(opaque(100));
  check_aligned_block(p, pg, pg, "__libc_pvalloc");
  __libc_free(p);
  __libc_free(NULL);

  errno = 0;
  p = __libc_malloc(opaque(SIZE_MAX));
  CHECK(p == NULL && errno == ENOMEM, "__libc_malloc(SIZE_MAX) = %p errno %d",
        p, errno);
}
#endif

/* The allocator really is the one under test. */
static void test_ownership(void) {
#if defined(USE_PREFIX)
  /* The prefixed library never touches the system malloc and vice versa. */
  void *sys = malloc(opaque(64));
  void *mine = allot_malloc(opaque(64));
  CHECK(!allot_owns(sys), "allot_owns() claims a glibc block");
  CHECK(allot_owns(mine), "allot_owns() denies an allot block");
  free(sys);
  allot_free(mine);
#elif defined(TEST_ALLOT)
  /* libc's own internal allocations go through the replacement too */
  char *s = strdup("hello, allocator");
  CHECK(s && allot_owns(s), "strdup's block %p is not from allot", (void *)s);
  free(s);
  void *p = malloc(opaque(64));
  CHECK(allot_owns(p), "malloc is not replaced by allot");
  free(p);
#endif
#ifdef TEST_ALLOT
  int local;
  CHECK(!allot_owns(&local), "allot_owns(stack address) != 0");
  CHECK(!allot_owns(NULL), "allot_owns(NULL) != 0");
  uint8_t *q = F(malloc)(opaque(64));
  CHECK(!allot_owns(q + 16), "allot_owns(interior pointer) != 0");
  F(free)(q);
  uint8_t *m = F(malloc)(opaque(100000));
  CHECK(!allot_owns(m + 16), "allot_owns(interior medium pointer) != 0");
  F(free)(m);
  CHECK(allot_version() == ALLOT_VERSION, "allot_version() %d != header %d",
        allot_version(), ALLOT_VERSION);
#endif
}

/* ---- neighbours ------------------------------------------------------- */

static uint64_t rng_state = 0x853c49e6748fea9bull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static size_t random_size(void) {
  uint64_t r = rnd() % 1000;
  if (r < 700) return rnd() % 513;
  if (r < 900) return 513 + rnd() % (8192 - 512);
  if (r < 990) return 8193 + rnd() % (256 << 10);
  return (256 << 10) + rnd() % (3 << 20);
}

enum { NBLOCKS = 3000 };
struct blk {
  uint8_t *p;
  size_t size, usable;
  uint64_t seed;
};

static void verify_all(struct blk *b, const char *stage) {
  for (int i = 0; i < NBLOCKS; i++) {
    if (!b[i].p) continue;
    size_t bad = verify(b[i].p, b[i].usable, b[i].seed);
    CHECK(bad == SIZE_MAX,
          "%s: block %d (%p, size %zu, usable %zu) corrupted at byte %zu",
          stage, i, (void *)b[i].p, b[i].size, b[i].usable, bad);
  }
}

static void set_block(struct blk *b, void *p, size_t size, uint64_t seed) {
  b->p = p;
  b->size = size;
  b->usable = p ? usable(p) : 0;
  b->seed = seed;
  if (p) fill(p, b->usable, seed);
}

/* Fill each block's whole usable size, then verify every block: any
 * overlap or an understated usable size shows up as a changed pattern. */
static void test_neighbours(void) {
  static struct blk b[NBLOCKS];
  uint64_t seed = 1;
  for (int i = 0; i < NBLOCKS; i++) {
    size_t n = random_size();
    void *p = F(malloc)(n);
    check_block(p, n, "malloc");
    set_block(&b[i], p, n, seed++);
  }
  verify_all(b, "after malloc");
  for (int i = 0; i < NBLOCKS; i += 2) {
    F(free)(b[i].p);
    size_t n = random_size();
    uint8_t *p = F(calloc)(1, n);
    check_block(p, n, "calloc");
    if (p) {
      size_t nz = first_nonzero(p, n);
      CHECK(nz == SIZE_MAX, "calloc(1, %zu) reusing memory: byte %zu not zero",
            n, nz);
    }
    set_block(&b[i], p, n, seed++);
  }
  verify_all(b, "after calloc");
  for (int i = 0; i < NBLOCKS; i += 3) {
    size_t n = random_size() + 1; /* realloc to 0 would free */
    uint8_t *p = F(realloc)(b[i].p, n);
    check_block(p, n, "realloc");
    if (!p) continue;
    size_t keep = b[i].usable < n ? b[i].usable : n;
    size_t bad = verify(p, keep, b[i].seed);
    CHECK(bad == SIZE_MAX, "realloc %zu -> %zu lost byte %zu", b[i].size, n,
          bad);
    set_block(&b[i], p, n, seed++);
  }
  verify_all(b, "after realloc");
  for (int i = 0; i < NBLOCKS; i += 5) {
    size_t a = (size_t)16 << (rnd() % 10);
    size_t n = random_size();
    void *p = NULL;
    F(free)(b[i].p);
    int r = F(posix_memalign)(&p, a, n);
    CHECK(r == 0 && aligned(p, a), "posix_memalign(%zu, %zu) = %d, %p", a, n, r,
          p);
    set_block(&b[i], r == 0 ? p : NULL, n, seed++);
  }
  verify_all(b, "after posix_memalign");
#ifdef USE_PREFIX
  allot_collect();
#else
  malloc_trim(0);
#endif
  verify_all(b, "after trim");
  for (int i = 0; i < NBLOCKS; i++)
    F(free)(b[i].p);
}

int main(void) {
  test_malloc();
  test_calloc();
  test_realloc();
  test_reallocarray();
  test_aligned_alloc();
  test_posix_memalign();
  test_memalign();
  test_valloc_pvalloc();
  test_usable_size();
  test_free_variants();
#ifndef USE_PREFIX
  test_libc_aliases();
#endif
  test_ownership();
  test_neighbours();
  if (failures) {
    fprintf(stderr, "conformance: %d check(s) FAILED\n", failures);
    return 1;
  }
  printf("conformance: all checks passed\n");
  return 0;
}
