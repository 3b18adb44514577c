/* pstress.c: a multi-threaded stress test through the prefixed allot_* API
 * only, so it runs where a sanitizer owns malloc (scripts/sanitize.sh builds
 * allot-prefixed and this test with ASan and with TSan; TSan then checks
 * allot's own synchronisation: lock-free cross-thread frees, the futex
 * locks, heap abandonment and adoption, the purge thread).
 *
 * Generations of THREADS threads; each runs OPS random operations on its own
 * slots — malloc, calloc, realloc, aligned_alloc, free, free_sized, usable
 * size and ownership checks, first-class heap allocation — and hands blocks
 * to other threads through small mutex-protected inboxes, so most frees of
 * handed blocks are cross-thread. Each thread also owns a first-class heap
 * that it deletes (its blocks live on) or destroys (after taking its blocks
 * back) before exiting. Blocks a thread still holds when it exits go to a
 * pool the next generation frees: frees into abandoned heaps. Every block
 * carries its size, an id and a pattern at both ends, checked before it is
 * freed.
 *
 *   hostile_pstress [threads] [ops] [generations] */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define SLOTS 128
#define INBOX 64
#define MAXT 16

typedef struct {
  uint8_t *p;
  size_t size;
  uint64_t id;
  size_t align; /* asked of aligned_alloc, else 16 */
  int heap;     /* 1: from this thread's first-class heap */
} blk_t;

typedef struct {
  pthread_mutex_t lock;
  blk_t q[INBOX];
  int n;
} inbox_t;

static int nthreads = 4;
static long nops = 50000;
static inbox_t inboxes[MAXT];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static blk_t *pool;
static size_t pool_n, pool_cap;
static atomic_int failures;
static atomic_long cross_frees;

