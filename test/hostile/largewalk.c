/* largewalk.c: the heap check of a checked mode (ALLOT_DEBUG=1,
 * ALLOT_SECURE=1: the ctest definition sets one) while other threads make,
 * resize and free large blocks. The check reads each live large block's
 * trailer and canary; a block freed meanwhile is made inaccessible (the
 * quarantine) or its mapping is cached and split, so a check that read
 * past its look at the block's state crashed (SIGSEGV), or, reading at a
 * size the block no longer had, reported damage that was not there.
 *
 * Workers keep a few large blocks each and, at random, make one (malloc or
 * calloc), resize one in place (a little smaller or larger: its trailer
 * moves while the checker may be looking) or so that it moves, or free one;
 * the checker runs allot_check without pause. Every block carries a pattern
 * checked before it is freed. Fails (exit 1) on any check report or pattern
 * mismatch; a crash fails it too.
 *
 * hostile_largewalk_pause (largewalk_pause.c: this file with allot's test
 * hooks) stops the maker of every other large block for 10 ms between the
 * layers handing it the block and its saying so (checked.c, in_flight), as a
 * thread descheduled there on a loaded machine: the block is live and not
 * made yet, and only "a thread is making a block not known yet" tells the
 * check to wait. A check that gave up after a number of looks (1000, 0.3
 * to 3 ms) reported it overwritten ("block trailer overwritten") within
 * the first second here.
 *
 *   hostile_largewalk[_pause] [seconds] [workers] */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allot.h"
#define CHECKER_NAME "largewalk"
#include "checker.h"

#ifdef LARGEWALK_PAUSE
/* allot-testhooks (checked.c): every n-th large block made, its thread
 * sleeps usec microseconds before it says it has the block in hand */
void allot_test_pause_made(long every, long usec);
#endif

#define MIB ((size_t)1 << 20)
#define SLOTS 6
#define MAXW 8

static atomic_long ops;

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

typedef struct {
  unsigned char *p;
  size_t size;
  unsigned char tag;
} blk_t;

static void stamp(blk_t *b) {
  b->p[0] = b->tag;
  b->p[b->size / 2] = (unsigned char)(b->tag + 1);
  b->p[b->size - 1] = (unsigned char)(b->tag + 2);
}

static int intact(const blk_t *b, size_t n) {
  if (n > b->size) n = b->size;
  int ok = b->p[0] == b->tag;
  if (n == b->size)
    ok &= b->p[n / 2] == (unsigned char)(b->tag + 1) &&
          b->p[n - 1] == (unsigned char)(b->tag + 2);
  return ok;
}

/* 1 MiB + a little to 3 MiB: large blocks of one or two grains */
static size_t large_size(uint64_t *s) {
  return MIB + 4096 + (size_t)(rnd(s) % (2 * MIB));
}

static void *worker(void *arg) {
  uint64_t s = 0x9E3779B97F4A7C15ull * ((uint64_t)(uintptr_t)arg + 1) |
               (uint64_t)time(NULL);
  blk_t slot[SLOTS];
  memset(slot, 0, sizeof slot);
  unsigned char tag = (unsigned char)((uintptr_t)arg * 40);
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    blk_t *b = &slot[rnd(&s) % SLOTS];
    unsigned r = (unsigned)(rnd(&s) % 8);
    if (!b->p) {
      b->size = large_size(&s);
      b->p = r < 6 ? allot_malloc(b->size) : allot_calloc(1, b->size);
      if (!b->p) {
        fail("malloc returned NULL");
        continue;
      }
      b->tag = tag++;
      stamp(b);
    } else if (r < 3) {
      if (!intact(b, b->size)) fail("block pattern changed");
      allot_free(b->p);
      b->p = NULL;
    } else {
      /* r 3..5: in place (within the room the block has), 6..7: moves */
      size_t size = r < 6 ? b->size - b->size / 8 + (size_t)(rnd(&s) % 4096)
                          : large_size(&s) + b->size / 2;
      unsigned char *q = allot_realloc(b->p, size);
      if (!q) {
        fail("realloc returned NULL");
        continue;
      }
      b->p = q;
      if (!intact(b, size)) fail("realloc lost the block's bytes");
      b->size = size;
      stamp(b);
    }
    atomic_fetch_add_explicit(&ops, 1, memory_order_relaxed);
  }
  for (int i = 0; i < SLOTS; i++)
    allot_free(slot[i].p);
  return NULL;
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 2;
  int nw = argc > 2 ? atoi(argv[2]) : 3;
  if (nw < 1 || nw > MAXW) nw = 3;
  pthread_t w[MAXW], c;
  allot_free(allot_malloc(1)); /* start-up done before the threads race */
#ifdef LARGEWALK_PAUSE
  allot_test_pause_made(2, 10 * 1000);
#endif
  for (int i = 0; i < nw; i++)
    pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)i);
  pthread_create(&c, NULL, checker, NULL);
  double end = now_s() + seconds;
  struct timespec tick = {0, 20 * 1000 * 1000};
  while (now_s() < end && !atomic_load(&failures))
    nanosleep(&tick, NULL);
  atomic_store(&stop, 1);
  for (int i = 0; i < nw; i++)
    pthread_join(w[i], NULL);
  pthread_join(c, NULL);
  check_at_end();
  printf("largewalk: %ld operations, %ld checks, %ld failures\n",
         atomic_load(&ops), atomic_load(&checks), atomic_load(&failures));
  if (!atomic_load(&checks)) fail("no check ran");
  return atomic_load(&failures) ? 1 : 0;
}
