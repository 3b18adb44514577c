/* test_api_heap.c: first-class heaps (allot_heap_*), through the prefixed API.
 *
 * - allocation of every kind from a heap, blocks attributed to it, contents
 *   kept by realloc, calloc zeroed, alignment honoured;
 * - destroy with live blocks held (and partly freed) by several threads:
 *   afterwards no block is live, the heap's memory is gone, repeating it does
 *   not grow the process, and the heap check passes;
 * - destroy gives the heap's memory back at once: resident and mapped bytes
 *   drop by (nearly) all the heap held, in every mode;
 * - delete: the blocks stay valid, belong to the default heap, and can be
 *   freed from any thread;
 * - misuse (another thread allocating, destroying a default heap, using a
 *   destroyed heap) aborts with one "allot: " line.
 * In debug and secure mode destroy frees the blocks through the checked path
 * and then drops them from the quarantine (docs/api.md): the same checks
 * apply there (tests api.heap.debug and api.heap.secure). */
#include "test_api_common.h"

#include <pthread.h>
#include <stdint.h>

#define NTHREADS 3
#define PER_THREAD 600

static size_t pick_size(size_t i) {
  switch (i % 10) {
  case 0:
    return 20000 + i * 8; /* medium */
  case 1:
    return (size_t)(1 << 20) + 4096 * (i % 5 + 1); /* large */
  case 2:
    return 8192;
  default:
    return 8 + (i * 37) % 3000; /* small */
  }
}

static void fill(void *p, size_t n, unsigned char v) {
  memset(p, v, n < 256 ? n : 256);
}
static int intact(const void *p, size_t n, unsigned char v) {
  const unsigned char *c = p;
  for (size_t i = 0; i < (n < 256 ? n : 256); i++)
    if (c[i] != v) return 0;
  return 1;
}

static void test_basic(void) {
  allot_heap_t *h = allot_heap_new();
  CHECK(h != NULL, "allot_heap_new failed");
  CHECK(h != allot_heap_default(), "a new heap is not the default heap");
  void *p[40];
  for (size_t i = 0; i < 40; i++) {
    size_t n = pick_size(i);
    p[i] = allot_heap_malloc(h, n);
    CHECK(p[i] && allot_owns(p[i]), "heap_malloc(%zu)", n);
    CHECK(allot_heap_of(p[i]) == h, "block of %zu bytes not in its heap", n);
    CHECK(allot_malloc_usable_size(p[i]) >= n, "usable size");
    fill(p[i], n, (unsigned char)i);
  }
  void *zero = allot_heap_malloc(h, 0);
  CHECK(zero && allot_heap_of(zero) == h, "heap_malloc(0) in the heap");
  allot_free(zero);
  unsigned char *z = allot_heap_calloc(h, 1000, 30);
  CHECK(z && allot_heap_of(z) == h, "heap_calloc");
  for (size_t i = 0; z && i < 30000; i++)
    if (z[i]) {
      CHECK(0, "calloc memory not zero at %zu", i);
      break;
    }
  size_t aligns[] = {32, 64, 4096, 65536, 1 << 21};
  for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++) {
    void *a = allot_heap_aligned_alloc(h, aligns[i], 100 * (i + 1));
    CHECK(a && ((uintptr_t)a & (aligns[i] - 1)) == 0, "aligned %zu", aligns[i]);
    CHECK(allot_heap_of(a) == h || aligns[i] >= (1 << 21),
          "aligned block in its heap");
    allot_free(a);
  }
  CHECK(allot_heap_aligned_alloc(h, 48, 10) == NULL && errno == EINVAL,
        "bad alignment");
  /* realloc keeps contents and the heap, across kinds */
  size_t sizes[] = {100, 3000, 50000, 3 << 20, 200, 16};
  void *r = allot_heap_malloc(h, 10);
  fill(r, 10, 0x5a);
  size_t kept = 10;
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    r = allot_heap_realloc(h, r, sizes[i]);
    if (kept > sizes[i]) kept = sizes[i];
    CHECK(r && intact(r, kept, 0x5a), "realloc to %zu kept contents", sizes[i]);
    CHECK(allot_heap_of(r) == h || sizes[i] > (1 << 20),
          "realloc to %zu stayed in the heap", sizes[i]);
    fill(r, sizes[i], 0x5a);
    kept = sizes[i];
  }
  /* a block of the default heap moves into h */
  void *d = allot_malloc(100);
  fill(d, 100, 7);
  d = allot_heap_realloc(h, d, 5000);
  CHECK(allot_heap_of(d) == h && intact(d, 100, 7), "realloc into the heap");
  for (size_t i = 0; i < 40; i++) {
    CHECK(intact(p[i], pick_size(i), (unsigned char)i), "block %zu intact", i);
    allot_free(p[i]);
  }
  allot_free(z);
  allot_free(r);
  allot_free(d);
  allot_heap_collect(h);
  CHECK(allot_check() == 0, "check after basic use");
  allot_heap_destroy(h);
}

