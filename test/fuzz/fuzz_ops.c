/* fuzz_ops.c: a libFuzzer target that drives allot's prefixed API with
 * sequences of operations and checks every block against a model.
 *
 * The input is decoded into operations — malloc, calloc, realloc,
 * reallocarray, the aligned allocators, free (plain, sized, aligned-sized,
 * realloc to 0), usable size, ownership, collect, invalid requests, thread
 * restarts — each tagged with one of NTHREADS threads. Ops run in lock step,
 * each on its thread (the fuzzer's own thread is thread 0), so a block is
 * often freed or reallocated by a thread other than the one that allocated
 * it, and a thread restart abandons a heap that still owns live blocks. A
 * BURST op runs the next ops concurrently instead, each on the thread that
 * owns its slot (slot % NTHREADS), so the model stays race-free while the
 * allocator sees real concurrency.
 *
 * The model holds, per slot, the block's pointer, requested size, usable size
 * (taken at allocation), alignment and a fill seed. Every block's whole
 * usable area is filled with a pattern and checked before it is freed or
 * reallocated and by CHECK ops; new blocks are checked for alignment, usable
 * size (at least the request, not absurdly more) and overlap with every live
 * block. Any mismatch prints what went wrong and aborts, which libFuzzer
 * reports with the input.
 *
 * Built with clang -fsanitize=fuzzer (test/verify.cmake, scripts/fuzz.sh),
 * or with -DFUZZ_STANDALONE into a program that replays the given files:
 * the corpus replay test, usable with any compiler. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "allot.h"

#define NTHREADS 4
#define NSLOTS 64
#define MAXOPS 4096
#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

enum {
  OP_MALLOC,
  OP_CALLOC,
  OP_REALLOC,
  OP_ALIGNED,
  OP_FREE,
  OP_USABLE,
  OP_REALLOCARRAY,
  OP_CHECK,
  OP_COLLECT,
  OP_RESTART,
  OP_BURST,
  OP_BAD,
  OP_BATCH,
  OP_FREE_RANGE,
  OP_MOVE,
  OP_EXT, /* first-class heaps, walking, checking: sub-op in c % 8 */
};

typedef struct {
  uint8_t code, thread, flag, slot;
  uint8_t a, b, c;
  uint8_t sb; /* the slot byte as given: its top bits pick a heap */
} op_t;

typedef struct {
  uint8_t *p;
  size_t size;   /* requested */
  size_t usable; /* malloc_usable_size at allocation */
  size_t align;  /* alignment asked for (16 for plain allocations) */
  uint64_t seed;
  /* how it may be freed besides free(): FREE_SIZED (malloc, calloc,
   * realloc), FREE_ALIGNED_SIZED (aligned_alloc), or neither (posix_memalign,
   * memalign, valloc: C23 gives them no sized free) */
  int kind;
  int heap; /* first-class heap id (thread * 2 + k) or -1: a default heap */
} slot_t;

static slot_t slots[NSLOTS];
/* first-class heaps: heaps[t][k] belongs to thread t, only t touches it */
static allot_heap_t *heaps[NTHREADS][2];
static op_t ops[MAXOPS];
static size_t nops, cur_op;
static uint64_t seed_counter;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fuzz_ops: FAILED at op %zu: ", cur_op);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ---- patterns ---------------------------------------------------------- */

static uint64_t mix(uint64_t x) {
  x ^= x >> 31;
  x *= 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  return x;
}

static uint8_t pat(uint64_t seed, size_t i) {
  return (uint8_t)(mix(seed + (i >> 3)) >> ((i & 7) * 8));
}

/* The pattern loops are the harness's hottest code and say nothing about
 * allot: no coverage instrumentation for them, so the fuzzer's time goes to
 * the allocator. */
#if defined(__clang__) && __clang_major__ >= 13
#define NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define NO_COVERAGE
#endif

/* Big blocks are filled and checked at their ends and at one word every 512
 * bytes (every OS page is touched): full fills would make large ops
 * dominate. */
#define FULL_LIMIT (256 * KIB)
#define EDGE (16 * KIB)

