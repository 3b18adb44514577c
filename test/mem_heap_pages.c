/* mem_heap_pages.c: how many OS pages of its heap structure a thread makes
 * resident (internal.h, heap_t's layout; docs/memory.md, "The fixed
 * footprint of a small program"). Linked with liballot.a, whose internal
 * symbols (the thread's heap, tls_heap) a static link can read.
 *
 * Threads that allocate and free a few small blocks touch only the first
 * page, whatever their classes (a new page for a class past the 16th once
 * read that class's list of free pages on the second page, which a read
 * alone makes resident: docs/memory.md, session 23); a thread that also
 * allocates a medium block, the second too (its chunk heap is set up with
 * its first medium region); none touches a third (the statistics counters
 * and realloc's hints lie there). Checked with mincore while the threads
 * wait, their heaps in use. Then the same for a small segment's header:
 * the purge pass (allot_collect) reads the descriptors of the pages it
 * purges, not those of the 60-odd pages never used, which lie on the
 * header's second and third OS pages; nor does a first-class heap's
 * destroy (nor, in checked mode, the walk and the test for blocks held
 * elsewhere that come before it: mem.heap_pages.checked). Exit 0 pass, 1
 * fail. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "allot.h"    /* allot_collect, first-class heaps */
#include "internal.h" /* heap_t, tls_heap, OS_PAGE */

#define THREADS 6

static pthread_barrier_t ready, done;
static heap_t *heaps[THREADS];
static int failures;

static void *worker(void *arg) {
  intptr_t i = (intptr_t)arg;
  /* one class, or (threads 2 and 4) small classes up to the largest */
  static const size_t sizes[] = {48, 200, 1000, 3000, 8000};
  void *p[16];
  for (int k = 0; k < 16; k++) {
    size_t n = i == 2 || i == 4 ? sizes[k % 5] : 48;
    p[k] = malloc(n);
    memset(p[k], (int)k, n);
  }
  for (int k = 0; k < 16; k++)
    free(p[k]);
  void *big = NULL;
  if (i % 2) { /* odd threads: a medium block too */
    big = malloc(20000);
    memset(big, 1, 20000);
  }
  heaps[i] = tls_heap;
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&done);
  free(big);
  return NULL;
}

/* pages [0, 3) of the heap structure: which are resident */
static unsigned resident(const heap_t *h) {
  unsigned char vec[3];
  if (mincore((void *)h, 3 * OS_PAGE, vec) != 0) return ~0u;
  return (vec[0] & 1) | (vec[1] & 1) << 1 | (vec[2] & 1) << 2;
}

int main(void) {
  pthread_t t[THREADS];
  pthread_barrier_init(&ready, NULL, THREADS + 1);
  pthread_barrier_init(&done, NULL, THREADS + 1);
  free(malloc(1)); /* the main thread's heap first: not one of these */
  for (intptr_t i = 0; i < THREADS; i++)
    pthread_create(&t[i], NULL, worker, (void *)i);
  pthread_barrier_wait(&ready);
  for (int i = 0; i < THREADS; i++) {
    unsigned r = resident(heaps[i]), want = i % 2 ? 3u : 1u;
    printf("thread %d (%s): heap pages resident %s%s%s\n", i,
           i % 2              ? "small and medium blocks"
           : i == 2 || i == 4 ? "small blocks of five classes"
                              : "small blocks",
           r & 1 ? "1 " : "", r & 2 ? "2 " : "", r & 4 ? "3" : "");
    if (r != want) {
      fprintf(stderr,
              "FAILED: thread %d's heap has pages 0x%x resident, want 0x%x\n",
              i, r, want);
      failures++;
    }
  }
  pthread_barrier_wait(&done);
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);

  /* 20 blocks of 8000 bytes take three pages; freed, two of them retire as
   * free pages not yet purged, which allot_collect purges */
  void *b[20];
  for (int k = 0; k < 20; k++) {
    b[k] = malloc(8000);
    memset(b[k], 1, 8000);
  }
  segment_t *seg = segment_of(b[0]);
  for (int k = 0; k < 20; k++)
    free(b[k]);
  allot_collect();
  unsigned char vec[3];
  if (mincore((void *)seg, 3 * OS_PAGE, vec) != 0) vec[0] = vec[1] = vec[2] = 1;
  printf("main thread's segment: header pages resident %s%s%s\n",
         vec[0] & 1 ? "1 " : "", vec[1] & 1 ? "2 " : "", vec[2] & 1 ? "3" : "");
  if ((vec[1] | vec[2]) & 1) {
    fprintf(stderr, "FAILED: the purge pass read the descriptors of pages "
                    "never used\n");
    failures++;
  }

  /* A first-class heap's destroy, and checked mode's test before it of
   * whether the heap still holds a block, visit the descriptors of its
   * pages in use only: its segment, cached afterwards, keeps one header page
   * resident (it read all 63 before). */
  allot_heap_t *fh = allot_heap_new();
  void *fb[8];
  for (int k = 0; k < 8; k++) {
    fb[k] = allot_heap_malloc(fh, 48);
    memset(fb[k], 1, 48);
  }
  segment_t *fseg = segment_of(fb[0]);
  if (mincore((void *)fseg, 3 * OS_PAGE, vec) != 0)
    vec[0] = vec[1] = vec[2] = 1;
  int before = (vec[1] | vec[2]) & 1;
  allot_heap_destroy(fh);
  if (mincore((void *)fseg, 3 * OS_PAGE, vec) != 0)
    vec[0] = vec[1] = vec[2] = 1;
  printf("first-class heap's segment after its destroy: header pages "
         "resident %s%s%s\n",
         vec[0] & 1 ? "1 " : "", vec[1] & 1 ? "2 " : "", vec[2] & 1 ? "3" : "");
  if (before || ((vec[1] | vec[2]) & 1)) {
    fprintf(stderr, "FAILED: %s read the descriptors of pages never used\n",
            before ? "the heap's allocations" : "allot_heap_destroy");
    failures++;
  }
  puts(failures ? "mem_heap_pages: FAILED" : "mem_heap_pages: ok");
  return failures ? 1 : 0;
}