/* ---- destroy with live blocks in several threads ---------------------- */

typedef struct share {
  void *blocks[PER_THREAD];
  size_t sizes[PER_THREAD];
  pthread_barrier_t *bar;
} share_t;

static void *holder(void *arg) {
  share_t *s = arg;
  /* free every third block (cross-thread frees into the heap), write to
   * the rest, then wait while the owner destroys the heap */
  for (size_t i = 0; i < PER_THREAD; i++) {
    if (i % 3 == 0) {
      allot_free(s->blocks[i]);
      s->blocks[i] = NULL;
    } else {
      fill(s->blocks[i], s->sizes[i], 0xab);
    }
  }
  pthread_barrier_wait(s->bar);
  pthread_barrier_wait(s->bar); /* destroyed */
  return NULL;
}

static size_t reserved_now(void) {
  allot_stats_t st;
  allot_stats_get(&st);
  return st.reserved;
}

static void destroy_round(size_t round, size_t *reserved_after) {
  allot_heap_t *h = allot_heap_new();
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, NTHREADS + 1);
  share_t share[NTHREADS];
  pthread_t t[NTHREADS];
  for (int k = 0; k < NTHREADS; k++) {
    share[k].bar = &bar;
    for (size_t i = 0; i < PER_THREAD; i++) {
      size_t n = pick_size(i + round + (size_t)k);
      share[k].sizes[i] = n;
      share[k].blocks[i] = allot_heap_malloc(h, n);
      CHECK(share[k].blocks[i] != NULL, "heap_malloc(%zu)", n);
    }
  }
  allot_stats_t hs;
  allot_heap_stats(h, &hs);
  CHECK(hs.in_use > 0 && hs.rows[ALLOT_STATS_LARGE].blocks > 0 &&
            hs.rows[ALLOT_STATS_MEDIUM].blocks > 0,
        "heap stats see the blocks (in use %zu)", hs.in_use);
  for (int k = 0; k < NTHREADS; k++)
    pthread_create(&t[k], NULL, holder, &share[k]);
  pthread_barrier_wait(&bar);
  CHECK(allot_check() == 0, "check before destroy (round %zu)", round);
  allot_heap_destroy(h);
  for (int k = 0; k < NTHREADS; k++)
    for (size_t i = 0; i < PER_THREAD; i++)
      if (share[k].blocks[i])
        CHECK(!allot_owns(share[k].blocks[i]),
              "block %p (%zu bytes) live after destroy", share[k].blocks[i],
              share[k].sizes[i]);
  pthread_barrier_wait(&bar);
  for (int k = 0; k < NTHREADS; k++)
    pthread_join(t[k], NULL);
  pthread_barrier_destroy(&bar);
  CHECK(allot_check() == 0, "check after destroy (round %zu)", round);
  allot_collect();
  *reserved_after = reserved_now();
}