/* Bytes [from, to) of the pattern (little-endian words of mix()). */
NO_COVERAGE static void fill_range(uint8_t *p, size_t from, size_t to,
                                   uint64_t seed) {
  size_t i = from;
  for (; i < to && (i & 7); i++)
    p[i] = pat(seed, i);
  for (; i + 8 <= to; i += 8) {
    uint64_t w = mix(seed + (i >> 3));
    memcpy(p + i, &w, 8);
  }
  for (; i < to; i++)
    p[i] = pat(seed, i);
}

/* First byte in [from, to) that differs from the pattern, or SIZE_MAX. */
NO_COVERAGE static size_t check_range(const uint8_t *p, size_t from, size_t to,
                                      uint64_t seed) {
  size_t i = from;
  for (; i < to && (i & 7); i++)
    if (p[i] != pat(seed, i)) return i;
  for (; i + 8 <= to; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w != mix(seed + (i >> 3))) break;
  }
  for (; i < to; i++)
    if (p[i] != pat(seed, i)) return i;
  return SIZE_MAX;
}

static void fill(slot_t *s) {
  size_t n = s->usable;
  if (n <= FULL_LIMIT) {
    fill_range(s->p, 0, n, s->seed);
    return;
  }
  fill_range(s->p, 0, EDGE, s->seed);
  for (size_t i = EDGE; i < n - EDGE; i += 512)
    fill_range(s->p, i, i + 8, s->seed);
  fill_range(s->p, n - EDGE, n, s->seed);
}

/* Check bytes [0, upto) of s (upto <= usable), as fill() wrote them. */
static void check_prefix(const slot_t *s, size_t upto, const char *when) {
  size_t n = upto, u = s->usable;
  size_t bad;
  if (u <= FULL_LIMIT) {
    bad = check_range(s->p, 0, n, s->seed);
  } else {
    bad = check_range(s->p, 0, n < EDGE ? n : EDGE, s->seed);
    for (size_t i = EDGE; i < n && i < u - EDGE && bad == SIZE_MAX; i += 512)
      bad = check_range(s->p, i, i + 8 < n ? i + 8 : n, s->seed);
    if (bad == SIZE_MAX && n > u - EDGE)
      bad = check_range(s->p, u - EDGE, n, s->seed);
  }
  if (bad != SIZE_MAX)
    fail("%s: block %p (size %zu, usable %zu) byte %zu is 0x%02x, expected "
         "0x%02x",
         when, (void *)s->p, s->size, s->usable, bad, s->p[bad],
         pat(s->seed, bad));
}

/* ---- the model ----------------------------------------------------------- */

static pthread_mutex_t overlap_lock = PTHREAD_MUTEX_INITIALIZER;

/* A new block: alignment, usable size, ownership, no overlap with any live
 * block. Called with the slot still empty. */
enum { FREE_PLAIN, FREE_SIZED, FREE_ALIGNED_SIZED, FREE_SIZED_REALLOC };

static void admit(int idx, void *ptr, size_t size, size_t align, int kind) {
  uint8_t *p = ptr;
  if ((uintptr_t)p & (align - 1))
    fail("block %p of size %zu not aligned to %zu", ptr, size, align);
  if ((uintptr_t)p & 15) fail("block %p not 16-byte aligned", ptr);
  size_t u = allot_malloc_usable_size(p);
  if (u < size) fail("usable size %zu < requested %zu", u, size);
  /* generous bound: size classes are <= 12.5 % apart, medium chunks and
   * large mappings round up, cached large mappings have <= 25 % slack */
  size_t limit = size + size / 4 + 16 * KIB;
  if (align > 16) limit += 2 * align;
  if (kind == FREE_SIZED_REALLOC) /* realloc keeps a block down to half */
    limit = 2 * size + 16 * KIB;
  if (u > limit)
    fail("usable size %zu far above requested %zu (align %zu)", u, size, align);
  if (size > 0 && !allot_owns(p))
    fail("allot_owns(%p) == 0 for a new block", ptr);
  pthread_mutex_lock(&overlap_lock);
  for (int j = 0; j < NSLOTS; j++) {
    slot_t *o = &slots[j];
    if (!o->p || j == idx) continue;
    if (o->p == p)
      fail("block %p handed out twice (slots %d, %d)", ptr, j, idx);
    if (p < o->p + o->usable && o->p < p + u)
      fail("block %p+%zu overlaps live block %p+%zu", ptr, u, (void *)o->p,
           o->usable);
  }
  slot_t *s = &slots[idx];
  s->p = p;
  s->size = size;
  s->usable = u;
  s->align = align;
  s->kind = kind;
  s->heap = -1;
  s->seed = mix(__atomic_add_fetch(&seed_counter, 1, __ATOMIC_RELAXED) +
                (uintptr_t)p);
  pthread_mutex_unlock(&overlap_lock);
}

