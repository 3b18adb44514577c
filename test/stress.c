/* stress.c: multi-threaded stress of the allocator, two modes:
 *
 *   stress rings [threads] [ops]   threads hand blocks to each other through
 *       single-producer rings (one per ordered pair), so most frees are
 *       cross-thread; sizes mostly small, some medium, a few large; local
 *       realloc/calloc/aligned work mixed in.
 *   stress churn [threads]         at least that many short-lived threads in
 *       batches; each allocates, frees some, frees blocks left by threads
 *       that already exited, and leaves blocks for the main thread and later
 *       threads to free after it exits (abandoned-page reclamation).
 *
 * Every block carries a pattern derived from its address, size and a unique
 * id, checked before it is freed: a block handed out twice, an overlap or a
 * stray write shows up as a mismatch.
 *
 * Built with -DUSE_PREFIX it calls the allot_* names (allot-prefixed), so it
 * also runs in sanitizer builds, where the sanitizer owns malloc. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(USE_PREFIX) && !defined(TEST_ALLOT)
#define TEST_ALLOT 1
#endif
#ifdef TEST_ALLOT
#include "allot.h"
#endif

/* The prefixed build (allot-prefixed, no malloc replacement) is the one a
 * sanitizer build can run: the sanitizer keeps malloc, allot gets checked. */
#ifdef USE_PREFIX
#define malloc allot_malloc
#define calloc allot_calloc
#define realloc allot_realloc
#define free allot_free
#define posix_memalign allot_posix_memalign
#define malloc_trim(pad) allot_collect()
#endif

static atomic_int failures;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  flockfile(stderr);
  fputs("stress: FAILED: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  funlockfile(stderr);
  va_end(ap);
  if (atomic_fetch_add(&failures, 1) > 20) {
    fprintf(stderr, "stress: too many failures, aborting\n");
    abort();
  }
}

/* ---- blocks with patterns ----------------------------------------------*/

typedef struct {
  uint8_t *p;
  size_t size;
  uint64_t id;
} block_t;

static uint64_t seed_of(const block_t *b) {
  return (b->id * 0x9E3779B97F4A7C15ull) ^ (uintptr_t)b->p ^
         (b->size * 0xC2B2AE3D27D4EB4Full);
}

static uint64_t pattern_word(uint64_t seed, size_t k) {
  return seed ^ (k * 0xD6E8FEB86659FD93ull);
}

static void fill_range(uint8_t *p, size_t from, size_t to, uint64_t seed) {
  size_t i = from;
  for (; i < to && (i & 7); i++)
    p[i] = (uint8_t)(pattern_word(seed, i >> 3) >> ((i & 7) * 8));
  for (; i + 8 <= to; i += 8) {
    uint64_t w = pattern_word(seed, i >> 3);
    memcpy(p + i, &w, 8);
  }
  for (; i < to; i++)
    p[i] = (uint8_t)(pattern_word(seed, i >> 3) >> ((i & 7) * 8));
}

static size_t check_range(const uint8_t *p, size_t n, uint64_t seed) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w != pattern_word(seed, i >> 3)) break;
  }
  for (; i < n; i++)
    if (p[i] != (uint8_t)(pattern_word(seed, i >> 3) >> ((i & 7) * 8)))
      return i;
  return SIZE_MAX;
}

static void fill_block(block_t *b) {
  fill_range(b->p, 0, b->size, seed_of(b));
}

static void check_block(const block_t *b, const char *where) {
  if (((uintptr_t)b->p & 15) != 0)
    fail("%s: block %p (size %zu) not 16-byte aligned", where, (void *)b->p,
         b->size);
  size_t bad = check_range(b->p, b->size, seed_of(b));
  if (bad != SIZE_MAX)
    fail("%s: block %p (size %zu, id %#llx) corrupted at byte %zu", where,
         (void *)b->p, b->size, (unsigned long long)b->id, bad);
#ifdef TEST_ALLOT
  if (!allot_owns(b->p))
    fail("%s: block %p (size %zu) not a live allot block", where, (void *)b->p,
         b->size);
#endif
}

