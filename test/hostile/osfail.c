/* osfail.c: every kernel call allot makes that can fail (mmap, aligned
 * mappings, reservations, mremap, mprotect, sbrk) is made to fail in turn.
 *
 * Linked with allot-testhooks (allot built with -DALLOT_TEST_HOOKS, prefixed
 * API). A fixed workload reaches every call site: the first heap, small and
 * medium segments, zero-size blocks, large blocks with and without big
 * alignment, large reallocs that grow in place, shrink, and move. The parent
 * first runs it without failures in a child to count the calls, then, for
 * every n, runs it in a fresh child with call n failing (one transient
 * failure) and again with every call from n on failing for a while
 * (persistent failure). Every operation must either succeed or return NULL
 * with ENOMEM (posix_memalign: ENOMEM), never crash or corrupt a block; a
 * failed realloc must leave its block intact; once the failures stop, the
 * whole workload must run again without a single failure. Finally the kinds
 * of call that failed are checked against the full list, so a call site the
 * workload stopped reaching is noticed.
 *
 *   hostile_osfail [mmap|brk]   brk: segments from sbrk (ALLOT_USE_BRK=1) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allot.h"

void allot_test_fail_os(long first, long count);
long allot_test_os_calls(void);
const char *allot_test_os_site(void);

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define NBLOCKS 160

typedef struct {
  unsigned char *p;
  size_t size;
  unsigned char tag;
} blk_t;

static blk_t blocks[NBLOCKS];
static int nblocks;
static int strict; /* failures are no longer allowed */
static int errors;
static unsigned long nulls;

static void bad(const char *what, size_t size) {
  fprintf(stderr, "osfail: FAILED: %s (size %zu)\n", what, size);
  errors++;
}

static void fill(blk_t *b) {
  /* only the ends and a stride in between: large blocks stay cheap */
  size_t step = b->size > 64 * KIB ? 4093 : 1;
  for (size_t i = 0; i < b->size; i += step)
    b->p[i] = (unsigned char)(b->tag + i);
  if (b->size) b->p[b->size - 1] = (unsigned char)(b->tag + b->size - 1);
}

static int intact(const blk_t *b, size_t upto) {
  size_t n = upto < b->size ? upto : b->size;
  size_t step = b->size > 64 * KIB ? 4093 : 1;
  for (size_t i = 0; i < n; i += step)
    if (b->p[i] != (unsigned char)(b->tag + i)) return 0;
  if (n == b->size && n && b->p[n - 1] != (unsigned char)(b->tag + n - 1))
    return 0;
  return 1;
}

/* Result of an allocation: a usable block, or NULL with ENOMEM. */
static void *check_alloc(void *p, int err, size_t size, size_t align,
                         const char *what) {
  if (!p) {
    if (err != ENOMEM) bad("NULL without ENOMEM", size);
    if (strict) bad(what, size);
    nulls++;
    return NULL;
  }
  if (((uintptr_t)p & (align - 1)) != 0) bad("misaligned block", size);
  if (size && allot_malloc_usable_size(p) < size)
    bad("usable size too small", size);
  if (!allot_owns(p)) bad("allot_owns() denies a live block", size);
  return p;
}

static void keep(void *p, size_t size) {
  if (!p) return;
  static unsigned char tag = 1;
  if (nblocks == NBLOCKS) {
    if (!intact(&blocks[0], SIZE_MAX)) bad("block corrupted", blocks[0].size);
    allot_free(blocks[0].p);
    memmove(blocks, blocks + 1, sizeof blocks[0] * (NBLOCKS - 1));
    nblocks--;
  }
  blk_t *b = &blocks[nblocks++];
  b->p = p;
  b->size = size;
  b->tag = tag += 37;
  fill(b);
}

static void *do_malloc(size_t size) {
  errno = 0;
  void *p = allot_malloc(size);
  return check_alloc(p, errno, size, 16, "malloc");
}

static void do_realloc(int i, size_t size) {
  if (i < 0 || i >= nblocks) return;
  blk_t *b = &blocks[i];
  errno = 0;
  void *q = allot_realloc(b->p, size);
  int err = errno;
  if (!q) {
    check_alloc(q, err, size, 16, "realloc");
    if (!intact(b, SIZE_MAX)) bad("failed realloc damaged its block", size);
    return;
  }
  check_alloc(q, err, size, 16, "realloc");
  blk_t moved = *b;
  moved.p = q;
  if (!intact(&moved, size)) bad("realloc lost the contents", size);
  b->p = q;
  b->size = size;
  fill(b);
}

