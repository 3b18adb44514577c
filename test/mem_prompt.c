/* mem_prompt.c: prompt return (purge.c, purge_prompt; docs/memory.md,
 * "Prompt return"). When the owner's frees leave its heap nearly empty, the
 * free memory goes back to the OS at once instead of after the purge delay,
 * within bounds on what that may cost a program that allocates again. One
 * mode per CTest entry (test/memory.cmake), each run with a purge delay of an
 * hour and no purge thread, so nothing else gives memory back:
 *
 *   empty    8 MiB of small and medium blocks, all freed: allot's resident
 *            bytes (committed) fall by three quarters or more before the
 *            next call (a class's last page, kept for the class, goes back
 *            only if it was empty when the heap was looked at), and the heap
 *            is whole and usable after (allot_check, contents)
 *   off      the same with ALLOT_PROMPT_RETURN=0: nothing goes back (the
 *            test's own check that the mode above can fail)
 *   held     8 MiB allocated, every other run of 8 blocks freed: a heap
 *            half full keeps its free memory for reuse
 *   cycles   30 rounds of 4 MiB allocated and freed: the first round's frees
 *            give it back, the following rounds' (the heap took memory since,
 *            within 20 purge delays) keep it, so a program that cycles
 *            faults its memory in once, not every round
 *   again    (its own purge delay, 50 ms, so 20 delays are 1 s) 1.5 MiB
 *            allocated and freed four times: the first round's frees give
 *            it back (before the next allocation: the last look comes where
 *            the heap can first pass the ratio test, not a step of 256 KiB
 *            later); the second, right after, keeps it, and since the heap
 *            took memory again within the 1 s bound, that bound doubles;
 *            the third, 1.2 s later, still keeps it; the fourth, 1.2 s
 *            after that, gives it back (the heap is looked at once it takes
 *            memory after a look the bound refused, not only when it frees a
 *            step more than it did then)
 *   big      48 MiB of small blocks, all freed: above the 32 MiB bound,
 *            kept (the purge delay gives it back)
 *   trim     64 MiB of blocks of every small class, all freed, then
 *            malloc_trim(0) (prompt return off): every page goes back, the
 *            last of each class too, which the thread otherwise keeps as
 *            the class's page (56 classes: 1.8 MiB)
 *
 * Exit 0 pass, 1 fail. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#include "test_api_common.h" /* CHECK, finish */

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define MAX_BLOCKS (1u << 20)

static void **blocks;
static size_t *sizes;
static size_t nblocks;

static size_t committed(void) {
  allot_stats_t st;
  allot_stats_get(&st);
  return st.committed;
}

static size_t purges(void) {
  allot_stats_t st;
  allot_stats_get(&st);
  return st.os_purges;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static size_t next_size(size_t lo, size_t hi) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return lo + (size_t)(rng % (hi - lo + 1));
}

/* bytes worth of blocks, each written through: of 16..small_max bytes,
 * and with mixed, one in eight of 16..128 KiB (medium) */
static void fill_with(size_t bytes, size_t small_max, bool mixed) {
  size_t total = 0;
  while (total < bytes && nblocks < MAX_BLOCKS) {
    size_t n = mixed && nblocks % 8 == 0 ? next_size(16 * KiB, 128 * KiB)
                                         : next_size(16, small_max);
    unsigned char *p = malloc(n);
    if (!p) {
      CHECK(0, "malloc(%zu) failed", n);
      return;
    }
    memset(p, (int)(nblocks & 0xff), n);
    blocks[nblocks] = p;
    sizes[nblocks++] = n;
    total += n;
  }
}
static void fill(size_t bytes) {
  fill_with(bytes, 1024, true);
}
static void fill_small(size_t bytes, size_t max) {
  fill_with(bytes, max, false);
}

/* frees the blocks of every step-th run of 8 from the first (step 1: all),
 * checking their contents; fill's runs of 8 hold one medium block */
static void drop(size_t step) {
  for (size_t i = 0; i < nblocks; i++) {
    if (!blocks[i] || (i / 8) % step) continue;
    const unsigned char *p = blocks[i];
    CHECK(p[0] == (unsigned char)(i & 0xff) &&
              p[sizes[i] - 1] == (unsigned char)(i & 0xff),
          "block %zu overwritten", i);
    free(blocks[i]);
    blocks[i] = NULL;
  }
}

