/* misuse.c: the misuse suite — small programs that misuse the heap, each run
 * in its own process, reporting whether allot stopped the misuse.
 *
 *   misuse --run CASE SIZE      run one case in this process (the child)
 *   misuse --mode MODE          run every case in MODE (default, secure,
 *                               debug), one line per case and size
 *   misuse --table [REPS]       every mode (REPS times), as the Markdown
 *                               table of docs/security.md
 *   misuse --claims [REPS]      every mode, as a claims file (below)
 *   misuse --check MODE FILE    run MODE and compare with the outcomes FILE
 *                               claims (lines "mode case size outcome"): a
 *                               case claimed stopped that is not fails
 *
 * A child writes markers on stdout as it goes: B when the misuse begins, W
 * once a bad memory access has been made, E when the misuse is over (for an
 * overflow that includes freeing the block, where canaries are checked), F
 * when the follow-up (more frees and mallocs, exit) is done, and P1 / P0 for
 * the cases that check a property (new memory zeroed, no immediate reuse,
 * absurd sizes refused). From the markers, the signal and stderr, the parent
 * names the outcome:
 *
 *   stopped  allot aborted with its one-line message during the misuse
 *   fault    the bad access itself faulted (guard page, inaccessible block)
 *   later    allot aborted afterwards (reuse of the block, the exit check)
 *   crash    the process died some other way after the misuse
 *   no       nothing noticed
 *   yes/no   for property cases
 *
 * The mode is chosen through ALLOT_SECURE / ALLOT_DEBUG in the child's
 * environment; the program is linked with liballot.so. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "misuse.h"

/* The misuse is the point: no warnings about it. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic ignored "-Wuse-after-free"
#endif
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"

/* ---- the child's side ------------------------------------------------------
 */

static void mark(const char *m) {
  ssize_t r = write(1, m, strlen(m));
  (void)r;
}
void misuse_begin(void) {
  mark("B");
}
void misuse_wrote(void) {
  mark("W");
}
void misuse_end(void) {
  mark("E");
}
void misuse_property(bool ok) {
  mark(ok ? "P1" : "P0");
}

/* Keep the compiler from reasoning about heap pointers. */
void *misuse_launder(void *p) {
  __asm__ volatile("" : "+r"(p) : : "memory");
  return p;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) {
    fprintf(stderr, "misuse: malloc(%zu) failed\n", n);
    _exit(99);
  }
  return misuse_launder(p);
}

static void bad_free(void *p) {
  free(misuse_launder(p));
}

/* Memory churn after a misuse, so that whatever allot does at reuse time
 * (quarantine release, free-list pops) happens. */
static void churn(size_t n, int rounds) {
  for (int i = 0; i < rounds; i++) {
    volatile char *q = xmalloc(n);
    q[0] = (char)i;
    q[n - 1] = (char)i;
    free((void *)q);
  }
}
static int churn_rounds(size_t n) {
  return n >= ((size_t)1 << 20) ? 40 : n >= 65536 ? 120 : 600;
}

static char source[(6u << 20)]; /* memcpy source for overflows */
static char global_buf[256];

#define MiB ((size_t)1 << 20)

/* ---- double free -----------------------------------------------------------
 */

static void df_immediate(size_t n) {
  void *p = xmalloc(n);
  free(p);
  misuse_begin();
  bad_free(p);
  misuse_end();
}

static void df_delayed(size_t n) {
  void *p = xmalloc(n);
  free(p);
  void *keep[64];
  for (int i = 0; i < 64; i++)
    keep[i] = xmalloc(16 + (size_t)i * 40);
  churn(n, 20);
  for (int i = 0; i < 64; i += 2)
    free(keep[i]);
  misuse_begin();
  bad_free(p);
  misuse_end();
  for (int i = 1; i < 64; i += 2)
    free(keep[i]);
}

static void df_interleaved(size_t n) {
  void *p = xmalloc(n), *q = xmalloc(n);
  free(p);
  free(q);
  misuse_begin();
  bad_free(p);
  misuse_end();
}

static void df_reused(size_t n) {
  void *p = xmalloc(n);
  free(p);
  void *q = xmalloc(n); /* may well be p again */
  misuse_begin();
  bad_free(p);
  misuse_end();
  free(q); /* the block's new owner frees it */
  churn(n, 4);
}

static void *thread_free(void *p) {
  free(p);
  return NULL;
}
static void *thread_bad_free(void *p) {
  bad_free(p);
  return NULL;
}
/* fn(p) on a thread of its own, waited for. */
static void in_thread(void *(*fn)(void *), void *p) {
  pthread_t t;
  pthread_create(&t, NULL, fn, p);
  pthread_join(t, NULL);
}
static void df_cross_thread(size_t n) {
  void *p = xmalloc(n);
  in_thread(thread_free, p);
  misuse_begin();
  bad_free(p);
  misuse_end();
}

/* Both frees in other threads than the owner: the block is on its page's
 * cross-thread list, which the owner takes over unwalked (page.c). */
static void df_cross_twice(size_t n) {
  void *p = xmalloc(n);
  in_thread(thread_free, p);
  misuse_begin();
  in_thread(thread_bad_free, p);
  misuse_end();
  churn(n, 4);
}

static void df_after_trim(size_t n) {
  void *p = xmalloc(n);
  free(p);
  malloc_trim(0); /* a large block's mapping goes back to the OS */
  misuse_begin();
  bad_free(p);
  misuse_end();
}

