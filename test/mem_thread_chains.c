/* mem_thread_chains.c: threads that come and go do not each build a heap.
 *
 * CHAINS chains of threads, as in a server whose workers are replaced (the
 * bench's larson): each thread replaces random blocks of the array it was
 * given, then starts its successor on the array and exits. The scheduler
 * often runs the new thread first, while its creator still holds its heap;
 * finding no heap to adopt, the new thread used to build one of its own,
 * each with the memory of a thread's blocks. allot now has it yield to the
 * exiting threads first when more threads hold heaps than the process has
 * CPUs (src/heap.c, heap_wait_exiting). The process runs on one CPU, where
 * that condition does not depend on the machine: before, 14-24 heaps at the
 * end; now 2 (the main thread's and the one the chains pass on).
 *
 *   mem_thread_chains       at most CHAINS + 4 heaps at the end
 *
 * Prints the number of heaps and the wall time; exit 0 on success, 1 on
 * failure, 77 (skipped) when the process cannot be put on one CPU. */
#define _GNU_SOURCE
#include <allot.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAINS 4
#define ROUNDS 60
#define SLOTS 1000
#define OPS 20000

typedef struct chain {
  void **slots;
  uint64_t seed;
  int round;
} chain_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int chains_done;

static uint64_t next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void *block(uint64_t *seed) {
  size_t n = 16 + next(seed) % 985;
  unsigned char *p = malloc(n);
  if (!p) {
    fprintf(stderr, "mem_thread_chains: malloc(%zu) failed\n", n);
    exit(1);
  }
  p[0] = p[n - 1] = (unsigned char)n;
  return p;
}

static void *worker(void *arg) {
  chain_t *c = arg;
  for (int k = 0; k < OPS; k++) {
    size_t i = next(&c->seed) % SLOTS;
    free(c->slots[i]);
    c->slots[i] = block(&c->seed);
  }
  if (++c->round < ROUNDS) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, worker, c)) {
      fprintf(stderr, "mem_thread_chains: pthread_create failed\n");
      exit(1);
    }
    pthread_attr_destroy(&attr);
  } else {
    pthread_mutex_lock(&lock);
    chains_done++;
    pthread_cond_signal(&done_cv);
    pthread_mutex_unlock(&lock);
  }
  return NULL;
}

int main(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set)) return 77;
  int cpu = 0;
  while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &set))
    cpu++;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set)) return 77;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  static chain_t chains[CHAINS];
  for (int c = 0; c < CHAINS; c++) {
    chains[c].seed = 0x9E3779B97F4A7C15ull * (uint64_t)(c + 1);
    chains[c].slots = calloc(SLOTS, sizeof(void *));
    if (!chains[c].slots) return 1;
    for (int i = 0; i < SLOTS; i++)
      chains[c].slots[i] = block(&chains[c].seed);
  }
  for (int c = 0; c < CHAINS; c++) {
    pthread_t t;
    if (pthread_create(&t, NULL, worker, &chains[c])) return 1;
    pthread_detach(t);
  }
  pthread_mutex_lock(&lock);
  while (chains_done < CHAINS)
    pthread_cond_wait(&done_cv, &lock);
  pthread_mutex_unlock(&lock);
  clock_gettime(CLOCK_MONOTONIC, &t1);

  allot_stats_t st;
  if (allot_stats_get(&st)) return 1;
  for (int c = 0; c < CHAINS; c++) {
    for (int i = 0; i < SLOTS; i++)
      free(chains[c].slots[i]);
    free(chains[c].slots);
  }
  size_t bound = CHAINS + 4;
  printf("one CPU: %d chains of %d threads: %zu heaps (at most %zu), %.0f ms\n",
         CHAINS, ROUNDS, st.heaps, bound,
         (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
             (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
  if (st.heaps > bound) {
    printf("FAILED: a heap for each thread that started while others were "
           "exiting\n");
    return 1;
  }
  return 0;
}