static void free_block(block_t *b, const char *where) {
  check_block(b, where);
  free(b->p);
  b->p = NULL;
}

/* xorshift64*, one state per thread */
static uint64_t rnd(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1Dull;
}

/* Mostly small, some medium, a few large. */
static size_t random_size(uint64_t *s) {
  uint64_t r = rnd(s) % 10000;
  if (r < 7000) return 1 + rnd(s) % 256;
  if (r < 9700) return 257 + rnd(s) % (8192 - 256);
  if (r < 9995) return 8193 + rnd(s) % (56 << 10);
  return (1 << 20) + rnd(s) % (1 << 20);
}

static int new_block(block_t *b, size_t size, uint64_t id, const char *where) {
  b->p = malloc(size);
  b->size = size;
  b->id = id;
  if (!b->p) {
    fail("%s: malloc(%zu) returned NULL", where, size);
    return 0;
  }
  fill_block(b);
  return 1;
}

/* ---- rings mode ----------------------------------------------------------*/

enum { RING = 256, LOCAL = 64, MAXT = 64 };

typedef struct {
  _Alignas(64) atomic_size_t head; /* consumer */
  _Alignas(64) atomic_size_t tail; /* producer */
  block_t slot[RING];
} ring_t;

static int nthreads;
static long ops_per_thread;
static ring_t *rings; /* rings[from * nthreads + to] */
static atomic_int producers_done;
static atomic_long cross_frees, local_frees;

static ring_t *ring_at(int from, int to) {
  return &rings[(size_t)from * nthreads + to];
}

static int ring_push(ring_t *r, const block_t *b) {
  size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  size_t h = atomic_load_explicit(&r->head, memory_order_acquire);
  if (t - h == RING) return 0;
  r->slot[t % RING] = *b;
  atomic_store_explicit(&r->tail, t + 1, memory_order_release);
  return 1;
}

static int ring_pop(ring_t *r, block_t *out) {
  size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  size_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
  if (h == t) return 0;
  *out = r->slot[h % RING];
  atomic_store_explicit(&r->head, h + 1, memory_order_release);
  return 1;
}

/* Free up to max blocks sent to thread `me`; returns how many. */
static int drain(int me, int max) {
  int n = 0;
  block_t b;
  for (int from = 0; from < nthreads && n < max; from++)
    while (n < max && ring_pop(ring_at(from, me), &b)) {
      free_block(&b, "cross-thread free");
      n++;
    }
  atomic_fetch_add_explicit(&cross_frees, n, memory_order_relaxed);
  return n;
}

static void local_replace(block_t *slot, block_t *nb) {
  if (slot->p) {
    free_block(slot, "local free");
    atomic_fetch_add_explicit(&local_frees, 1, memory_order_relaxed);
  }
  *slot = *nb;
}

/* With more threads than cores a receiver may sleep while its ring fills:
 * do our own receiving and let it run before giving up and keeping the
 * block, so that most frees stay cross-thread. */
static void send(int me, int to, block_t *b, block_t *fallback) {
  for (int tries = 0; tries < 4; tries++) {
    if (ring_push(ring_at(me, to), b)) return;
    drain(me, 64);
    sched_yield();
  }
  local_replace(fallback, b);
}

