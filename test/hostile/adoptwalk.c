/* adoptwalk.c: the heap check of a checked mode (ALLOT_DEBUG=1,
 * ALLOT_SECURE=1: the ctest definition sets one) while threads come and go,
 * each new one taking over the heap the last one left (allot-testhooks).
 *
 * The check walks the caller's heap and the heaps no thread owns (abandoned
 * by exited threads, or pooled); a thread that starts meanwhile takes such
 * a heap over and allocates from its pages. A check that chose the heap and
 * then walked it without keeping new threads out read the pages' free
 * lists while the new owner took blocks from them, and reported damage that
 * was not there ("corrupted free list"). The test hook stops the check for
 * 5 ms at the first free list it reads in such a heap, between the list's
 * head and the rest, as a checker descheduled there on a loaded machine:
 * without the fix (heap.c, heap_hold_unowned) every run failed within two
 * lives; with it the new thread waits for the walk.
 *
 * Lives: one thread after another allocates and frees small and medium
 * blocks for 10 ms, checking their patterns, keeps one in 8 of its last
 * round and exits, leaving its heap (and those blocks) to the next, which
 * starts 2 ms later. The checker runs allot_check without pause. Fails
 * (exit 1) on any check report or pattern mismatch.
 *
 *   hostile_adoptwalk [seconds] */
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
#define CHECKER_NAME "adoptwalk"
#include "checker.h"

/* allot-testhooks (checked.c): the check sleeps usec microseconds after
 * choosing a heap no thread owns, before walking it */
void allot_test_pause_walk(long usec);

#define BLOCKS 3000

static atomic_long lives;

/* Each life frees the blocks the last one kept, allocates and frees in
 * rounds for 10 ms, and keeps one block in 8 of its last round. */
static unsigned char *kept[BLOCKS];
static size_t kept_n[BLOCKS];

static void *life(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
  static _Thread_local unsigned char *p[BLOCKS];
  static _Thread_local size_t n[BLOCKS];
  for (int i = 0; i < BLOCKS; i++) {
    if (kept[i] && (kept[i][0] != (unsigned char)i ||
                    kept[i][kept_n[i] - 1] != (unsigned char)i))
      fail("kept block pattern changed");
    allot_free(kept[i]);
    kept[i] = NULL;
  }
  double end = now_s() + 0.01;
  do {
    for (int i = 0; i < BLOCKS; i++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      n[i] = i % 50 == 0 ? 9000 + s % 20000 : 16 + s % 500;
      p[i] = allot_malloc(n[i]);
      if (!p[i]) {
        fail("malloc returned NULL");
        return NULL;
      }
      memset(p[i], (unsigned char)i, n[i]);
    }
    for (int i = 0; i < BLOCKS; i++) {
      if (p[i][0] != (unsigned char)i || p[i][n[i] - 1] != (unsigned char)i)
        fail("block pattern changed");
      allot_free(p[i]);
    }
  } while (now_s() < end);
  /* the last round's blocks, one in 8 kept past the thread's exit: its
   * heap has live blocks when the next thread takes it over */
  for (int i = 0; i < BLOCKS; i += 8) {
    kept_n[i] = n[i];
    kept[i] = allot_malloc(n[i]);
    if (kept[i]) memset(kept[i], (unsigned char)i, n[i]);
  }
  return NULL;
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 2;
  allot_free(allot_malloc(1)); /* start-up done before the threads race */
  allot_test_pause_walk(5 * 1000);
  pthread_t c;
  pthread_create(&c, NULL, checker, NULL);
  double end = now_s() + seconds;
  for (long k = 0; now_s() < end && !atomic_load(&failures); k++) {
    pthread_t t;
    pthread_create(&t, NULL, life, (void *)(uintptr_t)k);
    pthread_join(t, NULL);
    atomic_fetch_add(&lives, 1);
    /* the heap lies abandoned for 2 ms: checks choose it */
    struct timespec gap = {0, 2 * 1000 * 1000};
    nanosleep(&gap, NULL);
  }
  for (int i = 0; i < BLOCKS; i++)
    allot_free(kept[i]);
  atomic_store(&stop, 1);
  pthread_join(c, NULL);
  allot_test_pause_walk(0);
  check_at_end();
  printf("adoptwalk: %ld lives, %ld checks, %ld failures\n",
         atomic_load(&lives), atomic_load(&checks), atomic_load(&failures));
  if (!atomic_load(&checks)) fail("no check ran");
  return atomic_load(&failures) ? 1 : 0;
}