static void test_destroy(void) {
  size_t first = 0, last = 0;
  destroy_round(0, &first);
  for (size_t r = 1; r < 12; r++)
    destroy_round(r, &last);
  /* each round maps about 250 MiB; what stays must not grow with rounds */
  CHECK(last <= first + (32u << 20),
        "reserved grew from %zu to %zu over the rounds", first, last);
}

/* ---- destroy gives the memory back at once ------------------------------ */

/* Small and medium blocks' memory leaves the process's resident set at once;
 * large blocks' mappings go to the large-mapping cache (which keeps them
 * mapped, and in the default mode resident, for reuse: docs/api.md), so for
 * them what is mapped outside that cache is what counts. */
static void test_destroy_releases(void) {
  enum { NB = 3000 };
  static void *b[NB];
  allot_collect();
  allot_stats_t before, full, after;
  allot_stats_get(&before);
  allot_heap_t *h = allot_heap_new();
  size_t bytes = 0, large = 0;
  for (size_t i = 0; i < NB; i++) {
    /* every byte written: resident */
    size_t n = i % 300 == 0 ? (size_t)(3 << 20) : i % 3 ? 2000 : 60000;
    b[i] = allot_heap_malloc(h, n);
    CHECK(b[i] != NULL, "heap_malloc(%zu)", n);
    if (b[i]) memset(b[i], 0x5c, n);
    if (n > (1 << 20))
      large += n;
    else
      bytes += n;
  }
  /* some freed before the destroy, by this thread (its quarantine) */
  for (size_t i = 1; i < NB; i += 7) {
    allot_free(b[i]);
    b[i] = NULL;
  }
  allot_stats_get(&full);
  allot_heap_destroy(h);
  allot_stats_get(&after); /* at once: no collect, no purge delay waited */
  for (size_t i = 0; i < NB; i++)
    if (b[i]) CHECK(!allot_owns(b[i]), "block %zu live after destroy", i);
  size_t grew = full.committed - before.committed;
  size_t kept = after.committed > before.committed
                    ? after.committed - before.committed
                    : 0;
  size_t mapped_before = before.reserved - before.cached;
  size_t mapped_full = full.reserved - full.cached;
  size_t mapped_after = after.reserved - after.cached;
  printf("destroy: %zu MiB small and medium, %zu MiB large; resident +%zu "
         "MiB with the heap, +%zu KiB after; mapped outside caches %zu -> "
         "%zu MiB (%zu before the heap)\n",
         bytes >> 20, large >> 20, grew >> 20, kept >> 10, mapped_full >> 20,
         mapped_after >> 20, mapped_before >> 20);
  /* checked mode: large blocks were purged when freed (quarantine) */
  CHECK(grew >= bytes / 2 && kept <= (checked_mode() ? 0 : large) + (1u << 20),
        "destroy kept %zu of %zu resident bytes", kept, grew);
  CHECK(mapped_after <= mapped_before + (2u << 20),
        "destroy kept mappings: %zu -> %zu (before the heap %zu)", mapped_full,
        mapped_after, mapped_before);
  CHECK(allot_check() == 0, "check after destroy");
}

/* ---- delete ---------------------------------------------------------- */

typedef struct freer_arg {
  void **blocks;
  size_t n;
} freer_arg_t;

static void *freer(void *arg) {
  freer_arg_t *a = arg;
  for (size_t i = 0; i < a->n; i++)
    allot_free(a->blocks[i]);
  return NULL;
}