static void *ring_worker(void *arg) {
  int me = (int)(intptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(me + 1);
  uint64_t next_id = (uint64_t)me << 48;
  block_t local[LOCAL];
  memset(local, 0, sizeof local);

  for (long op = 0; op < ops_per_thread; op++) {
    unsigned r = (unsigned)(rnd(&s) % 100);
    block_t b;
    if (r < 60) { /* to another thread */
      if (!new_block(&b, random_size(&s), next_id++, "ring malloc")) continue;
      int to = (int)(rnd(&s) % (uint64_t)(nthreads - 1));
      if (to >= me) to++;
      send(me, to, &b, &local[rnd(&s) % LOCAL]);
    } else if (r < 75) { /* keep it here */
      if (new_block(&b, random_size(&s), next_id++, "local malloc"))
        local_replace(&local[rnd(&s) % LOCAL], &b);
    } else if (r < 80) { /* realloc a local block */
      block_t *l = &local[rnd(&s) % LOCAL];
      if (!l->p) continue;
      check_block(l, "before realloc");
      size_t to = random_size(&s);
      uint8_t *q = realloc(l->p, to);
      if (!q) {
        fail("realloc(%zu -> %zu) returned NULL", l->size, to);
        continue;
      }
      size_t keep = l->size < to ? l->size : to;
      size_t bad = check_range(q, keep, seed_of(l));
      if (bad != SIZE_MAX)
        fail("realloc %zu -> %zu lost byte %zu", l->size, to, bad);
      l->p = q;
      l->size = to;
      l->id = next_id++;
      fill_block(l);
    } else if (r < 82) { /* calloc */
      size_t n = random_size(&s);
      b.p = calloc(1, n);
      b.size = n;
      b.id = next_id++;
      if (!b.p) {
        fail("calloc(1, %zu) returned NULL", n);
        continue;
      }
      for (size_t i = 0; i < n; i++)
        if (b.p[i]) {
          fail("calloc(1, %zu): byte %zu is %#x", n, i, b.p[i]);
          break;
        }
      fill_block(&b);
      local_replace(&local[rnd(&s) % LOCAL], &b);
    } else if (r < 84) { /* aligned, sent away */
      size_t align = (size_t)16 << (rnd(&s) % 9);
      size_t n = random_size(&s);
      void *p = NULL;
      if (posix_memalign(&p, align, n) != 0 || ((uintptr_t)p & (align - 1))) {
        fail("posix_memalign(%zu, %zu) = %p", align, n, p);
        continue;
      }
      b.p = p;
      b.size = n;
      b.id = next_id++;
      fill_block(&b);
      int to = (int)(rnd(&s) % (uint64_t)nthreads);
      if (to == me)
        local_replace(&local[rnd(&s) % LOCAL], &b);
      else
        send(me, to, &b, &local[rnd(&s) % LOCAL]);
    } else {
      drain(me, 16);
    }
  }

  atomic_fetch_add(&producers_done, 1);
  /* Keep freeing what others send until every producer has finished and
   * nothing is left in flight. */
  for (;;) {
    int all_done = atomic_load(&producers_done) == nthreads;
    if (drain(me, 1 << 30) == 0) {
      if (all_done) break;
      sched_yield();
    }
  }
  for (int i = 0; i < LOCAL; i++)
    if (local[i].p) free_block(&local[i], "final local free");
  return NULL;
}

static int run_rings(int threads, long ops) {
  nthreads = threads;
  ops_per_thread = ops;
  size_t bytes = (size_t)threads * threads * sizeof *rings;
  void *mem = NULL;
  if (posix_memalign(&mem, _Alignof(ring_t), bytes) != 0) {
    fail("allocating the rings failed");
    return 1;
  }
  rings = memset(mem, 0, bytes);
  pthread_t tid[MAXT];
  for (int i = 0; i < threads; i++)
    if (pthread_create(&tid[i], NULL, ring_worker, (void *)(intptr_t)i)) {
      fail("pthread_create failed");
      exit(1);
    }
  for (int i = 0; i < threads; i++)
    pthread_join(tid[i], NULL);
  for (int i = 0; i < threads * threads; i++)
    if (atomic_load(&rings[i].head) != atomic_load(&rings[i].tail))
      fail("ring %d not drained", i);
  free(rings);
  long cf = atomic_load(&cross_frees), lf = atomic_load(&local_frees);
  printf("stress rings: %d threads x %ld ops: %ld cross-thread frees, "
         "%ld local frees\n",
         threads, ops, cf, lf);
  /* a loose bound: rings that barely work would show up here */
  if (cf < lf / 2)
    fail("too few cross-thread frees: %ld cross, %ld local", cf, lf);
  return 0;
}

/* ---- churn mode ----------------------------------------------------------*/

/* Blocks whose allocating thread may be gone, waiting for someone to free
 * them. */
enum { MAILBOX = 8192 };
static pthread_mutex_t mail_lock = PTHREAD_MUTEX_INITIALIZER;
static block_t mailbox[MAILBOX];
static int mail_count;
static atomic_long orphans_freed, orphans_reallocated;
static atomic_int detached_running;

static int mail_put(const block_t *b) {
  pthread_mutex_lock(&mail_lock);
  int ok = mail_count < MAILBOX;
  if (ok) mailbox[mail_count++] = *b;
  pthread_mutex_unlock(&mail_lock);
  return ok;
}

static int mail_take(block_t *b, uint64_t *s) {
  pthread_mutex_lock(&mail_lock);
  int ok = mail_count > 0;
  if (ok) {
    int i = (int)(rnd(s) % (uint64_t)mail_count);
    *b = mailbox[i];
    mailbox[i] = mailbox[--mail_count];
  }
  pthread_mutex_unlock(&mail_lock);
  return ok;
}

static void *churn_worker(void *arg) {
  uintptr_t n = (uintptr_t)arg;
  int detached = (n & 0x80000000u) != 0;
  n &= 0x7fffffffu;
  uint64_t s = 0xD1B54A32D192ED03ull * (n + 1);
  uint64_t id = (uint64_t)(n + 1) << 32;
  enum { NB = 96 };
  block_t mine[NB + 5];
  int count = 0;
  for (int i = 0; i < NB; i++)
    if (new_block(&mine[count], random_size(&s), id++, "churn malloc")) count++;
  /* medium blocks in every thread, a large one in some, so abandoned medium
   * and large memory gets freed by others too */
  for (int i = 0; i < 4; i++)
    if (new_block(&mine[count], 8193 + rnd(&s) % 200000, id++, "churn malloc"))
      count++;
  if (n % 8 == 0 && new_block(&mine[count], (1 << 20) + rnd(&s) % (1 << 20),
                              id++, "churn malloc"))
    count++;

  /* free blocks that threads which already exited allocated */
  int take = (int)(rnd(&s) % 40);
  for (int i = 0; i < take; i++) {
    block_t b;
    if (!mail_take(&b, &s)) break;
    if (i % 5 == 0) { /* realloc an orphan: its heap is gone */
      check_block(&b, "orphan before realloc");
      size_t to = random_size(&s);
      uint8_t *q = realloc(b.p, to);
      if (!q) {
        fail("realloc of an orphan failed");
        continue;
      }
      size_t keep = b.size < to ? b.size : to;
      if (check_range(q, keep, seed_of(&b)) != SIZE_MAX)
        fail("realloc of an orphan (%zu -> %zu) lost contents", b.size, to);
      b.p = q;
      b.size = to;
      b.id = id++;
      fill_block(&b);
      atomic_fetch_add(&orphans_reallocated, 1);
      if (!mail_put(&b)) free_block(&b, "orphan free");
      continue;
    }
    free_block(&b, "orphan free (thread)");
    atomic_fetch_add(&orphans_freed, 1);
  }

  /* every fourth thread leaves everything behind; the others free some */
  int leave = (n % 4 == 0) ? count : count / 2;
  for (int i = leave; i < count; i++)
    free_block(&mine[i], "churn free");
  for (int i = 0; i < leave; i++)
    if (!mail_put(&mine[i])) free_block(&mine[i], "churn free (mailbox full)");
  if (detached) atomic_fetch_sub(&detached_running, 1);
  return NULL;
}

static int run_churn(int total) {
  enum { BATCH = 16 };
  uint64_t s = 42;
  int made = 0;
  size_t peak_mail = 0;
  while (made < total) {
    pthread_t tid[BATCH];
    int joinable[BATCH];
    for (int i = 0; i < BATCH; i++) {
      uintptr_t arg = (uintptr_t)(made + i);
      joinable[i] = (i % 4) != 3;
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      if (!joinable[i]) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        arg |= 0x80000000u;
        atomic_fetch_add(&detached_running, 1);
      }
      int e = pthread_create(&tid[i], &attr, churn_worker, (void *)arg);
      pthread_attr_destroy(&attr);
      if (e) {
        fail("pthread_create: %s", strerror(e));
        exit(1);
      }
    }
    for (int i = 0; i < BATCH; i++)
      if (joinable[i]) pthread_join(tid[i], NULL);
    made += BATCH;
    /* the main thread frees about a third of the orphans */
    pthread_mutex_lock(&mail_lock);
    if ((size_t)mail_count > peak_mail) peak_mail = (size_t)mail_count;
    int n = mail_count / 3;
    pthread_mutex_unlock(&mail_lock);
    for (int i = 0; i < n; i++) {
      block_t b;
      if (!mail_take(&b, &s)) break;
      free_block(&b, "orphan free (main)");
      atomic_fetch_add(&orphans_freed, 1);
    }
  }
  while (atomic_load(&detached_running) > 0)
    sched_yield();

  /* many threads alive at once, each leaving blocks behind */
  enum { WIDE = 200 };
  static pthread_t wide[WIDE];
  int started = 0;
  for (; started < WIDE; started++)
    if (pthread_create(&wide[started], NULL, churn_worker,
                       (void *)(uintptr_t)(made + started))) {
      fail("pthread_create of %d simultaneous threads failed at %d", WIDE,
           started);
      break;
    }
  for (int i = 0; i < started; i++)
    pthread_join(wide[i], NULL);
  made += started;
  block_t b;
  while (mail_take(&b, &s)) {
    free_block(&b, "final orphan free");
    atomic_fetch_add(&orphans_freed, 1);
  }
  malloc_trim(0);
  printf("stress churn: %d threads, %ld orphans freed, %ld reallocated, "
         "mailbox peak %zu\n",
         made, atomic_load(&orphans_freed), atomic_load(&orphans_reallocated),
         peak_mail);
  return 0;
}

