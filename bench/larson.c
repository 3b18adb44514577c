/* larson.c: a server simulation after Larson and Krishnan: threads free
 * what other threads allocated.
 *
 * T chains of threads (BENCH_THREADS, default 4) each own an array of 1000
 * live blocks of 16..1000 bytes. A thread replaces random blocks (free the
 * old one, allocate a new one) for one round, then trades its array with
 * whatever array another chain last left in a shared exchange slot, starts
 * its successor thread on it and exits. So blocks are freed by threads
 * other than their allocator, both live ones and ones that have exited,
 * as in a server whose worker threads come and go.
 *
 * Every block carries a pattern checked before it is freed.
 *
 *   larson N [OPS]   N rounds per chain, OPS replacements per round
 *                    (default 20000) */
#include "bench.h"

#include <pthread.h>

#define USAGE "ROUNDS [OPS_PER_ROUND]"
#define SLOTS 1000

typedef struct {
  void *p;
  uint32_t size;
  uint64_t tag;
} slot;

typedef struct chain {
  int id, round;
  slot *slots;
  uint64_t seed;
  uint64_t sum; /* summed over the chain's allocations */
} chain;

static long rounds, ops;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int chains_done;
static slot *exchange; /* an array left by the last chain to pass by */

static void *worker(void *arg);

static void block_new(chain *c, slot *s) {
  s->size = (uint32_t)rng_range(&c->seed, 16, 1000);
  s->tag = rng_next(&c->seed);
  s->p = bench_nonnull(malloc(s->size), s->size);
  pattern_fill(s->p, s->size, s->tag);
  c->sum += s->size + (s->tag >> 8);
}

static void block_free(slot *s) {
  if (!pattern_check(s->p, s->size, s->tag))
    bench_fail("block of %u bytes at %p was overwritten", s->size, s->p);
  free(s->p);
}

static void *worker(void *arg) {
  chain *c = arg;
  for (long k = 0; k < ops; k++) {
    slot *s = &c->slots[rng_next(&c->seed) % SLOTS];
    block_free(s);
    block_new(c, s);
  }
  pthread_mutex_lock(&lock);
  if (exchange) {
    slot *t = exchange;
    exchange = c->slots;
    c->slots = t;
  }
  pthread_mutex_unlock(&lock);

  if (++c->round < rounds) {
    pthread_t next;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&next, &attr, worker, c))
      bench_fail("pthread_create failed");
    pthread_attr_destroy(&attr);
  } else {
    pthread_mutex_lock(&lock);
    chains_done++;
    pthread_cond_signal(&done_cv);
    pthread_mutex_unlock(&lock);
  }
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "larson";
  rounds = bench_arg(argc, argv, 1, 20, USAGE);
  ops = bench_arg(argc, argv, 2, 20000, USAGE);
  int nthreads = bench_threads(4);
  chain *chains = bench_nonnull(calloc(nthreads, sizeof *chains), 1);

  /* The exchange starts with one extra array so every trade is a swap. */
  chain seedchain = {.seed = 1};
  exchange = bench_nonnull(malloc(SLOTS * sizeof(slot)), 1);
  for (int i = 0; i < SLOTS; i++)
    block_new(&seedchain, &exchange[i]);
  uint64_t checksum = seedchain.sum;

  for (int t = 0; t < nthreads; t++) {
    chain *c = &chains[t];
    c->id = t;
    c->seed = 1000 + (uint64_t)t;
    c->slots = bench_nonnull(malloc(SLOTS * sizeof(slot)), 1);
    for (int i = 0; i < SLOTS; i++)
      block_new(c, &c->slots[i]);
  }
  for (int t = 0; t < nthreads; t++) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, worker, &chains[t]))
      bench_fail("pthread_create failed");
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_lock(&lock);
  while (chains_done < nthreads)
    pthread_cond_wait(&done_cv, &lock);
  pthread_mutex_unlock(&lock);

  for (int t = 0; t < nthreads; t++) {
    for (int i = 0; i < SLOTS; i++)
      block_free(&chains[t].slots[i]);
    free(chains[t].slots);
    checksum += chains[t].sum;
  }
  for (int i = 0; i < SLOTS; i++)
    block_free(&exchange[i]);
  free(exchange);
  free(chains);
  bench_ok(checksum);
  return 0;
}