static void fail(const char *what, const blk_t *b) {
  if (atomic_fetch_add(&failures, 1) < 20)
    fprintf(stderr, "pstress: FAILED: %s (block %p size %zu)\n", what,
            b ? (void *)b->p : NULL, b ? b->size : 0);
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* size, id, then a pattern over the first and last 64 bytes */
static uint8_t pat(const blk_t *b, size_t i) {
  return (uint8_t)((b->id * 31) ^ (i * 7) ^ (b->size >> 3));
}

static void stamp(blk_t *b) {
  size_t n = b->size;
  for (size_t i = 0; i < n && i < 64; i++)
    b->p[i] = pat(b, i);
  for (size_t i = n > 64 ? n - 64 : 0; i < n; i++)
    b->p[i] = pat(b, i);
}

static int intact(const blk_t *b, size_t upto) {
  size_t n = upto < b->size ? upto : b->size;
  for (size_t i = 0; i < n && i < 64; i++)
    if (b->p[i] != pat(b, i)) return 0;
  if (n == b->size)
    for (size_t i = n > 64 ? n - 64 : 0; i < n; i++)
      if (b->p[i] != pat(b, i)) return 0;
  return 1;
}

static size_t pick_size(uint64_t *s) {
  uint64_t r = rnd(s) % 1000;
  if (r < 700) return rnd(s) % 512;
  if (r < 900) return 512 + rnd(s) % (8 * KIB);
  if (r < 995) return 8 * KIB + rnd(s) % (300 * KIB);
  return MIB + rnd(s) % (2 * MIB);
}

static void admit(blk_t *b, void *p, size_t size, uint64_t id, size_t align) {
  b->p = p;
  b->size = size;
  b->id = id;
  b->align = align;
  b->heap = 0;
  if (!p) {
    fail("allocation returned NULL", b);
    b->size = 0;
    return;
  }
  if ((uintptr_t)p & (align - 1)) fail("misaligned block", b);
  if (allot_malloc_usable_size(p) < size) fail("usable size too small", b);
  if (size && !allot_owns(p)) fail("allot_owns denies a live block", b);
  stamp(b);
}

static void release(blk_t *b, int sized) {
  if (!b->p) return;
  if (!intact(b, SIZE_MAX)) fail("block corrupted", b);
  if (sized && !b->heap && b->align > 16)
    allot_free_aligned_sized(b->p, b->align, b->size);
  else if (sized && !b->heap)
    allot_free_sized(b->p, b->size);
  else
    allot_free(b->p);
  b->p = NULL;
}

static void handoff(int to, blk_t *b) {
  inbox_t *in = &inboxes[to];
  pthread_mutex_lock(&in->lock);
  int ok = in->n < INBOX;
  if (ok) in->q[in->n++] = *b;
  pthread_mutex_unlock(&in->lock);
  if (!ok) release(b, 0);
  b->p = NULL;
}

static void drain(int self, uint64_t *s, int all) {
  blk_t got[INBOX];
  inbox_t *in = &inboxes[self];
  pthread_mutex_lock(&in->lock);
  int n = in->n;
  memcpy(got, in->q, sizeof got[0] * (size_t)n);
  in->n = 0;
  pthread_mutex_unlock(&in->lock);
  for (int i = 0; i < n; i++) {
    blk_t *b = &got[i];
    if (!all && rnd(s) % 4 == 0 && !b->heap && b->size) {
      /* realloc a block another thread allocated */
      size_t ns = pick_size(s) % (64 * KIB) + 1;
      if (!intact(b, SIZE_MAX)) fail("handed block corrupted", b);
      void *q = allot_realloc(b->p, ns);
      blk_t nb = *b;
      nb.p = q;
      if (!q) {
        fail("realloc of a handed block returned NULL", b);
        continue;
      }
      if (!intact(&nb, ns)) fail("realloc lost a handed block's data", b);
      nb.size = ns;
      nb.align = 16;
      stamp(&nb);
      release(&nb, 1);
    } else {
      release(b, rnd(s) & 1);
    }
    atomic_fetch_add(&cross_frees, 1);
  }
}

static void *worker(void *arg) {
  int self = (int)(intptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(self + 1) + (uint64_t)nops;
  uint64_t id = (uint64_t)self << 40;
  blk_t slot[SLOTS];
  memset(slot, 0, sizeof slot);
  allot_heap_t *heap = allot_heap_new();
  if (!heap) fail("allot_heap_new failed", NULL);
  /* half the threads destroy their heap at the end: they never hand its
   * blocks to others, which could still be freeing them then */
  int destroy = (int)(rnd(&s) & 1);
  for (long op = 0; op < nops; op++) {
    blk_t *b = &slot[rnd(&s) % SLOTS];
    uint64_t r = rnd(&s) % 100;
    if (b->p && r < 30) {
      release(b, r & 1);
    } else if (b->p && r < 42 && !(destroy && b->heap)) {
      int to = (int)(rnd(&s) % (uint64_t)nthreads);
      if (to == self) to = (to + 1) % nthreads;
      handoff(to, b);
    } else if (b->p && r < 52 && !b->heap) {
      size_t ns = pick_size(&s);
      if (!intact(b, SIZE_MAX)) fail("block corrupted before realloc", b);
      void *q = allot_realloc(b->p, ns);
      if (!q && ns) {
        fail("realloc returned NULL", b);
        continue;
      }
      blk_t nb = *b;
      nb.p = q;
      if (ns && !intact(&nb, ns)) fail("realloc lost data", b);
      if (ns == 0) {
        b->p = NULL; /* realloc(p, 0) freed it */
        continue;
      }
      admit(b, q, ns, id++, 16);
    } else if (b->p && r < 56) {
      if (!intact(b, SIZE_MAX)) fail("block corrupted", b);
      if (b->size && !allot_owns(b->p))
        fail("allot_owns denies a live block", b);
    } else if (!b->p) {
      size_t size = pick_size(&s);
      if (r < 60) {
        admit(b, allot_calloc(1, size), size, id++, 16);
      } else if (r < 66) {
        size_t align = (size_t)1 << (4 + rnd(&s) % 13);
        admit(b, allot_aligned_alloc(align, size), size, id++, align);
      } else if (r < 76 && heap) {
        admit(b, allot_heap_malloc(heap, size), size, id++, 16);
        b->heap = 1;
      } else {
        admit(b, allot_malloc(size), size, id++, 16);
      }
    }
    if ((op & 63) == 0) drain(self, &s, 0);
  }
  drain(self, &s, 1);
  if (heap && !destroy) {
    allot_heap_delete(heap); /* its blocks live on in the default heap */
  } else if (heap) {
    /* every block of the heap is in our slots: check them, then let the
     * destroy free them all at once */
    for (int i = 0; i < SLOTS; i++)
      if (slot[i].p && slot[i].heap) {
        if (!intact(&slot[i], SIZE_MAX)) fail("block corrupted", &slot[i]);
        slot[i].p = NULL;
      }
    allot_heap_destroy(heap);
  }
  for (int i = 0; i < SLOTS; i++)
    slot[i].heap = 0;
  /* what is left outlives this thread */
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < SLOTS; i++) {
    if (!slot[i].p) continue;
    if (pool_n == pool_cap) {
      pool_cap = pool_cap ? pool_cap * 2 : 1024;
      pool = realloc(pool, pool_cap * sizeof *pool); /* the system malloc */
    }
    pool[pool_n++] = slot[i];
  }
  pthread_mutex_unlock(&pool_lock);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) nthreads = atoi(argv[1]);
  if (argc > 2) nops = atol(argv[2]);
  int gens = argc > 3 ? atoi(argv[3]) : 4;
  if (nthreads < 2 || nthreads > MAXT) nthreads = 4;
  for (int i = 0; i < MAXT; i++)
    pthread_mutex_init(&inboxes[i].lock, NULL);
  for (int g = 0; g < gens; g++) {
    pthread_t t[MAXT];
    for (int i = 0; i < nthreads; i++)
      if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i)) {
        fprintf(stderr, "pstress: pthread_create failed\n");
        return 1;
      }
    /* while they run, free what the previous generation left */
    pthread_mutex_lock(&pool_lock);
    size_t n = pool_n;
    blk_t *old = pool;
    pool = NULL;
    pool_n = pool_cap = 0;
    pthread_mutex_unlock(&pool_lock);
    for (size_t i = 0; i < n; i++)
      release(&old[i], 0);
    free(old);
    for (int i = 0; i < nthreads; i++)
      pthread_join(t[i], NULL);
  }
  for (size_t i = 0; i < pool_n; i++)
    release(&pool[i], 0);
  for (int i = 0; i < nthreads; i++) {
    for (int k = 0; k < inboxes[i].n; k++)
      release(&inboxes[i].q[k], 0);
    inboxes[i].n = 0;
  }
  free(pool);
  allot_collect();
  char report[256] = "";
  if (allot_check_report(report, sizeof report) != 0) {
    fprintf(stderr, "pstress: FAILED: allot_check: %s\n", report);
    atomic_fetch_add(&failures, 1);
  }
  int f = atomic_load(&failures);
  printf("pstress: %d threads x %ld ops x %d generations, %ld cross-thread "
         "frees, %d failures\n",
         nthreads, nops, gens, atomic_load(&cross_frees), f);
  return f ? 1 : 0;
}