static void *second_thread(void *arg) {
  (void)arg;
  for (int i = 0; i < 50; i++) {
    void *p = do_malloc(16 + (size_t)i * 48);
    void *q = do_malloc(20 * KIB);
    allot_free(p);
    allot_free(q);
  }
  return NULL;
}

static void workload(void) {
  keep(do_malloc(24), 24);       /* the first heap and small segment */
  keep(do_malloc(0), 0);         /* a zero-size block: mapping and mprotect */
  for (int i = 0; i < 80; i++) { /* > 4 MiB of 8 KiB blocks: a 2nd segment */
    void *p = do_malloc(8 * KIB);
    if (i % 8 == 0)
      keep(p, 8 * KIB);
    else
      allot_free(p);
  }
  {
    void *hold[80];
    int n = 0;
    for (int i = 0; i < 80; i++)
      hold[n++] = do_malloc(8000);
    for (int i = 0; i < n; i++)
      allot_free(hold[i]);
  }
  for (int i = 0; i < 6; i++)
    keep(do_malloc(900 * KIB), 900 * KIB); /* medium */
  keep(do_malloc(3 * MIB), 3 * MIB);       /* large */
  {
    errno = 0;
    void *p = allot_calloc(1, 2 * MIB);
    p = check_alloc(p, errno, 2 * MIB, 16, "calloc");
    if (p)
      for (size_t i = 0; i < 2 * MIB; i += 4096)
        if (((unsigned char *)p)[i]) bad("calloc not zeroed", 2 * MIB);
    keep(p, 2 * MIB);
  }
  {
    size_t aligns[] = {64, 4096, 64 * KIB, MIB, 4 * MIB, 8 * MIB};
    for (size_t k = 0; k < sizeof aligns / sizeof aligns[0]; k++) {
      size_t sz = k & 1 ? 2 * MIB : 100 * KIB;
      errno = 0;
      void *p = allot_aligned_alloc(aligns[k], sz);
      keep(check_alloc(p, errno, sz, aligns[k], "aligned_alloc"), sz);
    }
    void *p = NULL;
    int e = allot_posix_memalign(&p, 16 * MIB, 2 * MIB);
    if (e != 0 && e != ENOMEM) bad("posix_memalign: not ENOMEM", 2 * MIB);
    keep(check_alloc(e ? NULL : p, e ? ENOMEM : 0, 2 * MIB, 16 * MIB,
                     "posix_memalign"),
         2 * MIB);
    errno = 0;
    p = allot_valloc(5000);
    keep(check_alloc(p, errno, 5000, 4096, "valloc"), 5000);
    errno = 0;
    p = allot_pvalloc(3 * MIB);
    keep(check_alloc(p, errno, 3 * MIB, 4096, "pvalloc"), 3 * MIB);
  }
  /* large reallocs: grow (in place, else moved with mremap), shrink */
  {
    keep(do_malloc(2 * MIB), 2 * MIB);
    int i = nblocks - 1;
    do_realloc(i, 6 * MIB);
    void *spacer = do_malloc(2 * MIB); /* often blocks growth in place */
    do_realloc(i, 12 * MIB);
    do_realloc(i, 7 * MIB);
    do_realloc(i, 40 * MIB);
    allot_free(spacer);
    do_realloc(i, 900 * KIB); /* large to medium */
    do_realloc(i, 100);       /* to small */
    do_realloc(i, 5 * MIB);   /* back to large */
  }
  pthread_t t;
  if (pthread_create(&t, NULL, second_thread, NULL) == 0)
    pthread_join(t, NULL);
  else
    bad("pthread_create", 0);
  allot_collect();
}

static void check_all(void) {
  for (int i = 0; i < nblocks; i++)
    if (!intact(&blocks[i], SIZE_MAX)) bad("block corrupted", blocks[i].size);
}

static void free_all(void) {
  for (int i = 0; i < nblocks; i++)
    allot_free(blocks[i].p);
  nblocks = 0;
}

/* One child: fail calls first .. first+count-1 of the workload, then run it
 * again with no failures at all. Writes "<calls> <site>\n" to fd. */