static void vacate(slot_t *s) {
  pthread_mutex_lock(&overlap_lock);
  s->p = NULL;
  s->size = s->usable = 0;
  pthread_mutex_unlock(&overlap_lock);
}

static void check_slot(slot_t *s, const char *when) {
  if (!s->p) return;
  if (s->size > 0 && !allot_owns(s->p))
    fail("%s: allot_owns(%p) == 0 for a live block", when, (void *)s->p);
  size_t u = allot_malloc_usable_size(s->p);
  if (u != s->usable)
    fail("%s: usable size of %p changed from %zu to %zu", when, (void *)s->p,
         s->usable, u);
  check_prefix(s, s->usable, when);
}

/* Size from two bytes: tiny, small, medium or large by the top two bits. */
static size_t decode_size(uint8_t hi, uint8_t lo) {
  size_t v = ((size_t)(hi & 63) << 8) | lo;
  switch (hi >> 6) {
  case 0:
    return v & 1023; /* 0 .. 1023 */
  case 1:
    return v % (8 * KIB + 200); /* up to and across the small limit */
  case 2:
    return 8 * KIB + v * 64; /* medium: 8 KiB .. 1 MiB + 8 KiB */
  default:
    return MIB - 4 * KIB + v * 160; /* around and above 1 MiB: up to 3.5 MiB */
  }
}

static void release(int idx, int how) {
  slot_t *s = &slots[idx];
  if (!s->p) return;
  check_slot(s, "before free");
  void *p = s->p;
  size_t size = s->size, align = s->align;
  int kind = s->kind;
  vacate(s);
  switch (how & 3) {
  case 0:
    allot_free(p);
    break;
  case 1:
  case 2:
    if (kind == FREE_SIZED || kind == FREE_SIZED_REALLOC)
      allot_free_sized(p, size);
    else if (kind == FREE_ALIGNED_SIZED)
      allot_free_aligned_sized(p, align, size);
    else
      allot_free(p);
    break;
  default:
    errno = 0;
    if (allot_realloc(p, 0) != NULL) fail("realloc(p, 0) did not return NULL");
    break;
  }
}

static void do_malloc(int idx, size_t size) {
  release(idx, 0);
  errno = 0;
  void *p = allot_malloc(size);
  if (!p) fail("malloc(%zu) returned NULL (errno %d)", size, errno);
  admit(idx, p, size, 16, FREE_SIZED);
  fill(&slots[idx]);
}

NO_COVERAGE static size_t zero_check(const uint8_t *p, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w) break;
  }
  for (; i < n; i++)
    if (p[i]) return i;
  return SIZE_MAX;
}

static void do_calloc(int idx, size_t n, size_t size) {
  release(idx, 1);
  void *p = allot_calloc(n, size);
  if (!p) fail("calloc(%zu, %zu) returned NULL", n, size);
  admit(idx, p, n * size, 16, FREE_SIZED);
  size_t bad = zero_check(p, n * size);
  if (bad != SIZE_MAX)
    fail("calloc(%zu, %zu): byte %zu is not zero", n, size, bad);
  fill(&slots[idx]);
}

