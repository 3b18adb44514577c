/* prodcons.c: producer/consumer: memory allocated on one thread and freed
 * on another.
 *
 * Two producer threads build requests (a header, a payload of 32..4096
 * bytes and a linked list of 1..8 small fields) and push them in batches of
 * 32 through a bounded mutex/condvar queue; two consumer threads check and
 * free everything. Every free of a request block is a cross-thread free.
 * (BENCH_THREADS sets the number of producers and of consumers, default 2.)
 *
 *   prodcons N     N requests per producer */
#include "bench.h"

#include <pthread.h>

#define USAGE "REQUESTS"
#define BATCH 32
#define QCAP 64

typedef struct field {
  struct field *next;
  uint32_t len;
  char text[];
} field;

typedef struct {
  uint64_t id;
  uint32_t payload_len;
  unsigned char *payload;
  field *fields;
  uint32_t nfields;
} request;

typedef struct {
  request *r[BATCH];
  int n;
} batch;

static struct {
  pthread_mutex_t lock;
  pthread_cond_t not_empty, not_full;
  batch *q[QCAP];
  int head, count, producers_left;
} queue = {.lock = PTHREAD_MUTEX_INITIALIZER,
           .not_empty = PTHREAD_COND_INITIALIZER,
           .not_full = PTHREAD_COND_INITIALIZER};

static long per_producer;

static uint64_t request_value(uint64_t id) {
  return mix64(id) & 0xffffffff;
}

static void push(batch *b) {
  pthread_mutex_lock(&queue.lock);
  while (queue.count == QCAP)
    pthread_cond_wait(&queue.not_full, &queue.lock);
  queue.q[(queue.head + queue.count++) % QCAP] = b;
  pthread_cond_signal(&queue.not_empty);
  pthread_mutex_unlock(&queue.lock);
}

/* NULL once every producer is done and the queue is empty. */
static batch *pop(void) {
  batch *b = NULL;
  pthread_mutex_lock(&queue.lock);
  while (queue.count == 0 && queue.producers_left > 0)
    pthread_cond_wait(&queue.not_empty, &queue.lock);
  if (queue.count) {
    b = queue.q[queue.head];
    queue.head = (queue.head + 1) % QCAP;
    queue.count--;
    pthread_cond_signal(&queue.not_full);
  }
  pthread_mutex_unlock(&queue.lock);
  return b;
}

static request *make_request(uint64_t id) {
  uint64_t seed = id;
  request *r = bench_nonnull(malloc(sizeof *r), sizeof *r);
  r->id = id;
  r->payload_len = (uint32_t)rng_range(&seed, 32, 4096);
  r->payload = bench_nonnull(malloc(r->payload_len), r->payload_len);
  memset(r->payload, (int)(id & 0xff), r->payload_len);
  memcpy(r->payload, &id, sizeof id);
  r->nfields = (uint32_t)rng_range(&seed, 1, 8);
  r->fields = NULL;
  for (uint32_t i = 0; i < r->nfields; i++) {
    uint32_t len = (uint32_t)rng_range(&seed, 8, 120);
    field *f = bench_nonnull(malloc(sizeof *f + len), sizeof *f + len);
    f->len = len;
    memset(f->text, 'a' + (int)(i % 26), len);
    f->next = r->fields;
    r->fields = f;
  }
  return r;
}

/* Checks and frees a request; returns its contribution to the checksum. */
static uint64_t consume(request *r) {
  uint64_t seed = r->id, sum = 0, id;
  if (r->payload_len != rng_range(&seed, 32, 4096))
    bench_fail("request %llu: payload length corrupted",
               (unsigned long long)r->id);
  memcpy(&id, r->payload, sizeof id);
  if (id != r->id || r->payload[r->payload_len - 1] != (r->id & 0xff))
    bench_fail("request %llu: payload corrupted", (unsigned long long)r->id);
  uint32_t n = 0;
  for (field *f = r->fields, *next; f; f = next, n++) {
    next = f->next;
    if (f->text[0] != f->text[f->len - 1])
      bench_fail("request %llu: field corrupted", (unsigned long long)r->id);
    sum += f->len;
    free(f);
  }
  if (n != r->nfields)
    bench_fail("request %llu: field list corrupted", (unsigned long long)r->id);
  sum += request_value(r->id) + r->payload_len;
  free(r->payload);
  free(r);
  return sum;
}

static void *producer(void *arg) {
  uint64_t base = (uint64_t)(uintptr_t)arg * 1000000007ull;
  batch *b = NULL;
  for (long i = 0; i < per_producer; i++) {
    if (!b) {
      b = bench_nonnull(malloc(sizeof *b), sizeof *b);
      b->n = 0;
    }
    b->r[b->n++] = make_request(base + (uint64_t)i);
    if (b->n == BATCH) {
      push(b);
      b = NULL;
    }
  }
  if (b) push(b);
  pthread_mutex_lock(&queue.lock);
  queue.producers_left--;
  pthread_cond_broadcast(&queue.not_empty);
  pthread_mutex_unlock(&queue.lock);
  return NULL;
}

static void *consumer(void *arg) {
  uint64_t *sum = arg;
  batch *b;
  while ((b = pop()) != NULL) {
    for (int i = 0; i < b->n; i++)
      *sum += consume(b->r[i]);
    free(b);
  }
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "prodcons";
  per_producer = bench_arg(argc, argv, 1, 200000, USAGE);
  int n = bench_threads(2);
  pthread_t *th = bench_nonnull(malloc(2 * n * sizeof *th), 1);
  uint64_t *sums = bench_nonnull(calloc(n, sizeof *sums), 1);
  queue.producers_left = n;
  for (int i = 0; i < n; i++)
    if (pthread_create(&th[i], NULL, consumer, &sums[i]) ||
        pthread_create(&th[n + i], NULL, producer, (void *)(uintptr_t)i))
      bench_fail("pthread_create failed");
  for (int i = 0; i < 2 * n; i++)
    pthread_join(th[i], NULL);

  uint64_t checksum = 0, expect = 0;
  for (int i = 0; i < n; i++)
    checksum += sums[i];
  /* Recompute what the consumers should have seen, without allocating. */
  for (int p = 0; p < n; p++)
    for (long i = 0; i < per_producer; i++) {
      uint64_t id = (uint64_t)p * 1000000007ull + (uint64_t)i, seed = id;
      uint64_t len = rng_range(&seed, 32, 4096);
      uint64_t nf = rng_range(&seed, 1, 8);
      expect += request_value(id) + len;
      for (uint64_t f = 0; f < nf; f++)
        expect += rng_range(&seed, 8, 120);
    }
  if (checksum != expect)
    bench_fail("consumers saw checksum %llx, expected %llx",
               (unsigned long long)checksum, (unsigned long long)expect);
  free(sums);
  free(th);
  bench_ok(checksum);
  return 0;
}