static void df_realloc(size_t n) {
  void *p = xmalloc(n);
  free(p);
  misuse_begin();
  void *q = realloc(misuse_launder(p), n * 2);
  misuse_end();
  free(q);
}

static void df_usable(size_t n) {
  void *p = xmalloc(n);
  free(p);
  misuse_begin();
  size_t u = malloc_usable_size(misuse_launder(p));
  misuse_end();
  (void)u;
}

/* ---- invalid free ----------------------------------------------------------
 */

static void if_stack(size_t n) {
  char buf[128];
  misuse_launder(buf);
  misuse_begin();
  bad_free(buf + 16);
  misuse_end();
  (void)n;
}

static void if_global(size_t n) {
  misuse_begin();
  bad_free(global_buf + 32);
  misuse_end();
  (void)n;
}

static void if_alloca(size_t n) {
  char *a = alloca(64 + (n & 1));
  misuse_launder(a);
  misuse_begin();
  bad_free(a);
  misuse_end();
}

static void if_interior(size_t n) {
  char *p = xmalloc(n);
  misuse_begin();
  bad_free(p + 16);
  misuse_end();
  free(p);
}

static void if_unaligned(size_t n) {
  char *p = xmalloc(n);
  misuse_begin();
  bad_free(p + 1);
  misuse_end();
  free(p);
}

static void if_far(size_t n) {
  misuse_begin();
  bad_free((void *)(uintptr_t)0x10000000010ull); /* 1 TiB: nothing there */
  misuse_end();
  (void)n;
}

static void if_noncanonical(size_t n) {
  misuse_begin();
  bad_free((void *)(uintptr_t)0xffff800000001000ull);
  misuse_end();
  (void)n;
}

static void if_mmap(size_t n) {
  char *m = mmap(NULL, 8u << 20, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) _exit(99);
  /* 4 MiB-aligned inside, where allot's segments would be */
  char *a =
      (char *)(((uintptr_t)m + (4u << 20) - 1) & ~(uintptr_t)((4u << 20) - 1));
  misuse_begin();
  bad_free(a + 4096);
  misuse_end();
  (void)n;
}

/* A block from another allocator in the same process: glibc's own malloc
 * (found in libc.so.6 itself, not the interposed name). */
static void if_glibc(size_t n) {
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  void *(*libc_malloc)(size_t) =
      libc ? (void *(*)(size_t))dlsym(libc, "malloc") : NULL;
  if (!libc_malloc || libc_malloc == malloc) {
    misuse_property(false); /* not applicable */
    return;
  }
  void *p = libc_malloc(n);
  misuse_begin();
  bad_free(p);
  misuse_end();
}

static void if_realloc_interior(size_t n) {
  char *p = xmalloc(n);
  misuse_begin();
  void *q = realloc(misuse_launder(p + 16), n * 2);
  misuse_end();
  (void)q;
}

static void if_realloc_stack(size_t n) {
  char buf[64];
  misuse_launder(buf);
  misuse_begin();
  void *q = realloc(misuse_launder(buf), 256);
  misuse_end();
  (void)q;
  (void)n;
}

static void if_usable_interior(size_t n) {
  char *p = xmalloc(n);
  misuse_begin();
  size_t u = malloc_usable_size(misuse_launder(p + 16));
  misuse_end();
  (void)u;
  free(p);
}

void free_sized(void *p, size_t size);
void free_aligned_sized(void *p, size_t align, size_t size);

static void fs_larger(size_t n) {
  void *p = xmalloc(n);
  misuse_begin();
  free_sized(misuse_launder(p), n + 8192);
  misuse_end();
}

static void fs_smaller(size_t n) {
  void *p = xmalloc(n);
  misuse_begin();
  free_sized(misuse_launder(p), n / 4);
  misuse_end();
}

static void fas_wrong(size_t n) {
  void *p = aligned_alloc(64, n);
  misuse_begin();
  free_aligned_sized(misuse_launder(p), 64, n * 4 + 4096);
  misuse_end();
}

/* ---- overflow and underflow
 * -------------------------------------------------- The block has live
 * neighbours of the same size on both sides (as far as the allocator places
 * them so). The misuse ends once the block is freed: that is where canaries are
 * checked. */

static void with_neighbours(size_t n, void (*bad)(char *p, size_t n)) {
  char *a[5];
  for (int i = 0; i < 5; i++)
    a[i] = xmalloc(n);
  char *p = a[2];
  memset(p, 'p', n);
  misuse_begin();
  bad(p, n);
  misuse_wrote();
  free(p);
  misuse_end();
  for (int i = 0; i < 5; i++)
    if (i != 2) free(a[i]);
  churn(n, churn_rounds(n));
}

static void write_range(char *from, size_t len) {
  volatile char *v = from;
  for (size_t i = 0; i < len; i++)
    v[i] = 'x';
}
static void write_down(char *from, size_t len) { /* from-1 down to from-len */
  volatile char *v = from;
  for (size_t i = 1; i <= len; i++)
    v[-(ptrdiff_t)i] = 'x';
}