static void do_realloc(int idx, size_t size, int array, size_t n) {
  slot_t *s = &slots[idx];
  if (!s->p) {
    if (array) {
      void *p = allot_reallocarray(NULL, n, size);
      if (!p) fail("reallocarray(NULL, %zu, %zu) returned NULL", n, size);
      admit(idx, p, n * size, 16, FREE_SIZED);
    } else {
      void *p = allot_realloc(NULL, size);
      if (!p) fail("realloc(NULL, %zu) returned NULL", size);
      admit(idx, p, size, 16, FREE_SIZED);
    }
    fill(s);
    return;
  }
  check_slot(s, "before realloc");
  size_t total = array ? n * size : size;
  if (total == 0) { /* realloc(p, 0) frees: covered by release() */
    release(idx, 3);
    return;
  }
  slot_t old = *s;
  vacate(s);
  void *q =
      array ? allot_reallocarray(old.p, n, size) : allot_realloc(old.p, total);
  if (!q) fail("realloc(%p, %zu) returned NULL", (void *)old.p, total);
  size_t keep = old.usable < total ? old.usable : total;
  slot_t moved = old;
  moved.p = q;
  if (keep > 0) {
    /* the pattern is a function of the offset only: check it at q */
    moved.usable = old.usable;
    check_prefix(&moved, keep, "after realloc");
  }
  admit(idx, q, total, 16, FREE_SIZED_REALLOC);
  /* kept in place, the block keeps the alignment it was made with: one of
   * more than MEDIUM_MAX / 4 made it a large block, whose heap is none
   * (allot_heap_of, ownership_check) whatever its size */
  if (q == old.p && old.align > s->align) s->align = old.align;
  if (old.heap >= 0) {
    /* a first-class heap's block stays in it when realloc keeps it in place;
     * one that must move goes to the calling thread's default heap */
    allot_heap_t *h = heaps[old.heap / 2][old.heap % 2];
    if (q == old.p)
      s->heap = old.heap;
    else if (h && allot_heap_of(q) == h)
      fail("realloc moved a block and left it in its first-class heap");
  }
  fill(s);
}

static void do_aligned(int idx, int api, uint8_t abyte, size_t size) {
  release(idx, 2);
  size_t align = (size_t)1 << (abyte % 24); /* up to 8 MiB */
  void *p = NULL;
  switch (api & 3) {
  case 0:
    p = allot_aligned_alloc(align, size);
    break;
  case 1:
    if (align < sizeof(void *)) align = sizeof(void *);
    if (allot_posix_memalign(&p, align, size) != 0) p = NULL;
    break;
  case 2:
    p = allot_memalign(align, size);
    break;
  default:
    if (abyte & 0x80) {
      align = 4096;
      p = allot_valloc(size);
    } else { /* glibc's memalign rounds other alignments up */
      size_t odd = align + 8;
      p = allot_memalign(odd, size);
      for (align = 16; align < odd; align <<= 1) {
      }
    }
    break;
  }
  if (!p)
    fail("aligned allocation (api %d, align %zu, size %zu) failed", api & 3,
         align, size);
  admit(idx, p, size, align < 16 ? 16 : align,
        (api & 3) == 0 ? FREE_ALIGNED_SIZED : FREE_PLAIN);
  fill(&slots[idx]);
}

static void do_usable(int idx) {
  slot_t *s = &slots[idx];
  if (!s->p) return;
  check_slot(s, "usable");
  /* rewrite the whole usable area with a fresh pattern: a block's usable
   * bytes are its own */
  s->seed = mix(s->seed + 1);
  fill(s);
}

/* Sizes the compiler must not see through (it rightly warns about them). */
static volatile size_t size_max = SIZE_MAX;

