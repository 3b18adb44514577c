/* mem_empty_page.c: a class's only page, emptied and not used again, goes
 * back (page.c, page_sweep_empty; docs/memory.md, "A class's last page").
 *
 * A thread keeps its class's only page when the class's last block is freed,
 * so that a class whose blocks come and go does not give up and take back a
 * page each time. A class that is done with should not keep it for good:
 * the owner retires a page found empty at two of its looks, one purge delay
 * apart, and it goes back after the delay like any free page.
 *
 *   48 blocks of 1 KiB (one page of their class, 12 OS pages written), all
 *   freed: the page is still resident right after (kept); then the program
 *   goes on allocating blocks of another class (slow paths, as any program
 *   that allocates does: 64 KiB every 5 ms) for up to 3 s: the kept page's
 *   memory must leave the resident set, or be handed to the other class
 *   (which purges it first), within that time.
 *
 * Run with ALLOT_PROMPT_RETURN=0 (test/memory.cmake): prompt return would
 * give the page back for another reason. Against code that keeps the page
 * (or another allocator) it fails: "still resident after 3000 ms".
 * Exit 0 pass, 1 fail. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE (64 * 1024) /* allot's small page */
#define NA 48
#define ROUND 128
#define MAX_ROUNDS 600

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* OS pages of [p, p + len) resident */
static int resident(uintptr_t p, size_t len) {
  long os = sysconf(_SC_PAGESIZE);
  unsigned char vec[PAGE / 4096];
  if (mincore((void *)p, len, vec) != 0) {
    perror("mem_empty_page: mincore");
    exit(1);
  }
  int n = 0;
  for (size_t i = 0; i < len / (size_t)os; i++)
    n += vec[i] & 1;
  return n;
}

static void *blocks[MAX_ROUNDS * ROUND];

int main(void) {
  void *a[NA];
  for (int i = 0; i < NA; i++) {
    a[i] = malloc(1024);
    if (!a[i]) return 1;
    memset(a[i], 0x5a, 1024);
  }
  uintptr_t page = (uintptr_t)a[0] & ~(uintptr_t)(PAGE - 1);
  for (int i = 0; i < NA; i++)
    if (((uintptr_t)a[i] & ~(uintptr_t)(PAGE - 1)) != page) {
      printf("mem_empty_page: SKIP: the blocks span pages (not allot?)\n");
      return 77;
    }
  for (int i = 0; i < NA; i++)
    free(a[i]);
  int kept = resident(page, PAGE);
  printf("mem_empty_page: %d OS pages of the emptied page resident after "
         "the frees\n",
         kept);
  if (kept < 12) {
    printf("mem_empty_page: FAILED: the page was not kept (%d resident)\n",
           kept);
    return 1;
  }
  double t0 = now_ms(), t = t0;
  int n = 0, taken = 0, left = kept;
  for (int r = 0; r < MAX_ROUNDS && t - t0 < 3000; r++) {
    for (int i = 0; i < ROUND; i++) {
      void *p = malloc(512);
      if (!p) return 1;
      memset(p, 0xa5, 512);
      blocks[n++] = p;
      if (((uintptr_t)p & ~(uintptr_t)(PAGE - 1)) == page) taken = 1;
    }
    left = resident(page, PAGE);
    t = now_ms();
    if (taken || left == 0) break;
    usleep(5000);
  }
  for (int i = 0; i < n; i++)
    free(blocks[i]);
  if (taken)
    printf("mem_empty_page: the page went to another class after %.0f ms\n",
           t - t0);
  else if (left == 0)
    printf("mem_empty_page: the page's memory went back after %.0f ms\n",
           t - t0);
  else {
    printf("mem_empty_page: FAILED: %d OS pages of the emptied page still "
           "resident after %.0f ms\n",
           left, t - t0);
    return 1;
  }
  return 0;
}