static void of1_write(char *p, size_t n) {
  write_range(p + n, 1);
}
static void of1_memcpy(char *p, size_t n) {
  memcpy(p, source, n + 1);
}
static void of32_write(char *p, size_t n) {
  write_range(p + n, 32);
}
static void of32_memcpy(char *p, size_t n) {
  memcpy(p, source, n + 32);
}
static void of1m_write(char *p, size_t n) {
  write_range(p + n, MiB);
}
static void of1m_memcpy(char *p, size_t n) {
  memcpy(p, source, n + MiB);
}
/* A stray write that skips the bytes right after the block: 8 bytes 32
 * past its end (where the next block starts, for the small size) */
static void of32_skip(char *p, size_t n) {
  write_range(p + n + 32, 8);
}
static void uf1_write(char *p, size_t n) {
  write_down(p, 1), (void)n;
}
static void uf1_memcpy(char *p, size_t n) {
  memcpy(p - 1, source, n + 1);
}
static void uf32_write(char *p, size_t n) {
  write_down(p, 32), (void)n;
}
static void uf32_memcpy(char *p, size_t n) {
  memcpy(p - 32, source, n + 32);
}
static void uf1m_write(char *p, size_t n) {
  write_down(p, MiB), (void)n;
}
static void uf1m_memcpy(char *p, size_t n) {
  memcpy(p - MiB, source, n + MiB);
}

#define OVERFLOW_CASE(name)                                                    \
  static void case_##name(size_t n) {                                          \
    with_neighbours(n, name);                                                  \
  }
OVERFLOW_CASE(of1_write)
OVERFLOW_CASE(of1_memcpy)
OVERFLOW_CASE(of32_write)
OVERFLOW_CASE(of32_memcpy)
OVERFLOW_CASE(of1m_write)
OVERFLOW_CASE(of1m_memcpy)
OVERFLOW_CASE(of32_skip)
OVERFLOW_CASE(uf1_write)
OVERFLOW_CASE(uf1_memcpy)
OVERFLOW_CASE(uf32_write)
OVERFLOW_CASE(uf32_memcpy)
OVERFLOW_CASE(uf1m_write)
OVERFLOW_CASE(uf1m_memcpy)

/* A block never freed: only a check of the whole heap (at exit) sees it. */
static void of1_leaked(size_t n) {
  char *p = xmalloc(n);
  misuse_begin();
  write_range(p + n, 1);
  misuse_wrote();
  misuse_end();
}

/* ---- use after free
 * ------------------------------------------------------------ */

/* A use after free as programs make them: a pointer-sized field written in
 * the middle of the block. */
static void uaf_store(char *p, size_t n) {
  char *at = (char *)misuse_launder(p) + ((n / 2) & ~(size_t)7);
  *(volatile uint64_t *)at = 0x7575757575757575ull;
}

static void uaf_write(size_t n) {
  char *p = xmalloc(n);
  free(p);
  misuse_begin();
  uaf_store(p, n);
  misuse_wrote();
  misuse_end();
  churn(n, churn_rounds(n));
}

/* A NULL stored in a freed struct: zeros, the value secure mode's scrubbing
 * would write itself */
static void uaf_zero(size_t n) {
  char *p = xmalloc(n);
  memset(p, 0x33, n);
  free(p);
  misuse_begin();
  char *at = (char *)misuse_launder(p) + ((n / 2) & ~(size_t)7);
  *(volatile uint64_t *)at = 0;
  misuse_wrote();
  misuse_end();
  churn(n, churn_rounds(n));
}

static void uaf_write_reuse(size_t n) {
  char *p = xmalloc(n);
  free(p);
  char *q = xmalloc(n);
  misuse_begin();
  uaf_store(p, n);
  misuse_wrote();
  misuse_end();
  free(q);
  churn(n, churn_rounds(n));
}

/* The first field of a block another thread freed, written: the block
 * waits on its page's cross-thread list, whose links the owner now checks
 * as it pops the blocks rather than when it takes the list over. */
static void uaf_xthread(size_t n) {
  char *p = xmalloc(n);
  in_thread(thread_free, p);
  misuse_begin();
  *(volatile uint64_t *)misuse_launder(p) = 0x7575757575757575ull;
  misuse_wrote();
  misuse_end();
  churn(n, churn_rounds(n));
}

/* ---- zero-size blocks
 * ----------------------------------------------------------- */

static void zero_read(size_t n) {
  volatile char *p = xmalloc(0);
  misuse_begin();
  char c = p[0];
  misuse_wrote();
  misuse_end();
  (void)c;
  (void)n;
}

static void zero_write(size_t n) {
  volatile char *p = xmalloc(0);
  misuse_begin();
  p[0] = 'z';
  misuse_wrote();
  misuse_end();
  (void)n;
}

static void zero_unique(size_t n) {
  void *a = malloc(0), *b = malloc(0);
  misuse_property(a && b && a != b);
  free(a);
  free(b);
  (void)n;
}

/* ---- reuse and zeroing
 * ------------------------------------------------------------ */

static void reuse_immediate(size_t n) {
  void *p = xmalloc(n);
  free(p);
  void *q = xmalloc(n);
  misuse_property(q != p);
  free(q);
}

static void reuse_soon(size_t n) {
  void *p = xmalloc(n);
  free(p);
  void *q[32];
  bool reused = false;
  for (int i = 0; i < 32; i++) {
    q[i] = xmalloc(n);
    if (q[i] == p) reused = true;
  }
  misuse_property(!reused);
  for (int i = 0; i < 32; i++)
    free(q[i]);
}

static sigjmp_buf read_jump;
static void on_read_fault(int sig) {
  (void)sig;
  siglongjmp(read_jump, 1);
}