/* Requests that must fail cleanly, leaving every block intact. */
static void do_bad(int which, int idx) {
  errno = 0;
  void *p;
  switch (which % 7) {
  case 0:
    p = allot_malloc(size_max - (size_t)which);
    if (p || errno != ENOMEM) fail("malloc(huge): %p errno %d", p, errno);
    break;
  case 1:
    p = allot_calloc(size_max / 8 + 2, 16);
    if (p || errno != ENOMEM) fail("calloc overflow: %p errno %d", p, errno);
    break;
  case 2:
    p = allot_aligned_alloc(48, 64);
    if (p || errno != EINVAL) fail("aligned_alloc(48): %p errno %d", p, errno);
    break;
  case 3: {
    void *q = &q;
    if (allot_posix_memalign(&q, 24, 64) != EINVAL || q != &q)
      fail("posix_memalign(24) did not fail with EINVAL untouched");
    break;
  }
  case 4: {
    slot_t *s = &slots[idx];
    if (!s->p) break;
    p = allot_reallocarray(s->p, size_max / 2, 4);
    if (p || errno != ENOMEM)
      fail("reallocarray overflow: %p errno %d", p, errno);
    check_slot(s, "after failed reallocarray");
    break;
  }
  case 5: {
    slot_t *s = &slots[idx];
    if (!s->p) break;
    p = allot_realloc(s->p, size_max / 2 + 1);
    if (p || errno != ENOMEM) fail("realloc(huge): %p errno %d", p, errno);
    check_slot(s, "after failed realloc");
    break;
  }
  default:
    p = allot_memalign((size_t)1 << 20, size_max - MIB);
    if (p || errno != ENOMEM) fail("memalign(huge): %p errno %d", p, errno);
    break;
  }
}

/* ---- first-class heaps, walks, checks --------------------------------------
 */

/* End heap k of thread t (called on thread t): destroy drops its blocks from
 * the model, delete hands them to the thread's default heap. */
static void heap_end(int t, int k, int destroy) {
  allot_heap_t *h = heaps[t][k];
  if (!h) return;
  int id = t * 2 + k;
  pthread_mutex_lock(&overlap_lock);
  for (int j = 0; j < NSLOTS; j++) {
    if (!slots[j].p || slots[j].heap != id) continue;
    if (destroy) {
      slots[j].p = NULL;
      slots[j].size = slots[j].usable = 0;
    } else {
      slots[j].heap = -1;
    }
  }
  pthread_mutex_unlock(&overlap_lock);
  if (destroy)
    allot_heap_destroy(h);
  else
    allot_heap_delete(h);
  heaps[t][k] = NULL;
}

static void heaps_done(int t) {
  for (int k = 0; k < 2; k++)
    heap_end(t, k, 0);
}

static void do_heap_alloc(const op_t *o, int t, int k) {
  allot_heap_t *h = heaps[t][k];
  if (!h) return;
  int idx = o->slot;
  size_t size = decode_size(o->a, o->b);
  size_t align = 16;
  int kind = FREE_SIZED;
  void *p;
  slot_t *s = &slots[idx];
  if (o->flag == 3 && s->p && s->heap == t * 2 + k) {
    /* allot_heap_realloc keeps the block in its heap */
    check_slot(s, "before heap realloc");
    slot_t old = *s;
    vacate(s);
    if (size == 0) size = 1;
    p = allot_heap_realloc(h, old.p, size);
    if (!p) fail("heap_realloc(%p, %zu) returned NULL", (void *)old.p, size);
    slot_t moved = old;
    moved.p = p;
    size_t keep = old.usable < size ? old.usable : size;
    if (keep) check_prefix(&moved, keep, "after heap realloc");
    kind = FREE_SIZED_REALLOC;
  } else {
    release(idx, 0);
    switch (o->flag) {
    case 0:
      p = allot_heap_malloc(h, size);
      break;
    case 1:
      p = allot_heap_calloc(h, 1, size);
      if (p && zero_check(p, size) != SIZE_MAX)
        fail("heap_calloc(%zu): not zeroed", size);
      break;
    case 2:
      align = (size_t)1 << ((o->c >> 3) % 21);
      p = allot_heap_aligned_alloc(h, align, size);
      kind = FREE_ALIGNED_SIZED;
      break;
    default:
      p = allot_heap_realloc(h, NULL, size);
      break;
    }
    if (!p) fail("first-class heap allocation of %zu failed", size);
  }
  admit(idx, p, size, align < 16 ? 16 : align, kind);
  s->heap = t * 2 + k;
  if (size > 0 && allot_heap_of(p) != h)
    fail("allot_heap_of(%p) is not the heap that made it", p);
  fill(s);
}

typedef struct {
  uint8_t *p;
  size_t usable;
  int found;
} live_t;

