/* test_api_check.c: allot_check catches deliberately corrupted metadata and
 * names it, without crashing; and reports nothing on a healthy heap that
 * other threads are busy with (prefixed API).
 *
 * The corruptions are made the way a buggy program would make them, through
 * the pointers it was given: a flipped bit in a medium block's header tag, a
 * freed small block's list link or free mark overwritten (a write after
 * free), a large block's or a segment's header overwritten. Each is undone
 * afterwards so the program can go on. The same for a heap in a caller's
 * buffer (allot_fixed_check). Run in the default mode and in statistics mode;
 * debug and secure mode hold freed blocks in a quarantine instead of on the
 * free lists, so the write-after-free cases would not apply there. */
#include "test_api_common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "internal.h" /* the page descriptor's layout (src/) */

static char report[512];

static int corrupt_found(const char *expect) {
  int rc = allot_check_report(report, sizeof report);
  if (rc != 1 || !strstr(report, expect) || !strstr(report, " at 0x")) {
    fprintf(stderr, "  expected \"%s\", got %d \"%s\"\n", expect, rc, report);
    return 0;
  }
  return 1;
}

/* The pointer must escape: allot_malloc's malloc attribute lets the compiler
 * assume no other function reads a block it never saw, and drop the store. */
static void flip_at(uintptr_t addr, uint64_t bit) {
  uint64_t *word = (uint64_t *)addr;
  __asm__ volatile("" : : "r"(word) : "memory");
  *word ^= bit;
  __asm__ volatile("" : : "r"(word) : "memory");
}
static void flip(void *word, uint64_t bit) {
  flip_at((uintptr_t)word, bit);
}

static void test_medium_tags(void) {
  char *p = allot_malloc(20000), *q = allot_malloc(30000);
  char *r = allot_malloc(40000);
  CHECK(allot_check_report(report, sizeof report) == 0, "healthy: %s", report);
  uintptr_t hdr = (uintptr_t)q - 16;   /* the 16-byte chunk header */
  flip_at(hdr + 8, (uint64_t)1 << 50); /* size word's tag */
  CHECK(corrupt_found("corrupted chunk header"), "size tag flip");
  flip_at(hdr + 8, (uint64_t)1 << 50);
  flip_at(hdr, (uint64_t)1 << 49); /* prev_size word's tag */
  CHECK(corrupt_found("corrupted chunk header"), "prev_size tag flip");
  flip_at(hdr, (uint64_t)1 << 49);
  flip_at(hdr + 8, 16); /* the size itself (tag then mismatches) */
  CHECK(corrupt_found("corrupted chunk header"), "size change");
  flip_at(hdr + 8, 16);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  /* a freed chunk's bin links */
  allot_free(q);
  uint64_t saved = ((uint64_t *)q)[1];
  uint64_t *link = (uint64_t *)q + 1; /* prev link */
  flip(link, *link ^ (uint64_t)(uintptr_t)p);
  CHECK(corrupt_found("free list back link wrong") ||
            corrupt_found("corrupted"),
        "free chunk link");
  flip(link, *link ^ saved);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  allot_free(p);
  allot_free(r);
}

static void test_small_lists(void) {
  /* a class of its own, so nothing else allocates from the page meanwhile */
  void *a = allot_malloc(7000), *b = allot_malloc(7000);
  void *c = allot_malloc(7000);
  allot_free(b); /* b heads its page's free list: link and free mark */
  uint64_t *w = b;
  flip(&w[0], (uint64_t)1 << 20); /* its link now leads out of the page */
  CHECK(corrupt_found("free list link leads outside its page"), "link");
  flip(&w[0], (uint64_t)1 << 20);
  flip(&w[1], 1); /* its free mark */
  CHECK(corrupt_found("not marked free"), "mark");
  flip(&w[1], 1);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  allot_free(a);
  allot_free(c);
}