/* The old contents cannot be read back through the freed pointer: they are
 * gone, or the memory is inaccessible. The old bytes are varied, so that a
 * fill that is not zero (secure mode's keyed word) matches one of them now
 * and then by chance, about one byte in 256: a few matches are allowed, a
 * block left as it was (or half of it) is not. */
static unsigned char old_byte(size_t i) {
  uint32_t x = (uint32_t)i * 2654435761u;
  return (unsigned char)(x >> 24);
}
static void zero_freed(size_t n) {
  unsigned char *p = xmalloc(n);
  for (size_t i = 0; i < n; i++)
    p[i] = old_byte(i);
  free(p);
  struct sigaction sa, old_segv, old_bus;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_read_fault;
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);
  size_t left = 0;
  if (sigsetjmp(read_jump, 1) == 0) {
    volatile unsigned char *v = misuse_launder(p);
    for (size_t i = 16; i < n; i++)
      left += v[i] == old_byte(i);
  }
  sigaction(SIGSEGV, &old_segv, NULL);
  sigaction(SIGBUS, &old_bus, NULL);
  misuse_property(left <= (n - 16) / 64 + 2);
}

/* A new block is all zero even where freed blocks held data. */
static void zero_new(size_t n) {
  enum { K = 40 };
  unsigned char *d[K];
  for (int i = 0; i < K; i++) {
    d[i] = xmalloc(n);
    memset(d[i], 0xAB, n);
  }
  for (int i = 0; i < K; i++)
    free(d[i]);
  bool zero = true;
  for (int i = 0; i < K && zero; i++) {
    d[i] = xmalloc(n);
    for (size_t k = 0; k < n; k++)
      if (d[i][k]) zero = false;
  }
  misuse_property(zero);
}

/* ---- absurd sizes
 * ------------------------------------------------------------------ */

/* Sizes through a volatile, so the compiler does not object to them. */
static volatile size_t huge_max = SIZE_MAX;
static volatile size_t huge_ptrdiff = (size_t)PTRDIFF_MAX + 1;
static volatile size_t huge_vast = (size_t)1 << 47; /* past the address space */
static volatile size_t huge_half = SIZE_MAX / 2;
static volatile size_t huge_align = (size_t)1 << 47;

static void abs_malloc_max(size_t n) {
  errno = 0;
  void *p = malloc(huge_max);
  misuse_property(p == NULL && errno == ENOMEM);
  (void)n;
}
static void abs_malloc_ptrdiff(size_t n) {
  errno = 0;
  void *p = malloc(huge_ptrdiff);
  misuse_property(p == NULL && errno == ENOMEM);
  (void)n;
}
static void abs_malloc_vast(size_t n) {
  errno = 0;
  void *p = malloc(huge_vast);
  misuse_property(p == NULL && errno == ENOMEM);
  (void)n;
}
static void abs_calloc_overflow(size_t n) {
  errno = 0;
  void *p = calloc(huge_half, 3);
  misuse_property(p == NULL && errno == ENOMEM);
  (void)n;
}
static void abs_realloc_max(size_t n) {
  char *p = xmalloc(32);
  memset(p, 7, 32);
  errno = 0;
  void *q = realloc(p, huge_max);
  misuse_property(q == NULL && errno == ENOMEM && p[31] == 7);
  free(p);
  (void)n;
}
static void abs_aligned_huge(size_t n) {
  void *p = aligned_alloc(huge_align, huge_align);
  void *q = NULL;
  int r = posix_memalign(&q, huge_align << 15, 16);
  misuse_property(p == NULL && r != 0 && q == NULL);
  (void)n;
}

/* ---- debug mode's leak report
 * ------------------------------------------------- Not a misuse case: `misuse
 * --leaks` runs this child in debug mode and checks the report: blocks no
 * pointer reaches any more are definitely lost (three dropped at once, one
 * whose only pointer was overwritten), blocks a global holds are still
 * reachable, directly or through another block; each named with its size
 * and the function that allocated it. */
__attribute__((noinline)) void *misuse_leaky_site(size_t n) {
  void *p = malloc(n);
  return misuse_launder(p);
}
__attribute__((noinline)) void *misuse_lost_site(size_t n) {
  void *p = malloc(n);
  memset(p, 0x11, n);
  return misuse_launder(p);
}
__attribute__((noinline)) void *misuse_kept_site(size_t n) {
  void *p = malloc(n);
  memset(p, 0x22, n);
  return misuse_launder(p);
}
__attribute__((noinline)) void *misuse_chain_site(size_t n) {
  void *p = malloc(n);
  memset(p, 0x33, n);
  return misuse_launder(p);
}
/* Dead stack slots below the caller keep old pointers; the frames of exit
 * and of the report land there without writing every slot, and the scan
 * takes the live stack as it finds it (as memcheck does). Clear them. */
__attribute__((noinline)) static void clear_stack(void) {
  volatile char pad[16384];
  memset((char *)pad, 0, sizeof pad);
}

void *volatile misuse_holder; /* the lost block's only pointer, overwritten */
void *volatile misuse_kept;   /* a block, and one it points to */

__attribute__((noinline)) static void make_leaks(void) {
  for (volatile int i = 0; i < 3; i++) /* one call site */
    misuse_leaky_site(1234);
  misuse_holder = misuse_lost_site(1111);
  misuse_holder = NULL;
  void **kept = misuse_kept_site(4321);
  kept[100] = misuse_chain_site(2222); /* reachable only through kept */
  misuse_kept = kept;
  kept = NULL;
}