static void test_delete(void) {
  enum { N = 900 };
  static void *blocks[N];
  static size_t sizes[N];
  allot_heap_t *h = allot_heap_new();
  for (size_t i = 0; i < N; i++) {
    sizes[i] = pick_size(i * 7);
    blocks[i] = allot_heap_malloc(h, sizes[i]);
    fill(blocks[i], sizes[i], (unsigned char)(i * 3));
  }
  for (size_t i = 0; i < N; i += 4) { /* some freed before the delete */
    allot_free(blocks[i]);
    blocks[i] = NULL;
  }
  allot_heap_delete(h);
  allot_heap_t *d = allot_heap_default();
  size_t live = 0;
  for (size_t i = 0; i < N; i++) {
    if (!blocks[i]) continue;
    CHECK(allot_owns(blocks[i]), "block %zu live after delete", i);
    CHECK(intact(blocks[i], sizes[i], (unsigned char)(i * 3)),
          "block %zu intact after delete", i);
    allot_heap_t *o = allot_heap_of(blocks[i]);
    CHECK(o == d || (o == NULL && sizes[i] > (1 << 20)),
          "block %zu (%zu bytes) now in the default heap", i, sizes[i]);
    blocks[live++] = blocks[i];
  }
  CHECK(allot_check() == 0, "check after delete");
  /* the heap structure is reused by the next heap, and works */
  allot_heap_t *h2 = allot_heap_new();
  void *q = allot_heap_malloc(h2, 64);
  CHECK(q && allot_heap_of(q) == h2, "new heap after delete");
  allot_free(q);
  allot_heap_destroy(h2);
  /* the moved blocks are freed by another thread and by this one */
  freer_arg_t a = {blocks, live / 2};
  pthread_t t;
  pthread_create(&t, NULL, freer, &a);
  pthread_join(t, NULL);
  for (size_t i = live / 2; i < live; i++)
    allot_free(blocks[i]);
  allot_collect();
  CHECK(allot_check() == 0, "check after freeing the moved blocks");
}

/* ---- misuse ------------------------------------------------------------- */

static allot_heap_t *shared_heap;

static void *foreign_alloc(void *arg) {
  (void)arg;
  void *volatile p = allot_heap_malloc(shared_heap, 100);
  (void)p;
  return NULL;
}

static void misuse_other_thread(void *arg) {
  (void)arg;
  shared_heap = allot_heap_new();
  pthread_t t;
  pthread_create(&t, NULL, foreign_alloc, NULL);
  pthread_join(t, NULL);
}

static void misuse_destroy_default(void *arg) {
  (void)arg;
  allot_heap_destroy(allot_heap_default());
}

static void misuse_after_destroy(void *arg) {
  (void)arg;
  allot_heap_t *h = allot_heap_new();
  allot_heap_destroy(h);
  void *volatile p = allot_heap_malloc(h, 10);
  (void)p;
}

/* Each case runs in a fresh process (exec, not fork: this one has threads). */
static void test_misuse(void) {
  char err[4096];
  int st = run_self("misuse-thread", NULL, NULL, 0, err, sizeof err);
  CHECK(aborted(st) && strstr(err, "allot: heap_malloc(): heap used by a "
                                   "thread other than its owner"),
        "another thread allocating: status %d, stderr: %s", st, err);
  st = run_self("misuse-default", NULL, NULL, 0, err, sizeof err);
  CHECK(aborted(st) && strstr(err, "allot: heap_destroy(): a thread's default "
                                   "heap cannot be destroyed"),
        "destroying the default heap: status %d, stderr: %s", st, err);
  st = run_self("misuse-destroyed", NULL, NULL, 0, err, sizeof err);
  CHECK(aborted(st) && strstr(err, "allot: heap_malloc(): heap used by a "
                                   "thread other than its owner, or destroyed"),
        "using a destroyed heap: status %d, stderr: %s", st, err);
}

int main(int argc, char **argv) {
  if (argc > 1) {
    if (strcmp(argv[1], "misuse-thread") == 0) misuse_other_thread(NULL);
    if (strcmp(argv[1], "misuse-default") == 0) misuse_destroy_default(NULL);
    if (strcmp(argv[1], "misuse-destroyed") == 0) misuse_after_destroy(NULL);
    return 0; /* not reached: each aborts */
  }
  test_basic();
  test_destroy();
  test_destroy_releases();
  test_delete();
  test_misuse();
  return finish("test_api_heap");
}