static void test_headers(void) {
  char *big = allot_malloc(3 << 20);
  uintptr_t cookie = (uintptr_t)big - 4096; /* large header page */
  flip_at(cookie, 4);
  CHECK(corrupt_found("bad cookie"), "large header");
  flip_at(cookie, 4);
  void *s = allot_malloc(100);
  uint64_t *seg = (uint64_t *)((uintptr_t)s & ~(uintptr_t)((4 << 20) - 1));
  flip(seg, 1);
  CHECK(corrupt_found("bad cookie"), "small segment header");
  flip(seg, 1);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  allot_free(big);
  allot_free(s);
}

/* free's two numbers in a small page's descriptor (page_t.divm,
 * carved_end): a stray write there would make free accept an interior
 * pointer or an uncarved block, so the check compares them with the block
 * size and the carved count. */
static void test_descriptor(void) {
  void *p = allot_malloc(100);
  segment_t *s = (segment_t *)((uintptr_t)p & ~(uintptr_t)SEG_MASK);
  page_t *pg = &s->pages[((uintptr_t)p >> PAGE_SHIFT) & (PAGES_PER_SEG - 1)];
  CHECK(allot_check_report(report, sizeof report) == 0, "before: %s", report);
  flip(&pg->divm, 2);
  CHECK(corrupt_found("bad divisor"), "page_t.divm");
  flip(&pg->divm, 2);
  uint32_t end = pg->carved_end;
  pg->carved_end = end + (uint32_t)pg->bsize;
  __asm__ volatile("" : : "r"(pg) : "memory");
  CHECK(corrupt_found("carved bound"), "page_t.carved_end");
  pg->carved_end = end;
  __asm__ volatile("" : : "r"(pg) : "memory");
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  allot_free(p);
}

/* The heap's bits of classes with free pages (heap_t.dirty_classes): a
 * new page is looked for on a class's list of free pages only when its bit
 * is set, so the check holds each bit to its list; the same for a
 * segment's bits of its free pages not yet purged. */
static void test_dirty_bits(void) {
  void *p = allot_malloc(100);
  segment_t *s = (segment_t *)((uintptr_t)p & ~(uintptr_t)SEG_MASK);
  heap_t *h = atomic_load(&s->heap);
  CHECK(allot_check_report(report, sizeof report) == 0, "before: %s", report);
  uint64_t bit = (uint64_t)1 << (NCLASSES - 1),
           was = atomic_load(&h->dirty_classes);
  CHECK(!(was & bit) && !h->dirty_free[NCLASSES - 1].first,
        "the last class has no free page");
  atomic_fetch_xor(&h->dirty_classes, bit);
  CHECK(corrupt_found("classes with free pages"), "heap_t.dirty_classes");
  atomic_fetch_xor(&h->dirty_classes, bit);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  /* and the segment's bits of its dirty free pages (segment_t.dirty_mask),
   * by which the purge pass finds them: the last page is not one */
  uint64_t last = (uint64_t)1 << (PAGES_PER_SEG - 1);
  CHECK(!(s->dirty_mask & last), "the segment's last page is not dirty");
  flip(&s->dirty_mask, last);
  CHECK(corrupt_found("unpurged free pages"), "segment_t.dirty_mask");
  flip(&s->dirty_mask, last);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  /* a bit for the page in use that holds p */
  uint64_t mine = (uint64_t)1
                  << (((uintptr_t)p >> PAGE_SHIFT) & (PAGES_PER_SEG - 1));
  flip(&s->dirty_mask, mine);
  CHECK(corrupt_found("mark a page in use"), "segment_t.dirty_mask, in use");
  flip(&s->dirty_mask, mine);
  CHECK(allot_check_report(report, sizeof report) == 0, "restored: %s", report);
  allot_free(p);
}

static void check_to_stderr(void *arg) {
  (void)arg;
  char *q = allot_malloc(20000);
  flip_at((uintptr_t)q - 8, (uint64_t)1 << 51);
  _exit(allot_check());
}