static void leaks(size_t n) {
  make_leaks();
  clear_stack(); /* where make_leaks ran */
  (void)n;
}

/* ---- the cases
 * --------------------------------------------------------------- */

#define SIZED 1
#define PROP 2
static const misuse_case_t leak_case = {"leaks", "", "", 0, leaks};
static const misuse_case_t c_cases[] = {
    {"df_immediate", "double free", "immediately", SIZED, df_immediate},
    {"df_delayed", "double free", "after other mallocs and frees", SIZED,
     df_delayed},
    {"df_interleaved", "double free", "interleaved: free(p) free(q) free(p)",
     SIZED, df_interleaved},
    {"df_reused", "double free", "after the block was handed out again", SIZED,
     df_reused},
    {"df_cross_thread", "double free", "first free in another thread", SIZED,
     df_cross_thread},
    {"df_cross_twice", "double free", "both frees in other threads", SIZED,
     df_cross_twice},
    {"df_after_trim", "double free",
     "after malloc_trim (a large block's mapping is gone)", SIZED,
     df_after_trim},
    {"df_realloc", "double free", "realloc of a freed block", SIZED,
     df_realloc},
    {"df_usable", "double free", "malloc_usable_size of a freed block", SIZED,
     df_usable},
    {"if_stack", "invalid free", "stack address", 0, if_stack},
    {"if_global", "invalid free", "global array", 0, if_global},
    {"if_alloca", "invalid free", "alloca block", 0, if_alloca},
    {"if_interior", "invalid free", "interior pointer (p + 16)", SIZED,
     if_interior},
    {"if_unaligned", "invalid free", "unaligned pointer (p + 1)", SIZED,
     if_unaligned},
    {"if_far", "invalid free", "far away, unmapped (1 TiB)", 0, if_far},
    {"if_noncanonical", "invalid free", "non-canonical address", 0,
     if_noncanonical},
    {"if_mmap", "invalid free", "inside an mmap'd region", 0, if_mmap},
    {"if_glibc", "invalid free", "block from glibc's malloc", SIZED, if_glibc},
    {"if_realloc_interior", "invalid free", "realloc of an interior pointer",
     SIZED, if_realloc_interior},
    {"if_realloc_stack", "invalid free", "realloc of a stack address", 0,
     if_realloc_stack},
    {"if_usable_interior", "invalid free",
     "malloc_usable_size of an interior pointer", SIZED, if_usable_interior},
    {"fs_larger", "wrong size", "free_sized with a larger size", SIZED,
     fs_larger},
    {"fs_smaller", "wrong size", "free_sized with a quarter of the size", SIZED,
     fs_smaller},
    {"fas_wrong", "wrong size", "free_aligned_sized with a wrong size", SIZED,
     fas_wrong},
    {"of1_write", "overflow", "1 byte past the end, plain write", SIZED,
     case_of1_write},
    {"of1_memcpy", "overflow", "1 byte past the end, memcpy", SIZED,
     case_of1_memcpy},
    {"of32_write", "overflow", "32 bytes past the end, plain writes", SIZED,
     case_of32_write},
    {"of32_memcpy", "overflow", "32 bytes past the end, memcpy", SIZED,
     case_of32_memcpy},
    {"of1m_write", "overflow", "1 MiB past the end, plain writes", SIZED,
     case_of1m_write},
    {"of1m_memcpy", "overflow", "1 MiB past the end, memcpy", SIZED,
     case_of1m_memcpy},
    {"of32_skip", "overflow",
     "8 bytes written 32 bytes past the end (skipping the bytes next to it)",
     SIZED, case_of32_skip},
    {"of1_leaked", "overflow", "1 byte past the end of a block never freed",
     SIZED, of1_leaked},
    {"uf1_write", "underflow", "1 byte before the start, plain write", SIZED,
     case_uf1_write},
    {"uf1_memcpy", "underflow", "1 byte before the start, memcpy", SIZED,
     case_uf1_memcpy},
    {"uf32_write", "underflow", "32 bytes before the start, plain writes",
     SIZED, case_uf32_write},
    {"uf32_memcpy", "underflow", "32 bytes before the start, memcpy", SIZED,
     case_uf32_memcpy},
    {"uf1m_write", "underflow", "1 MiB before the start, plain writes", SIZED,
     case_uf1m_write},
    {"uf1m_memcpy", "underflow", "1 MiB before the start, memcpy", SIZED,
     case_uf1m_memcpy},
    {"uaf_write", "use after free", "write (8 bytes)", SIZED, uaf_write},
    {"uaf_zero", "use after free", "write of zeros (8 bytes, a NULL pointer)",
     SIZED, uaf_zero},
    {"uaf_write_reuse", "use after free",
     "write after the size was allocated again", SIZED, uaf_write_reuse},
    {"uaf_xthread", "use after free",
     "first 8 bytes written after another thread freed it", SIZED, uaf_xthread},
    {"zero_read", "zero-size block", "read from malloc(0)", 0, zero_read},
    {"zero_write", "zero-size block", "write to malloc(0)", 0, zero_write},
    {"zero_unique", "zero-size block", "malloc(0) twice: distinct pointers",
     PROP, zero_unique},
    {"reuse_immediate", "reuse", "free then malloc: a different address",
     SIZED | PROP, reuse_immediate},
    {"reuse_soon", "reuse", "not among the next 32 blocks of the size",
     SIZED | PROP, reuse_soon},
    {"zero_freed", "zeroing", "freed block's old data unreadable", SIZED | PROP,
     zero_freed},
    {"zero_new", "zeroing", "new blocks zero where freed ones had data",
     SIZED | PROP, zero_new},
    {"abs_malloc_max", "absurd size", "malloc(SIZE_MAX): NULL, ENOMEM", PROP,
     abs_malloc_max},
    {"abs_malloc_ptrdiff", "absurd size", "malloc(PTRDIFF_MAX + 1)", PROP,
     abs_malloc_ptrdiff},
    {"abs_malloc_vast", "absurd size", "malloc(2^47): beyond the address space",
     PROP, abs_malloc_vast},
    {"abs_calloc_overflow", "absurd size", "calloc(SIZE_MAX/2, 3): overflow",
     PROP, abs_calloc_overflow},
    {"abs_realloc_max", "absurd size", "realloc(p, SIZE_MAX): NULL, block kept",
     PROP, abs_realloc_max},
    {"abs_aligned_huge", "absurd size",
     "aligned_alloc(2^47, 2^47), posix_memalign(2^62)", PROP, abs_aligned_huge},
};