static void drop_all(void) {
  drop(1);
  nblocks = 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  blocks = mmap(NULL, MAX_BLOCKS * sizeof *blocks, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  sizes = mmap(NULL, MAX_BLOCKS * sizeof *sizes, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (blocks == MAP_FAILED || sizes == MAP_FAILED) return 1;
  free(malloc(1)); /* the heap exists: its fixed pages are in `base` */
  size_t base = committed();

  if (!strcmp(mode, "empty") || !strcmp(mode, "off")) {
    fill(8 * MiB);
    size_t full = committed();
    CHECK(full >= base + 7 * MiB, "8 MiB allocated: committed %zu KiB",
          (full - base) / KiB);
    size_t p0 = purges();
    drop_all();
    size_t after = committed();
    printf("%s: committed %zu KiB above the start with 8 MiB live, %zu after "
           "the frees; %zu purge calls\n",
           mode, (full - base) / KiB, (after - base) / KiB, purges() - p0);
    if (!strcmp(mode, "empty")) {
      CHECK(after - base <= (full - base) / 4,
            "%zu KiB of %zu still resident after the heap emptied",
            (after - base) / KiB, (full - base) / KiB);
      CHECK(allot_check() == 0, "heap inconsistent after the return");
      fill(8 * MiB); /* usable again, contents checked as they go */
      drop_all();
      CHECK(allot_check() == 0, "heap inconsistent after reuse");
    } else {
      CHECK(after >= full - 1 * MiB,
            "ALLOT_PROMPT_RETURN=0: %zu KiB given back", (full - after) / KiB);
    }
  } else if (!strcmp(mode, "held")) {
    fill(8 * MiB);
    size_t full = committed();
    drop(2);
    size_t after = committed();
    printf("held: committed %zu KiB above the start, %zu after freeing half\n",
           (full - base) / KiB, (after - base) / KiB);
    CHECK(after >= full - 1 * MiB, "a half-full heap gave %zu KiB back",
          (full - after) / KiB);
    drop_all();
  } else if (!strcmp(mode, "cycles")) {
    size_t p1 = 0, low = 0, high = 0;
    for (int round = 0; round < 30; round++) {
      fill(4 * MiB);
      drop_all();
      if (round == 0) low = committed();
      if (round == 1) p1 = purges();
      if (round == 29) high = committed();
    }
    size_t p29 = purges();
    printf("cycles: committed %zu KiB after the first round, %zu after the "
           "last; %zu purge calls in rounds 2-30\n",
           (low - base) / KiB, (high - base) / KiB, p29 - p1);
    CHECK(low < base + 1 * MiB, "first round: %zu KiB kept",
          (low - base) / KiB);
    CHECK(p29 == p1, "%zu purge calls after the first return", p29 - p1);
    CHECK(high >= base + 3 * MiB, "last round: only %zu KiB kept",
          (high - base) / KiB);
  } else if (!strcmp(mode, "again")) {
    const char *d = getenv("ALLOT_PURGE_DELAY");
    double wait_s = (d ? atof(d) : 50.0) * 20 / 1000 * 1.2;
    struct timespec ts = {(time_t)wait_s,
                          (long)((wait_s - (double)(time_t)wait_s) * 1e9)};
    size_t full[4], after[4];
    for (int round = 0; round < 4; round++) {
      if (round >= 2) nanosleep(&ts, NULL);
      fill(1536 * KiB);
      full[round] = committed() - base;
      drop_all();
      after[round] = committed() - base;
    }
    printf("again: committed above the start, full -> after the frees: %zu -> "
           "%zu KiB, right after %zu -> %zu KiB, %.0f ms later %zu -> %zu "
           "KiB, %.0f ms later %zu -> %zu KiB\n",
           full[0] / KiB, after[0] / KiB, full[1] / KiB, after[1] / KiB,
           wait_s * 1000, full[2] / KiB, after[2] / KiB, wait_s * 1000,
           full[3] / KiB, after[3] / KiB);
    CHECK(after[0] <= full[0] / 4, "first round: %zu KiB kept", after[0] / KiB);
    CHECK(after[1] + 128 * KiB >= full[1],
          "second round, at once: %zu KiB given back",
          (full[1] - after[1]) / KiB);
    CHECK(after[2] + 128 * KiB >= full[2],
          "third round, after one bound: %zu KiB given back (the bound "
          "should have doubled)",
          (full[2] - after[2]) / KiB);
    CHECK(after[3] <= full[3] / 4,
          "fourth round, after two bounds: %zu of %zu KiB kept", after[3] / KiB,
          full[3] / KiB);
    CHECK(allot_check() == 0, "heap inconsistent after the returns");
  } else if (!strcmp(mode, "big")) {
    fill_small(48 * MiB, 1024);
    size_t full = committed();
    drop_all();
    size_t after = committed();
    printf("big: committed %zu KiB above the start, %zu after the frees\n",
           (full - base) / KiB, (after - base) / KiB);
    CHECK(after >= full - 4 * MiB, "a 48 MiB heap gave %zu KiB back at once",
          (full - after) / KiB);
  } else if (!strcmp(mode, "trim")) {
    fill_small(64 * MiB, 8192);
    size_t full = committed();
    drop_all();
    size_t freed = committed();
    malloc_trim(0);
    size_t after = committed();
    printf("trim: committed %zu KiB above the start, %zu after the frees, %zu "
           "after malloc_trim(0)\n",
           (full - base) / KiB, (freed - base) / KiB, (after - base) / KiB);
    CHECK(after < base + 256 * KiB, "%zu KiB still resident after malloc_trim",
          (after - base) / KiB);
    fill(1 * MiB); /* the classes take pages again */
    drop_all();
    CHECK(allot_check() == 0, "heap inconsistent after the trim");
  } else {
    fprintf(stderr, "usage: mem_prompt empty|off|held|cycles|again|big|trim\n");
    return 2;
  }
  return finish("mem_prompt");
}