typedef struct {
  live_t *live;
  size_t n;
} walk_ctx_t;

static int live_cmp(const void *a, const void *b) {
  const live_t *x = a, *y = b;
  return x->p < y->p ? -1 : x->p > y->p;
}

static int walk_visit(const allot_walk_info_t *info, void *arg) {
  walk_ctx_t *ctx = arg;
  if (info->type != ALLOT_WALK_BLOCK) return 0;
  live_t key = {info->addr, 0, 0};
  live_t *l = bsearch(&key, ctx->live, ctx->n, sizeof key, live_cmp);
  if (!l) return 0;
  if (!info->in_use)
    fail("allot_walk reports live block %p as free", info->addr);
  if (info->size != l->usable)
    fail("allot_walk reports block %p with %zu bytes, usable size is %zu",
         info->addr, info->size, l->usable);
  l->found++;
  return 0;
}

/* Every live block (but zero-size ones) is walked once, as live, with its
 * usable size. */
static void walk_check(void) {
  live_t live[NSLOTS];
  walk_ctx_t ctx = {live, 0};
  for (int j = 0; j < NSLOTS; j++)
    if (slots[j].p && slots[j].size > 0)
      live[ctx.n++] = (live_t){slots[j].p, slots[j].usable, 0};
  qsort(live, ctx.n, sizeof live[0], live_cmp);
  if (allot_walk(walk_visit, &ctx) != 0) fail("allot_walk failed");
  for (size_t j = 0; j < ctx.n; j++)
    if (live[j].found != 1)
      fail("allot_walk visited live block %p %d times", (void *)live[j].p,
           live[j].found);
}

/* allot_heap_of and allot_owns on live blocks, their insides and strangers. */
static void ownership_check(void) {
  int local = 0;
  if (allot_owns(&local)) fail("allot_owns(stack address) != 0");
  for (int j = 0; j < NSLOTS; j++) {
    slot_t *s = &slots[j];
    if (!s->p || s->size == 0) continue;
    if (s->usable > 16 && allot_owns(s->p + 16))
      fail("allot_owns(%p + 16) != 0 inside a live block", (void *)s->p);
    if (s->heap >= 0) {
      allot_heap_t *h = heaps[s->heap / 2][s->heap % 2];
      if (allot_heap_of(s->p) != h)
        fail("allot_heap_of(%p) lost its first-class heap", (void *)s->p);
    } else if (s->usable <= 512 * KIB && s->align <= 4096 &&
               allot_heap_of(s->p) == NULL) {
      fail("allot_heap_of(%p) == NULL for a small or medium block",
           (void *)s->p);
    }
  }
}

static void do_ext(const op_t *o, int t) {
  int k = (o->sb >> 6) & 1;
  switch (o->c % 8) {
  case 0:
    if (!heaps[t][k] && !(heaps[t][k] = allot_heap_new()))
      fail("allot_heap_new failed");
    break;
  case 1:
  case 6:
    do_heap_alloc(o, t, k);
    break;
  case 2:
    heap_end(t, k, !(o->flag & 2));
    break;
  case 3:
    if (heaps[t][k]) allot_heap_collect(heaps[t][k]);
    break;
  case 4:
    walk_check();
    break;
  case 5: {
    char report[256];
    report[0] = 0;
    if (allot_check_report(report, sizeof report) != 0)
      fail("allot_check: %s", report);
    break;
  }
  default:
    ownership_check();
    break;
  }
}

/* ---- executing one op ---------------------------------------------------- */