/* ---- the parent's side
 * ----------------------------------------------------------- */

typedef struct size_def {
  const char *name;
  size_t bytes;
} size_def_t;
static const size_def_t sizes[] = {{"small", 24},
                                   {"page", 4096},
                                   {"medium", 100000},
                                   {"large", (3u << 20) + 1000}};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static const char *modes[] = {"default", "secure", "debug"};

static const misuse_case_t *all_cases[128];
static size_t ncases;

static void collect_cases(void) {
  for (size_t i = 0; i < sizeof c_cases / sizeof c_cases[0]; i++)
    all_cases[ncases++] = &c_cases[i];
  size_t n = 0;
  const misuse_case_t *cxx = misuse_cxx_cases(&n);
  for (size_t i = 0; i < n; i++)
    all_cases[ncases++] = &cxx[i];
}

static const misuse_case_t *find_case(const char *name) {
  if (!strcmp(name, "leaks")) return &leak_case;
  for (size_t i = 0; i < ncases; i++)
    if (!strcmp(all_cases[i]->name, name)) return all_cases[i];
  return NULL;
}

static int run_child(const char *name, const char *size) {
  const misuse_case_t *c = find_case(name);
  if (!c) {
    fprintf(stderr, "misuse: no case %s\n", name);
    return 2;
  }
  size_t n = 0;
  for (size_t i = 0; i < NSIZES; i++)
    if (!strcmp(sizes[i].name, size)) n = sizes[i].bytes;
  if (!n) n = 64;
  struct rlimit nocore = {0, 0};
  setrlimit(RLIMIT_CORE, &nocore);
  /* copying zeroes over zeroes would go unnoticed; a case copies at most
   * n + 1 MiB of it (of1m_memcpy, uf1m_memcpy), and filling all 6 MiB in
   * every child was most of the suite's time (under qemu, of each mode's) */
  size_t fill = n + MiB < sizeof source ? n + MiB : sizeof source;
  for (size_t i = 0; i < fill; i++)
    source[i] = (char)('A' + i % 23);
  c->run(n);
  mark("F");
  exit(0); /* exit handlers (debug mode's heap check) run */
}

typedef struct outcome {
  char word[16];
  char detail[200]; /* allot's message, if any */
} outcome_t;

static char last_stderr[8192];