static void test_stderr_line(void) {
  char err[1024];
  int st = in_child(check_to_stderr, NULL, err, sizeof err);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1 &&
            strncmp(err, "allot: check: corrupted chunk header at 0x", 42) ==
                0 &&
            strchr(err, '\n') == err + strlen(err) - 1,
        "allot_check's line: status %d, stderr: %s", st, err);
}

static void test_fixed(void) {
  static char buf[1 << 16];
  allot_fixed_t *f = allot_fixed_create(buf, sizeof buf);
  char msg[256];
  char *a = allot_fixed_malloc(f, 100), *b = allot_fixed_malloc(f, 200);
  char *c = allot_fixed_malloc(f, 300);
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 0, "healthy fixed: %s", msg);
  flip_at((uintptr_t)b - 8, (uint64_t)1 << 52);
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 1 &&
            strstr(msg, "corrupted chunk header"),
        "fixed tag flip: %s", msg);
  flip_at((uintptr_t)b - 8, (uint64_t)1 << 52);
  allot_fixed_free(f, b);
  uint64_t saved = ((uint64_t *)b)[0];
  flip(b, saved ^ (uint64_t)(uintptr_t)(buf + 8)); /* next link */
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 1 && msg[0],
        "fixed free link: %s", msg);
  flip(b, ((uint64_t *)b)[0] ^ saved);
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 0, "restored fixed: %s", msg);
  memset(f, 0, 8); /* the heap header itself */
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 1 &&
            strstr(msg, "heap header overwritten"),
        "fixed header: %s", msg);
  (void)a;
  (void)c;
}

/* ---- no false reports while other threads work ------------------------- */

#define RING 4096
static void *_Atomic ring[RING];
static atomic_int stop;

static void *freer(void *arg) {
  (void)arg;
  size_t i = 0;
  while (!atomic_load(&stop)) {
    void *p = atomic_exchange(&ring[i % RING], NULL);
    if (p) allot_free(p); /* a cross-thread free into the main heap */
    i++;
  }
  return NULL;
}

static void *churn(void *arg) {
  (void)arg;
  void *mine[256] = {0};
  for (size_t i = 0; !atomic_load(&stop); i++) {
    size_t k = i % 256;
    allot_free(mine[k]);
    mine[k] = allot_malloc(8 + (i * 97) % 30000);
  }
  for (size_t k = 0; k < 256; k++)
    allot_free(mine[k]);
  return NULL;
}

/* ThreadSanitizer: the check reads the free marks of the caller's blocks
 * while other threads' frees write them (plain stores in the free path), a
 * race by design that it tolerates; TSan would report it, so the busy case is
 * left out of TSan builds. */
#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif

static void test_busy(void) {
#ifdef TSAN
  return;
#endif
  pthread_t t[2];
  pthread_create(&t[0], NULL, freer, NULL);
  pthread_create(&t[1], NULL, churn, NULL);
  for (int round = 0; round < 300; round++) {
    for (size_t i = 0; i < RING; i++) {
      void *old = atomic_exchange(&ring[i], allot_malloc(16 + (i % 50) * 16));
      allot_free(old);
    }
    if (allot_check_report(report, sizeof report) != 0) {
      CHECK(0, "false report while busy (round %d): %s", round, report);
      break;
    }
  }
  atomic_store(&stop, 1);
  pthread_join(t[0], NULL);
  pthread_join(t[1], NULL);
  for (size_t i = 0; i < RING; i++)
    allot_free(atomic_exchange(&ring[i], NULL));
  CHECK(allot_check() == 0, "quiet again");
}

int main(void) {
  if (checked_mode()) {
    printf("test_api_check: skipped (quarantine mode)\n");
    return 77;
  }
  test_medium_tags();
  test_small_lists();
  test_headers();
  test_descriptor();
  test_dirty_bits();
  test_stderr_line();
  test_fixed();
  test_busy();
  return finish("test_api_check");
}