static int child(long first, long count, int fd) {
  if (first) allot_test_fail_os(first, count);
  workload();
  check_all();
  long calls = allot_test_os_calls();
  const char *site = allot_test_os_site();
  allot_test_fail_os(0, 0);
  strict = 1;
  free_all();
  allot_collect();
  workload();
  check_all();
  free_all();
  dprintf(fd, "%ld %s\n", calls, site ? site : "-");
  return errors ? 1 : 0;
}

static int run_child(long first, long count, long *calls, char *site) {
  int pfd[2];
  if (pipe(pfd)) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(pfd[0]);
    alarm(60); /* a deadlock on a failure path ends as a failure */
    _exit(child(first, count, pfd[1]));
  }
  close(pfd[1]);
  char buf[128] = {0};
  ssize_t n = read(pfd[0], buf, sizeof buf - 1);
  close(pfd[0]);
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || n <= 0) {
    if (WIFSIGNALED(st))
      fprintf(stderr,
              "osfail: FAILED: child failing calls %ld..%ld killed by "
              "signal %d\n",
              first, first + count - 1, WTERMSIG(st));
    else
      fprintf(stderr,
              "osfail: FAILED: child failing calls %ld..%ld exited "
              "%d\n",
              first, first + count - 1, WEXITSTATUS(st));
    return -1;
  }
  if (sscanf(buf, "%ld %63s", calls, site) != 2) return -1;
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "mmap";
  /* the parent never calls allot: every child starts from scratch */
  setenv("ALLOT_PURGE_THREAD", "0", 1);
  setenv("ALLOT_USE_BRK", strcmp(mode, "brk") == 0 ? "1" : "0", 1);
  long total;
  char site[64];
  if (run_child(0, 0, &total, site)) return 1;
  printf("osfail %s: the workload makes %ld fallible kernel calls\n", mode,
         total);
  if (total < 10) {
    fprintf(stderr, "osfail: FAILED: too few calls (%ld): hook not working?\n",
            total);
    return 1;
  }
  const char *expect_mmap[] = {"mmap",     "mmap_aligned",   "mmap_reserve",
                               "mprotect", "mremap_inplace", "mremap_fixed"};
  const char *expect_brk[] = {"sbrk", "mmap", "mmap_aligned", "mprotect",
                              "mremap_inplace"};
  int brk = strcmp(mode, "brk") == 0;
  const char **expect = brk ? expect_brk : expect_mmap;
  size_t nexpect = brk ? 5 : 6;
  /* Debug and secure mode (ALLOT_DEBUG=1, ALLOT_SECURE=1) reach fewer
   * kinds of call: their realloc copies and never moves pages with mremap,
   * and only secure mode reserves address space (around large blocks):
   * those kinds are not asked for there. The workload and every check of
   * it still run. */
  const char *expect_checked[5];
  int secure = allot_option_get(ALLOT_OPTION_SECURE) == 1;
  if (allot_option_get(ALLOT_OPTION_DEBUG) == 1 || secure) {
    nexpect = 0;
    if (brk) expect_checked[nexpect++] = "sbrk";
    expect_checked[nexpect++] = "mmap";
    expect_checked[nexpect++] = "mmap_aligned";
    expect_checked[nexpect++] = "mprotect";
    if (secure) expect_checked[nexpect++] = "mmap_reserve";
    expect = expect_checked;
    printf("osfail %s: %s mode: no mremap expected\n", mode,
           secure ? "secure" : "debug");
  }
  int seen[8] = {0};
  int failed = 0;
  long children = 0;
  for (int persistent = 0; persistent < 2; persistent++) {
    for (long n = 1; n <= total; n++) {
      long calls;
      if (run_child(n, persistent ? 1000000 : 1, &calls, site)) {
        failed++;
        continue;
      }
      children++;
      for (size_t k = 0; k < nexpect; k++)
        if (strcmp(site, expect[k]) == 0) seen[k] = 1;
    }
  }
  for (size_t k = 0; k < nexpect; k++)
    if (!seen[k]) {
      fprintf(stderr, "osfail: FAILED: no %s call was ever made to fail\n",
              expect[k]);
      failed++;
    }
  printf("osfail %s: %ld children ran, %d failures\n", mode, children, failed);
  return failed ? 1 : 0;
}