/* Run one case in a child with the mode's environment. */
static outcome_t run_case(const char *self, const char *mode,
                          const misuse_case_t *c, const char *size) {
  outcome_t o;
  memset(&o, 0, sizeof o);
  int out[2], err[2];
  if (pipe(out) || pipe(err)) {
    strcpy(o.word, "error");
    return o;
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    close(out[0]);
    close(err[0]);
    unsetenv("ALLOT_SECURE");
    unsetenv("ALLOT_DEBUG");
    if (!strcmp(mode, "secure")) setenv("ALLOT_SECURE", "1", 1);
    if (!strcmp(mode, "debug")) setenv("ALLOT_DEBUG", "1", 1);
    alarm(20);
    /* cross-built tests run under an emulator (docs/testing.md, aarch64) */
    const char *emu = getenv("ALLOT_TEST_EMULATOR");
    if (emu && *emu)
      execlp(emu, emu, self, "--run", c->name, size, (char *)NULL);
    execl(self, self, "--run", c->name, size, (char *)NULL);
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  char obuf[256], ebuf[8192];
  size_t olen = 0, elen = 0;
  /* read both pipes to the end (stderr can be long: leak reports) */
  struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds) {
    if (poll(fds, 2, -1) < 0) break;
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char tmp[4096];
      ssize_t r = read(fds[i].fd, tmp, sizeof tmp);
      if (r <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        open_fds--;
        continue;
      }
      char *buf = i == 0 ? obuf : ebuf;
      size_t *len = i == 0 ? &olen : &elen;
      size_t cap = i == 0 ? sizeof obuf : sizeof ebuf;
      size_t take = (size_t)r < cap - 1 - *len ? (size_t)r : cap - 1 - *len;
      memcpy(buf + *len, tmp, take);
      *len += take;
    }
  }
  obuf[olen] = 0;
  ebuf[elen] = 0;
  memcpy(last_stderr, ebuf, elen + 1);
  int status = 0;
  waitpid(pid, &status, 0);
  /* allot's fault line ("allot: free(): ..."), not a leak report's */
  const char *msg = NULL;
  for (const char *l = ebuf; l && *l;
       l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    size_t len = strcspn(l, "\n");
    const char *paren = strstr(l, "(): ");
    if (!strncmp(l, "allot: ", 7) && paren && paren < l + len) {
      msg = l;
      if (len >= sizeof o.detail) len = sizeof o.detail - 1;
      memcpy(o.detail, l, len);
      break;
    }
  }
  bool b = strchr(obuf, 'B'), w = strchr(obuf, 'W'), e = strchr(obuf, 'E');
  bool f = strchr(obuf, 'F');
  bool allot_abort = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && msg;
  if (c->flags & PROP || strstr(obuf, "P")) {
    if (strstr(obuf, "P1"))
      strcpy(o.word, "yes");
    else if (strstr(obuf, "P0"))
      strcpy(o.word, c->flags & PROP ? "no" : "n/a");
    else
      strcpy(o.word, allot_abort ? "stopped" : "crash");
    return o;
  }
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
    strcpy(o.word, "hang");
  } else if (allot_abort) {
    strcpy(o.word, !b ? "error" : e ? "later" : "stopped");
  } else if (WIFSIGNALED(status) &&
             (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS)) {
    strcpy(o.word, b && !w && !e ? "fault" : "crash");
  } else if (WIFSIGNALED(status)) {
    strcpy(o.word, "crash");
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && f) {
    strcpy(o.word, "no");
  } else {
    strcpy(o.word, "error");
    snprintf(o.detail, sizeof o.detail, "exit status %d: %.120s", status, ebuf);
  }
  return o;
}

typedef struct result {
  const misuse_case_t *c;
  outcome_t o[NSIZES]; /* [0] only, when not sized */
} result_t;

static result_t results[3][128];

static void run_mode(const char *self, int mi, bool print) {
  for (size_t i = 0; i < ncases; i++) {
    const misuse_case_t *c = all_cases[i];
    results[mi][i].c = c;
    size_t ns = c->flags & SIZED ? NSIZES : 1;
    for (size_t s = 0; s < ns; s++) {
      const char *sz = c->flags & SIZED ? sizes[s].name : "-";
      results[mi][i].o[s] = run_case(self, modes[mi], c, sz);
      if (print)
        printf("%s\t%s\t%s\t%s\t%s\n", modes[mi], c->name, sz,
               results[mi][i].o[s].word, results[mi][i].o[s].detail);
      fflush(stdout);
    }
  }
}

/* Over repeated runs: every outcome seen ("stopped/later" when secure
 * mode's random placement decides), and the weakest one (for claims). */
static char seen[3][128][NSIZES][40];
static char weakest[3][128][NSIZES][16];
static int strength(const char *w);

static void merge_run(int m) {
  for (size_t i = 0; i < ncases; i++)
    for (size_t s = 0; s < NSIZES; s++) {
      const char *w = results[m][i].o[s].word;
      char *all = seen[m][i][s];
      if (!w[0]) continue;
      if (!all[0]) {
        snprintf(all, sizeof seen[m][i][s], "%s", w);
        snprintf(weakest[m][i][s], sizeof weakest[m][i][s], "%s", w);
        continue;
      }
      char tmp[48];
      snprintf(tmp, sizeof tmp, "/%s/", all);
      char key[24];
      snprintf(key, sizeof key, "/%s/", w);
      if (!strstr(tmp, key)) {
        size_t len = strlen(all);
        snprintf(all + len, sizeof seen[m][i][s] - len, "/%s", w);
      }
      if (strength(w) < strength(weakest[m][i][s]))
        snprintf(weakest[m][i][s], sizeof weakest[m][i][s], "%s", w);
    }
}

/* One table cell: the outcome, or each size's when they differ. */
static void cell(int m, size_t i, char *out, size_t cap) {
  const misuse_case_t *c = all_cases[i];
  size_t ns = c->flags & SIZED ? NSIZES : 1;
  bool same = true;
  for (size_t s = 1; s < ns; s++)
    if (strcmp(seen[m][i][s], seen[m][i][0])) same = false;
  if (same) {
    /* the precision bounds it for GCC's truncation check, which on aarch64
     * loses the entry's size once cell() is inlined */
    snprintf(out, cap, "%.*s", (int)sizeof seen[m][i][0], seen[m][i][0]);
    return;
  }
  out[0] = 0;
  for (size_t s = 0; s < ns; s++) {
    size_t len = strlen(out);
    snprintf(out + len, cap - len, "%s%s: %s", s ? ", " : "", sizes[s].name,
             seen[m][i][s]);
  }
}

static void print_table(void) {
  printf("| misuse | case | default | secure | debug |\n");
  printf("|---|---|---|---|---|\n");
  const char *group = "";
  for (size_t i = 0; i < ncases; i++) {
    const misuse_case_t *c = all_cases[i];
    char cells[3][200];
    for (int m = 0; m < 3; m++)
      cell(m, i, cells[m], sizeof cells[m]);
    printf("| %s | %s | %s | %s | %s |\n",
           strcmp(group, c->group) ? c->group : "", c->title, cells[0],
           cells[1], cells[2]);
    group = c->group;
  }
}

