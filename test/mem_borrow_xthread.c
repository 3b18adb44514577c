/* mem_borrow_xthread.c: borrowing (page.c, page_borrow) when the blocks
 * that could serve a request came back from another thread into full pages
 * (docs/memory.md, "A queue that fills and drains"):
 *
 *  - own: a class whose full page got blocks back from another thread takes
 *    those, not a larger class's free block (which made the lender grow in
 *    its place: prodcons held about 0.5 MiB more per producer);
 *  - lender: a class with nothing resident of its own borrows a block that
 *    another thread freed into a full page of the next class up, rather
 *    than carving new memory.
 *
 * Runs in a thread of its own, whose heap is new; the other thread's frees
 * come from a short-lived thread that only frees. Default mode only (the
 * test's ENVIRONMENT turns the checked modes off): they never borrow. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>

#include "test_api_common.h" /* CHECK, finish */

void free_sized(void *p, size_t size); /* C23; allot exports it */

#define PAGE_BYTES ((uintptr_t)64 << 10) /* a small page (docs/design.md) */
#define MAXB 256

static uintptr_t page_of(const void *p) {
  return (uintptr_t)p & ~(PAGE_BYTES - 1);
}

/* The size class (usable size) of a request of n bytes. */
static size_t class_of(size_t n) {
  void *p = malloc(n);
  size_t u = malloc_usable_size(p);
  free(p);
  return u;
}

typedef struct {
  void **p;
  int n;
} batch_t;

static void *free_all(void *arg) {
  batch_t *b = arg;
  for (int i = 0; i < b->n; i++)
    free(b->p[i]);
  return NULL;
}

/* Free n blocks from another thread (cross-thread frees). */
static void free_elsewhere(void **p, int n) {
  batch_t b = {p, n};
  pthread_t t;
  if (pthread_create(&t, NULL, free_all, &b) != 0) {
    CHECK(0, "pthread_create");
    return;
  }
  pthread_join(t, NULL);
}

/* Allocate blocks of n bytes until one leaves the first one's page: that
 * page is then full and fully carved (the class's next request found it
 * dry and moved it to the full list). Returns how many are in it. */
static int fill_page(size_t n, void **p, int max) {
  int k = 0;
  p[k++] = malloc(n);
  while (k < max) {
    p[k] = malloc(n);
    if (page_of(p[k]) != page_of(p[0])) return k;
    k++;
  }
  return -1;
}

static size_t c, d, c2, d2; /* found by the main thread */

static void own_first(void) {
  /* class c: a full page Q1 and a current page Q2, which must grow into
   * new memory once its first carving is handed out */
  static void *a[MAXB];
  int in_q1 = fill_page(c - 1, a, MAXB);
  CHECK(in_q1 > 20, "own: page of class %zu holds %d blocks", c, in_q1);
  if (in_q1 <= 20) return;
  int n = in_q1 + 1; /* a[in_q1]: the first block of Q2 */
  uintptr_t q1 = page_of(a[0]), q2 = page_of(a[in_q1]);
  /* a lender of the next class up with many blocks free, on its own */
  void *l[32];
  for (int i = 0; i < 32; i++)
    l[i] = malloc(d);
  for (int i = 0; i < 31; i++)
    free(l[i]);
  /* another thread frees 10 blocks of Q1 (full: it wakes the class) and
   * one of Q2 (the current page: lets the class borrow again) */
  void *back[11];
  for (int i = 0; i < 10; i++)
    back[i] = a[i];
  back[10] = a[in_q1];
  free_elsewhere(back, 11);
  int borrowed = 0, stray = 0;
  void *got[11];
  for (int i = 0; i < 11; i++) {
    got[i] = malloc(c - 1);
    size_t u = malloc_usable_size(got[i]);
    if (u != c)
      borrowed++;
    else if (page_of(got[i]) != q1 && page_of(got[i]) != q2)
      stray++;
  }
  CHECK(borrowed == 0,
        "own: %d of 11 requests of %zu bytes took a block of class %zu "
        "while 10 of their own class's had come back",
        borrowed, c - 1, d);
  CHECK(stray == 0, "own: %d blocks from a page other than the class's two",
        stray);
  CHECK(allot_check() == 0, "own: allot_check");
  printf("own: class %zu, 11 requests: %d borrowed from %zu, %d own\n", c,
         borrowed, d, 11 - borrowed);
  for (int i = 0; i < 11; i++)
    free_sized(got[i], c - 1);
  for (int i = 10; i < n; i++)
    if (i != in_q1) free(a[i]);
  free(l[31]);
}

static void lender_woken(void) {
  /* the lender, class d2: a full page P1, then 40 of its blocks freed by
   * another thread (they wait in P1's cross-thread list) */
  static void *l[MAXB];
  int in_p1 = fill_page(d2, l, MAXB);
  CHECK(in_p1 > 40, "lender: page of class %zu holds %d blocks", d2, in_p1);
  if (in_p1 <= 40) return;
  uintptr_t p1 = page_of(l[0]);
  free_elsewhere(l, 40);
  /* class c2 has no page yet: its first request borrows one of them */
  void *q = malloc(c2 - 1);
  size_t u = malloc_usable_size(q);
  CHECK(u == d2 && page_of(q) == p1,
        "lender: request of %zu bytes got %zu bytes %s the lender's page "
        "(40 of its blocks freed by another thread)",
        c2 - 1, u, page_of(q) == p1 ? "in" : "outside");
  unsigned char *b = q;
  for (size_t i = 0; i < c2 - 1; i++)
    b[i] = (unsigned char)i;
  for (size_t i = 0; i < c2 - 1; i++)
    if (b[i] != (unsigned char)i) {
      CHECK(0, "lender: byte %zu overwritten", i);
      break;
    }
  CHECK(allot_check() == 0, "lender: allot_check");
  printf("lender: first request of class %zu got %zu bytes (%s)\n", c2, u,
         u == d2 ? "borrowed" : "own page");
  free_sized(q, c2 - 1);
  for (int i = 40; i <= in_p1; i++)
    free(l[i]);
  CHECK(allot_check() == 0, "lender: allot_check after the frees");
}

static void *run(void *arg) {
  (void)arg;
  own_first();
  lender_woken();
  return NULL;
}

int main(void) {
  /* below 1 KiB, which free medium chunks may serve (medium_small) */
  c = class_of(800);
  d = class_of(c + 1);
  c2 = class_of(600);
  d2 = class_of(c2 + 1);
  if (!(d > c && d < 2 * (c - 1) && d2 > c2 && d2 < 2 * (c2 - 1))) {
    fprintf(stderr, "mem_borrow_xthread: classes %zu/%zu, %zu/%zu\n", c, d, c2,
            d2);
    return 1;
  }
  pthread_t t;
  if (pthread_create(&t, NULL, run, NULL) != 0) return 1;
  pthread_join(t, NULL);
  return finish("mem_borrow_xthread");
}