/* A sanitizer's shadow memory would dwarf the allocator's. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

/* Peak resident set in KiB, from /proc. */
static long peak_rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %ld", &v) == 1) break;
  fclose(f);
  return v;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "rings";
  if (strcmp(mode, "rings") == 0) {
    int threads = argc > 2 ? atoi(argv[2]) : 8;
    long ops = argc > 3 ? atol(argv[3]) : 60000;
    if (threads < 2 || threads > MAXT) {
      fprintf(stderr, "stress: threads must be 2..%d\n", MAXT);
      return 2;
    }
    run_rings(threads, ops);
  } else if (strcmp(mode, "churn") == 0) {
    run_churn(argc > 2 ? atoi(argv[2]) : 1024);
  } else {
    fprintf(stderr, "usage: stress rings [threads] [ops] | churn [threads]\n");
    return 2;
  }
  long peak = peak_rss_kib();
  printf("stress %s: peak RSS %ld KiB\n", mode, peak);
  /* Far above what the live data needs (tens of MiB): only a leak of whole
   * heaps or pages per thread gets here. */
  if (peak > (1L << 20) && !SANITIZED)
    fail("peak RSS %ld KiB exceeds 1 GiB: memory is not being reused", peak);
  int f = atomic_load(&failures);
  if (f) {
    fprintf(stderr, "stress %s: %d failure(s)\n", mode, f);
    return 1;
  }
  printf("stress %s: all checks passed\n", mode);
  return 0;
}
