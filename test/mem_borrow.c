/* mem_borrow.c: a small request whose class has nothing resident takes a
 * free block of the next class up (page.c, page_borrow; docs/memory.md,
 * "Borrowing a larger block, and resident memory before new"), and what
 * borrowing must not change: the block works as one of the request's size
 * (contents, free_sized with the size asked for, malloc_usable_size), a
 * request of exactly its class's size never borrows, a class borrows a
 * bounded number of blocks before it gets pages of its own, and the heap
 * stays consistent (allot_check).
 *
 * Runs in a thread of its own, whose heap is new. Default mode only (the
 * test's ENVIRONMENT turns the checked modes off): they never borrow. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>

#include "test_api_common.h" /* CHECK, finish */

void free_sized(void *p, size_t size); /* C23; allot exports it */

#define PAGE_BYTES ((uintptr_t)64 << 10) /* a small page (docs/design.md) */
#define LEND 64                          /* blocks the lender carves */
#define ASK 40 /* requests of the borrowing class, more than it may borrow */

/* The size class (usable size) of a request of n bytes. */
static size_t class_of(size_t n) {
  void *p = malloc(n);
  size_t u = malloc_usable_size(p);
  free(p);
  return u;
}

/* Two neighbouring classes c < d of about `near` bytes, with d < 2 (c - 1):
 * a request of c - 1 bytes may borrow a block of d. */
static void pick(size_t near, size_t *c, size_t *d) {
  *c = class_of(near);
  *d = class_of(*c + 1);
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(seed + i * 31);
}
static int intact(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(seed + i * 31)) return 0;
  return 1;
}

/* The lender: LEND blocks of class d carved, all but the last freed, so its
 * page has far more than an OS page of blocks free. Returns the one kept. */
static void *lend(size_t d, void **page_of_lender) {
  void *b[LEND];
  for (int i = 0; i < LEND; i++)
    b[i] = malloc(d);
  for (int i = 0; i < LEND - 1; i++)
    free(b[i]);
  *page_of_lender = (void *)((uintptr_t)b[LEND - 1] & ~(PAGE_BYTES - 1));
  return b[LEND - 1];
}

/* The classes, found by the main thread: the worker's heap has no page of
 * them before the test. */
static size_t c, d, c2, d2;

static void *run(void *arg) {
  (void)arg;

  void *lender_page;
  void *keep = lend(d, &lender_page);

  /* requests of c - 1 bytes: the first ones borrow blocks of d from the
   * lender's page, then the class carves a page of its own, and borrows
   * again once that runs dry: at most 16 in a row, between two growths */
  unsigned char *p[ASK];
  int borrowed = 0, own = 0, run_len = 0, longest = 0;
  for (int i = 0; i < ASK; i++) {
    p[i] = malloc(c - 1);
    CHECK(p[i] != NULL, "malloc(%zu)", c - 1);
    if (!p[i]) return NULL;
    size_t u = malloc_usable_size(p[i]);
    int in_lender =
        ((uintptr_t)p[i] & ~(PAGE_BYTES - 1)) == (uintptr_t)lender_page;
    if (u == d && in_lender) {
      borrowed++;
      if (++run_len > longest) longest = run_len;
    } else {
      CHECK(u == c && !in_lender, "block %d: usable %zu, in the lender %d", i,
            u, in_lender);
      own++;
      run_len = 0;
    }
    fill(p[i], c - 1, (unsigned)i);
  }
  CHECK(borrowed >= 1, "no request borrowed (%d of %d own)", own, ASK);
  CHECK(own >= 1, "the class never got a page of its own (%d borrowed)",
        borrowed);
  CHECK(longest <= 16, "%d blocks borrowed in a row", longest);
  for (int i = 0; i < ASK; i++)
    CHECK(intact(p[i], c - 1, (unsigned)i), "block %d overwritten", i);
  CHECK(allot_check() == 0, "allot_check after borrowing");
  /* freed with the size asked for: more than half of a borrowed block */
  for (int i = 0; i < ASK; i++)
    free_sized(p[i], c - 1);
  free(keep);
  CHECK(allot_check() == 0, "allot_check after the frees");

  /* a request of exactly its class's size (as aligned ones come) never
   * borrows, though the lender has blocks free */
  void *page2;
  void *keep2 = lend(d2, &page2);
  void *q = malloc(c2);
  CHECK(malloc_usable_size(q) == c2 &&
            ((uintptr_t)q & ~(PAGE_BYTES - 1)) != (uintptr_t)page2,
        "a request of its class's size (%zu) got %zu bytes", c2,
        malloc_usable_size(q));
  free(q);
  free(keep2);
  printf("classes %zu/%zu: %d borrowed (at most %d in a row), %d own; class "
         "%zu: none borrowed\n",
         c, d, borrowed, longest, own, c2);
  return NULL;
}

int main(void) {
  pick(300, &c, &d);
  pick(900, &c2, &d2);
  if (!(d > c && d < 2 * (c - 1) && d2 > c2)) {
    fprintf(stderr, "mem_borrow: classes %zu/%zu, %zu/%zu\n", c, d, c2, d2);
    return 1;
  }
  pthread_t t;
  if (pthread_create(&t, NULL, run, NULL) != 0) return 1;
  pthread_join(t, NULL);
  return finish("mem_borrow");
}