static void exec_op(const op_t *o) {
  int idx = o->slot;
  switch (o->code) {
  case OP_MALLOC:
    do_malloc(idx, decode_size(o->a, o->b));
    break;
  case OP_CALLOC:
    do_calloc(idx, 1 + o->c % 16, decode_size(o->a, o->b) / (1 + o->c % 16));
    break;
  case OP_REALLOC:
    do_realloc(idx, decode_size(o->a, o->b), 0, 0);
    break;
  case OP_REALLOCARRAY:
    do_realloc(idx, decode_size(o->a & 0x7f, o->b) / 4, 1, o->c % 5);
    break;
  case OP_ALIGNED:
    do_aligned(idx, o->flag, o->c, decode_size(o->a, o->b));
    break;
  case OP_FREE:
    release(idx, o->flag);
    break;
  case OP_USABLE:
    do_usable(idx);
    break;
  case OP_CHECK:
    check_slot(&slots[idx], "check");
    break;
  case OP_COLLECT:
    allot_collect();
    break;
  case OP_BAD:
    do_bad(o->a, idx);
    break;
  case OP_BATCH: {
    size_t size = decode_size(o->a & 0x7f, o->b); /* small and tiny only */
    for (int k = 0; k < 1 + o->c % 16; k++)
      do_malloc((idx + k) % NSLOTS, size);
    break;
  }
  case OP_FREE_RANGE:
    for (int k = 0; k < 1 + o->c % 32; k++)
      release((idx + k) % NSLOTS, o->flag);
    break;
  case OP_EXT:
    do_ext(o, o->thread);
    break;
  case OP_MOVE: { /* hand a block to another slot (and so another thread) */
    int to = (idx + 1 + o->a) % NSLOTS;
    release(to, o->flag);
    pthread_mutex_lock(&overlap_lock);
    slots[to] = slots[idx];
    slots[idx].p = NULL;
    slots[idx].usable = slots[idx].size = 0;
    pthread_mutex_unlock(&overlap_lock);
    break;
  }
  default:
    break;
  }
}

/* Slot-local ops: the only ones a BURST runs concurrently. */
static int burst_safe(const op_t *o) {
  switch (o->code) {
  case OP_MALLOC:
  case OP_CALLOC:
  case OP_REALLOC:
  case OP_REALLOCARRAY:
  case OP_ALIGNED:
  case OP_FREE:
  case OP_USABLE:
  case OP_CHECK:
  case OP_BAD:
    return 1;
  default:
    return 0;
  }
}

/* ---- worker threads -------------------------------------------------------
 * Thread 0 is the fuzzer's thread. Workers wait on a futex word for a job:
 * either a run of ops all tagged with their thread, or their share of a
 * burst. */
typedef struct {
  pthread_t tid;
  _Atomic uint32_t state; /* 0 idle, 1 job posted, 2 exit requested */
  _Atomic uint32_t done;  /* bumped when a job is finished */
  size_t begin, end;
  int burst;   /* run the ops of the range whose slot this thread owns */
  int cleanup; /* instead: end this thread's first-class heaps */
  int running;
} worker_t;

static worker_t workers[NTHREADS];

