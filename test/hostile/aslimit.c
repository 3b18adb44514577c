/* aslimit.c: allot under an address-space limit (what `ulimit -v` sets).
 *
 * The test lowers RLIMIT_AS to its current use plus LIMIT_MIB, then, for
 * small, medium and large blocks in turn, allocates until malloc returns
 * NULL. It checks that the failure is clean (NULL with errno ENOMEM from
 * malloc, calloc, realloc, aligned_alloc; ENOMEM returned by posix_memalign;
 * a failed realloc leaves its block intact), that every block handed out is
 * still intact, that freeing a few blocks makes allocation work again, and
 * that after freeing everything and malloc_trim() the address space comes
 * back: each round must fit about as many blocks as the first, so nothing
 * leaks address space across rounds. Runs on the standard names (linked
 * with liballot.so), as programs use them. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "allot.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define LIMIT_MIB 160
#define MAXBLOCKS (1 << 16)

static void *blocks[MAXBLOCKS];
static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "aslimit: FAILED: " __VA_ARGS__);                        \
      fputc('\n', stderr);                                                     \
      failures++;                                                              \
    }                                                                          \
  } while (0)

static size_t vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  size_t kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb * KIB;
}

static void stamp(void *p, size_t size, size_t i) {
  unsigned char *b = p;
  b[0] = (unsigned char)i;
  b[size / 2] = (unsigned char)(i >> 8);
  b[size - 1] = (unsigned char)(i ^ 0x5a);
}

static int stamped(const void *p, size_t size, size_t i) {
  const unsigned char *b = p;
  return b[0] == (unsigned char)i && b[size / 2] == (unsigned char)(i >> 8) &&
         b[size - 1] == (unsigned char)(i ^ 0x5a);
}

/* Allocate blocks of size until malloc fails; returns how many. */
static int fill_up(size_t size, const char *kind) {
  int n = 0;
  for (;;) {
    if (n == MAXBLOCKS) {
      CHECK(0, "%s: %d blocks and still no failure: limit not in force?", kind,
            n);
      break;
    }
    errno = 0;
    void *p = malloc(size);
    if (!p) {
      CHECK(errno == ENOMEM, "%s: malloc(%zu) NULL with errno %d, not ENOMEM",
            kind, size, errno);
      break;
    }
    CHECK(allot_owns(p), "%s: block not from allot (is malloc replaced?)",
          kind);
    stamp(p, size, (size_t)n);
    blocks[n++] = p;
  }
  return n;
}

/* With memory exhausted: every other way to allocate fails cleanly too. */
static void others_fail(size_t size, int n, const char *kind) {
  errno = 0;
  void *p = calloc(1, size);
  CHECK(p || errno == ENOMEM, "%s: calloc NULL without ENOMEM", kind);
  free(p);
  errno = 0;
  p = aligned_alloc(4096, size);
  CHECK(p || errno == ENOMEM, "%s: aligned_alloc NULL without ENOMEM", kind);
  free(p);
  p = NULL;
  int e = posix_memalign(&p, 64, size);
  CHECK(e == 0 || e == ENOMEM, "%s: posix_memalign returned %d", kind, e);
  if (e == 0) free(p);
  if (n > 0) {
    /* growing the last block well beyond what is left must fail and keep it */
    errno = 0;
    void *q = realloc(blocks[n - 1], size + 64 * MIB);
    if (q) {
      CHECK(0, "%s: realloc by 64 MiB succeeded at the limit", kind);
      blocks[n - 1] = q;
    } else {
      CHECK(errno == ENOMEM, "%s: realloc NULL without ENOMEM", kind);
    }
    CHECK(stamped(blocks[n - 1], size, (size_t)(n - 1)),
          "%s: failed realloc damaged the block", kind);
  }
}

static void verify_and_free(int n, size_t size, const char *kind) {
  for (int i = 0; i < n; i++) {
    CHECK(stamped(blocks[i], size, (size_t)i), "%s: block %d corrupted", kind,
          i);
    free(blocks[i]);
    blocks[i] = NULL;
  }
}

static void round_trip(size_t size, const char *kind) {
  int first = 0;
  for (int round = 0; round < 3; round++) {
    int n = fill_up(size, kind);
    CHECK(n > 0, "%s: not a single block fits", kind);
    others_fail(size, n, kind);
    /* recovery within what is mapped: free a quarter, allocate them again */
    int back = 0;
    for (int i = 0; i < n; i += 4) {
      free(blocks[i]);
      blocks[i] = NULL;
    }
    for (int i = 0; i < n; i += 4) {
      blocks[i] = malloc(size);
      if (blocks[i]) {
        stamp(blocks[i], size, (size_t)i);
        back++;
      } else {
        break;
      }
    }
    int expect = (n + 3) / 4;
    CHECK(back >= expect - 1,
          "%s: after freeing %d blocks only %d could be allocated again", kind,
          expect, back);
    if (back < expect) { /* already reported: just clean up */
      for (int i = 0; i < n; i++)
        free(blocks[i]);
      memset(blocks, 0, sizeof blocks);
    } else {
      verify_and_free(n, size, kind);
    }
    malloc_trim(0);
    if (round == 0)
      first = n;
    else
      CHECK(n + 1 >= first - first / 20,
            "%s: round %d fits %d blocks, round 0 fitted %d: address space "
            "not given back",
            kind, round, n, first);
    printf("aslimit: %-6s round %d: %5d blocks of %zu bytes\n", kind, round, n,
           size);
  }
}

int main(void) {
  /* stdio and the first heap exist before the limit */
  printf("aslimit: limit %d MiB above the current address space\n", LIMIT_MIB);
  fflush(stdout);
  free(malloc(1));
  struct rlimit rl;
  size_t base = vm_size();
  if (!base) {
    fprintf(stderr, "aslimit: cannot read VmSize\n");
    return 1;
  }
  rl.rlim_cur = rl.rlim_max = base + (size_t)LIMIT_MIB * MIB;
  if (setrlimit(RLIMIT_AS, &rl) != 0) {
    perror("aslimit: setrlimit");
    return 1;
  }
  round_trip(4000, "small");
  round_trip(200 * KIB, "medium");
  round_trip(6 * MIB, "large");
  round_trip(3000, "small");
  /* after all that, lifting the limit again must leave allot fully working */
  void *big = malloc(64 * MIB);
  CHECK(big != NULL, "64 MiB block after the rounds failed");
  free(big);
  if (failures)
    fprintf(stderr, "aslimit: %d failures\n", failures);
  else
    printf("aslimit: passed\n");
  return failures ? 1 : 0;
}