/* The claims: an outcome that stops the misuse must stay one that does. */
static int strength(const char *w) {
  if (!strcmp(w, "stopped") || !strcmp(w, "fault") || !strcmp(w, "yes"))
    return 2;
  if (!strcmp(w, "later")) return 1;
  return 0;
}

static int check(const char *self, const char *mode, const char *file) {
  int mi = -1;
  for (int m = 0; m < 3; m++)
    if (!strcmp(modes[m], mode)) mi = m;
  if (mi < 0) {
    fprintf(stderr, "misuse: unknown mode %s\n", mode);
    return 2;
  }
  FILE *f = fopen(file, "r");
  if (!f) {
    perror(file);
    return 2;
  }
  run_mode(self, mi, false);
  char line[256];
  int failures = 0, claims = 0;
  while (fgets(line, sizeof line, f)) {
    char m[32], name[64], size[32], want[32];
    if (line[0] == '#' ||
        sscanf(line, "%31s %63s %31s %31s", m, name, size, want) != 4)
      continue;
    if (strcmp(m, mode)) continue;
    claims++;
    const outcome_t *got = NULL;
    for (size_t i = 0; i < ncases; i++) {
      if (strcmp(all_cases[i]->name, name)) continue;
      if (!(all_cases[i]->flags & SIZED)) {
        got = &results[mi][i].o[0];
      } else {
        for (size_t s = 0; s < NSIZES; s++)
          if (!strcmp(sizes[s].name, size)) got = &results[mi][i].o[s];
      }
    }
    if (!got) {
      printf("FAIL %s %s %s: no such case\n", mode, name, size);
      failures++;
    } else if (strength(got->word) < strength(want)) {
      printf("FAIL %s %s %s: claimed %s, measured %s %s\n", mode, name, size,
             want, got->word, got->detail);
      failures++;
    }
  }
  fclose(f);
  printf("%s mode: %d claims, %d failed\n", mode, claims, failures);
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  collect_cases();
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return 2;
  self[len] = 0;
  if (argc == 4 && !strcmp(argv[1], "--run"))
    return run_child(argv[2], argv[3]);
  if (argc == 3 && !strcmp(argv[1], "--mode")) {
    for (int m = 0; m < 3; m++)
      if (!strcmp(modes[m], argv[2])) {
        run_mode(self, m, true);
        return 0;
      }
  }
  if ((argc == 2 || argc == 3) &&
      (!strcmp(argv[1], "--table") || !strcmp(argv[1], "--claims"))) {
    /* every mode, repeated: the table, or the claims file (the weakest
     * outcome of each case that stops the misuse at all) */
    int reps = argc == 3 ? atoi(argv[2]) : 1;
    for (int r = 0; r < (reps > 0 ? reps : 1); r++)
      for (int m = 0; m < 3; m++) {
        run_mode(self, m, false);
        merge_run(m);
      }
    if (!strcmp(argv[1], "--table")) {
      print_table();
      return 0;
    }
    for (int m = 0; m < 3; m++)
      for (size_t i = 0; i < ncases; i++) {
        const misuse_case_t *c = all_cases[i];
        size_t ns = c->flags & SIZED ? NSIZES : 1;
        for (size_t s = 0; s < ns; s++)
          if (strength(weakest[m][i][s]) > 0)
            printf("%s %s %s %s\n", modes[m], c->name,
                   c->flags & SIZED ? sizes[s].name : "-", weakest[m][i][s]);
      }
    return 0;
  }
  if (argc == 2 && !strcmp(argv[1], "--leaks")) {
    /* debug mode's leak report: count, bytes, sizes, lost or reachable, and
     * the site: each header line, and the site's name in the frames below
     * it (before the next site) */
    run_case(self, "debug", &leak_case, "-");
    const char *want[][2] = {
        {"3702 bytes in 3 blocks of 1234 bytes, definitely lost, allocated at:",
         "misuse_leaky_site"},
        {"1111 bytes in 1 block of 1111 bytes, definitely lost, allocated at:",
         "misuse_lost_site"},
        {"4321 bytes in 1 block of 4321 bytes, reachable, allocated at:",
         "misuse_kept_site"},
        {"2222 bytes in 1 block of 2222 bytes, reachable, allocated at:",
         "misuse_chain_site"},
        {"allot: leak report: ", " definitely lost, "},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
      const char *at = strstr(last_stderr, want[i][0]);
      const char *next = at ? strchr(at, '\n') : NULL; /* the next site */
      while (i < 4 && next &&
             !(!strncmp(next, "\nallot:   ", 10) && next[10] >= '0' &&
               next[10] <= '9'))
        next = strchr(next + 1, '\n');
      const char *name = at ? strstr(at, want[i][1]) : NULL;
      if (!at || !name || (next && name > next)) {
        printf("FAIL: leak report lacks \"%s\" with \"%s\"\n", want[i][0],
               want[i][1]);
        bad = 1;
      }
    }
    printf("%s", last_stderr);
    return bad;
  }
  if (argc == 4 && !strcmp(argv[1], "--check"))
    return check(self, argv[2], argv[3]);
  fprintf(stderr,
          "usage: misuse --run CASE SIZE | --mode MODE | --table [REPS] |"
          " --claims [REPS] | --check MODE FILE | --leaks\n");
  return 2;
}