static void futex_wait(_Atomic uint32_t *w, uint32_t v) {
  for (int i = 0; i < 100; i++) {
    if (atomic_load_explicit(w, memory_order_acquire) != v) return;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  }
  while (atomic_load_explicit(w, memory_order_acquire) == v)
    syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w) {
  syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void run_range(int self, size_t begin, size_t end, int burst) {
  for (size_t i = begin; i < end; i++) {
    if (burst && (!burst_safe(&ops[i]) || ops[i].slot % NTHREADS != self))
      continue;
    if (!burst) cur_op = i;
    exec_op(&ops[i]);
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  int self = (int)(w - workers);
  for (;;) {
    futex_wait(&w->state, 0);
    uint32_t st = atomic_load_explicit(&w->state, memory_order_acquire);
    if (st == 2) break;
    if (w->cleanup)
      heaps_done(self);
    else
      run_range(self, w->begin, w->end, w->burst);
    atomic_store_explicit(&w->state, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->done, 1, memory_order_release);
    futex_wake(&w->done);
  }
  return NULL;
}

static void worker_start(int t) {
  worker_t *w = &workers[t];
  atomic_store(&w->state, 0);
  if (pthread_create(&w->tid, NULL, worker_main, w) != 0)
    fail("pthread_create failed");
  w->running = 1;
}

static void worker_post(int t, size_t begin, size_t end, int burst) {
  worker_t *w = &workers[t];
  w->begin = begin;
  w->end = end;
  w->burst = burst;
  w->cleanup = 0;
  atomic_store_explicit(&w->state, 1, memory_order_release);
  futex_wake(&w->state);
}

static uint32_t worker_ticket(int t) {
  return atomic_load_explicit(&workers[t].done, memory_order_acquire);
}

static void worker_wait(int t, uint32_t ticket) {
  futex_wait(&workers[t].done, ticket);
}

/* End thread t's first-class heaps, on thread t. */
static void cleanup_on(int t) {
  if (t == 0) {
    heaps_done(0);
    return;
  }
  if (!heaps[t][0] && !heaps[t][1]) return;
  worker_t *w = &workers[t];
  uint32_t ticket = worker_ticket(t);
  w->cleanup = 1;
  atomic_store_explicit(&w->state, 1, memory_order_release);
  futex_wake(&w->state);
  worker_wait(t, ticket);
}

static void worker_restart(int t) {
  worker_t *w = &workers[t];
  cleanup_on(t); /* a heap's owner must end it: do so before it exits */
  atomic_store_explicit(&w->state, 2, memory_order_release);
  futex_wake(&w->state);
  pthread_join(w->tid, NULL);
  worker_start(t);
}

static void run_on(int t, size_t begin, size_t end) {
  if (t == 0) {
    run_range(0, begin, end, 0);
    return;
  }
  uint32_t ticket = worker_ticket(t);
  worker_post(t, begin, end, 0);
  worker_wait(t, ticket);
}

static void run_burst(size_t begin, size_t end) {
  uint32_t tickets[NTHREADS];
  for (int t = 1; t < NTHREADS; t++) {
    tickets[t] = worker_ticket(t);
    worker_post(t, begin, end, 1);
  }
  run_range(0, begin, end, 1);
  for (int t = 1; t < NTHREADS; t++)
    worker_wait(t, tickets[t]);
}

/* ---- decoding and the entry point ---------------------------------------- */

static size_t decode(const uint8_t *d, size_t n) {
  size_t i = 0, k = 0;
  while (i < n && k < MAXOPS) {
    uint8_t b = d[i++];
    op_t o = {.code = b & 15, .thread = (b >> 4) & 3, .flag = b >> 6};
    uint8_t arg[4] = {0, 0, 0, 0};
    for (int j = 0; j < 4 && i < n; j++)
      arg[j] = d[i++];
    o.slot = arg[0] % NSLOTS;
    o.sb = arg[0];
    o.a = arg[1];
    o.b = arg[2];
    o.c = arg[3];
    ops[k++] = o;
  }
  return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int started;
  if (!started) {
    for (int t = 1; t < NTHREADS; t++)
      worker_start(t);
    started = 1;
  }
  nops = decode(data, size);
  size_t i = 0;
  while (i < nops) {
    op_t *o = &ops[i];
    cur_op = i;
    if (o->code == OP_BURST) {
      size_t end = i + 1 + (o->a % 32);
      if (end > nops) end = nops;
      run_burst(i + 1, end);
      i = end;
      continue;
    }
    if (o->code == OP_RESTART) {
      if (o->thread != 0) worker_restart(o->thread);
      i++;
      continue;
    }
    /* the longest run of ops for the same thread, in one hand-off */
    size_t j = i + 1;
    while (j < nops && ops[j].thread == o->thread && ops[j].code != OP_BURST &&
           ops[j].code != OP_RESTART)
      j++;
    run_on(o->thread, i, j);
    i = j;
  }
  /* every input starts from an empty model: free what is left, checking it */
  cur_op = nops;
  for (int t = 0; t < NTHREADS; t++)
    cleanup_on(t);
  for (int k = 0; k < NSLOTS; k++)
    release(k, k);
  return 0;
}

#ifdef FUZZ_STANDALONE
/* Replay files given on the command line (the corpus), without libFuzzer. */
int main(int argc, char **argv) {
  static uint8_t buf[1 << 16];
  int n = 0;
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (!f) {
      fprintf(stderr, "fuzz_ops: cannot open %s\n", argv[i]);
      return 1;
    }
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    n++;
  }
  printf("fuzz_ops: replayed %d inputs\n", n);
  return n ? 0 : 1;
}
#endif
