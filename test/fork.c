/* fork.c: fork from a multi-threaded program while other threads allocate
 * and free. Each child checks and frees blocks the parent's threads
 * allocated, allocates and frees its own, runs threads of its own, and exits
 * 0; the parent checks every child's status. Forks come from the main thread
 * and from other threads. A child that deadlocks (an allocator lock held
 * across fork) is killed by an alarm and reported. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef TEST_ALLOT
#include "allot.h"
#endif

enum {
  WORKERS = 4,
  POOL = 512,
  MAIN_FORKS = 40,
  THREAD_FORKERS = 2,
  FORKS_PER_THREAD = 5,
  CHILD_TIMEOUT = 30 /* seconds; only a deadlock gets near it */
};

static atomic_int failures;
static int in_child;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  flockfile(stderr);
  fprintf(stderr, "fork%s: FAILED: ", in_child ? " (child)" : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  funlockfile(stderr);
  va_end(ap);
  atomic_fetch_add(&failures, 1);
}

typedef struct {
  uint8_t *p;
  size_t size;
  uint64_t id;
} block_t;

static uint64_t seed_of(const block_t *b) {
  return (b->id * 0x9E3779B97F4A7C15ull) ^ (uintptr_t)b->p ^
         (b->size * 0xC2B2AE3D27D4EB4Full);
}

static void fill_block(block_t *b) {
  uint64_t s = seed_of(b);
  for (size_t i = 0; i < b->size; i++)
    b->p[i] = (uint8_t)((s >> ((i & 7) * 8)) + (i >> 3));
}

static int check_block(const block_t *b, const char *where) {
  uint64_t s = seed_of(b);
  for (size_t i = 0; i < b->size; i++)
    if (b->p[i] != (uint8_t)((s >> ((i & 7) * 8)) + (i >> 3))) {
      fail("%s: block %p (size %zu) corrupted at byte %zu", where, (void *)b->p,
           b->size, i);
      return 0;
    }
#ifdef TEST_ALLOT
  if (!allot_owns(b->p)) {
    fail("%s: block %p is not a live allot block", where, (void *)b->p);
    return 0;
  }
#endif
  return 1;
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1Dull;
}

static size_t random_size(uint64_t *s) {
  uint64_t r = rnd(s) % 1000;
  if (r < 800) return 1 + rnd(s) % 512;
  if (r < 980) return 513 + rnd(s) % 8000;
  if (r < 998) return 8193 + rnd(s) % 100000;
  return (1 << 20) + rnd(s) % (1 << 20);
}

static int new_block(block_t *b, uint64_t *s, uint64_t id) {
  b->size = random_size(s);
  b->p = malloc(b->size);
  b->id = id;
  if (!b->p) {
    fail("malloc(%zu) returned NULL", b->size);
    return 0;
  }
  fill_block(b);
  return 1;
}

/* Blocks shared by all threads; the atfork handlers keep the pool
 * consistent across fork, so a child may use it. */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static block_t pool[POOL];
static atomic_int stop;
static atomic_long worker_ops;

static void pool_prepare(void) {
  pthread_mutex_lock(&pool_lock);
}
static void pool_release(void) {
  pthread_mutex_unlock(&pool_lock);
}

/* Replace pool slot i with b (b may be empty); frees what was there. */
static void pool_swap(int i, block_t *b) {
  pthread_mutex_lock(&pool_lock);
  block_t old = pool[i];
  pool[i] = *b;
  pthread_mutex_unlock(&pool_lock);
  if (old.p && check_block(&old, "pool free")) free(old.p);
}

static void *worker(void *arg) {
  uint64_t s = 0x1234567ull * ((uintptr_t)arg + 1);
  uint64_t id = (uint64_t)((uintptr_t)arg + 1) << 40;
  block_t local[32];
  memset(local, 0, sizeof local);
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    block_t b;
    if (!new_block(&b, &s, id++)) continue;
    if (rnd(&s) % 2) {
      pool_swap((int)(rnd(&s) % POOL), &b);
    } else {
      block_t *l = &local[rnd(&s) % 32];
      if (l->p && check_block(l, "worker free")) free(l->p);
      *l = b;
    }
    atomic_fetch_add_explicit(&worker_ops, 1, memory_order_relaxed);
  }
  for (int i = 0; i < 32; i++)
    if (local[i].p && check_block(&local[i], "worker final free"))
      free(local[i].p);
  return NULL;
}

/* ---- the child -----------------------------------------------------------*/

static void *child_thread(void *arg) {
  uint64_t s = 0xABCDEFull + (uintptr_t)arg;
  block_t mine[64];
  int n = 0;
  for (int i = 0; i < 64; i++)
    if (new_block(&mine[n], &s, (uint64_t)i)) n++;
  /* some of the parent's blocks, from this child thread */
  for (int i = (int)(uintptr_t)arg; i < POOL; i += 8) {
    block_t empty = {0};
    pool_swap(i, &empty);
  }
  for (int i = 0; i < n; i++)
    if (check_block(&mine[i], "child thread")) free(mine[i].p);
  return NULL;
}

static void child_main(int round) {
  in_child = 1;
  alarm(CHILD_TIMEOUT);
  uint64_t s = 0x5555ull + (uint64_t)round;
  /* the pool as the parent's threads left it; no other thread runs here */
  for (int i = 0; i < POOL; i++)
    if (pool[i].p) check_block(&pool[i], "inherited block");
  /* free a third of it, realloc a third */
  for (int i = 0; i < POOL; i += 3) {
    if (pool[i].p) free(pool[i].p);
    pool[i].p = NULL;
  }
  for (int i = 1; i < POOL; i += 3) {
    block_t *b = &pool[i];
    if (!b->p) continue;
    size_t to = random_size(&s);
    uint8_t *q = realloc(b->p, to);
    if (!q) {
      fail("realloc in child failed");
      exit(1);
    }
    block_t old = *b;
    b->p = q;
    b->size = to < old.size ? to : old.size;
    /* the kept prefix still carries the old seed: compare against it */
    uint64_t so = seed_of(&old);
    for (size_t k = 0; k < b->size; k++)
      if (q[k] != (uint8_t)((so >> ((k & 7) * 8)) + (k >> 3))) {
        fail("realloc in child lost byte %zu", k);
        break;
      }
    b->size = to;
    b->id = 0xC0DE0000ull + (uint64_t)i;
    fill_block(b);
  }
  block_t mine[200];
  for (int i = 0; i < 200; i++)
    if (!new_block(&mine[i], &s, 0xF0000ull + (uint64_t)i)) exit(1);
  /* a few children also run threads */
  if (round % 4 == 0) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
      if (pthread_create(&t[i], NULL, child_thread, (void *)(uintptr_t)i)) {
        fail("pthread_create in child failed");
        exit(1);
      }
    for (int i = 0; i < 2; i++)
      pthread_join(t[i], NULL);
  }
  for (int i = 0; i < 200; i++)
    if (check_block(&mine[i], "child block")) free(mine[i].p);
  for (int i = 0; i < POOL; i++)
    if (pool[i].p && check_block(&pool[i], "child pool free")) {
      free(pool[i].p);
      pool[i].p = NULL;
    }
  malloc_trim(0);
  exit(atomic_load(&failures) ? 1 : 0);
}

/* Fork once, run the child, and check its status. */
static void fork_and_check(int round) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    fail("fork: %s", strerror(errno));
    return;
  }
  if (pid == 0) child_main(round);
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      fail("waitpid: %s", strerror(errno));
      return;
    }
  if (WIFSIGNALED(status))
    fail("child %d (round %d) killed by signal %d (%s)%s", (int)pid, round,
         WTERMSIG(status), strsignal(WTERMSIG(status)),
         WTERMSIG(status) == SIGALRM ? ": deadlocked after fork?" : "");
  else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("child %d (round %d) exited with status %d", (int)pid, round,
         WEXITSTATUS(status));
}

static void *forker(void *arg) {
  int base = (int)(uintptr_t)arg;
  uint64_t s = 77 + (uint64_t)base;
  for (int i = 0; i < FORKS_PER_THREAD; i++) {
    /* allocate right up to the fork */
    block_t b;
    if (new_block(&b, &s, 0xFEEDull << 32 | (uint64_t)i))
      pool_swap((int)(rnd(&s) % POOL), &b);
    fork_and_check(base + i);
  }
  return NULL;
}

int main(void) {
  pthread_atfork(pool_prepare, pool_release, pool_release);
  pthread_t w[WORKERS];
  for (int i = 0; i < WORKERS; i++)
    if (pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)i)) {
      fprintf(stderr, "fork: pthread_create failed\n");
      return 1;
    }
  /* let the workers fill the pool */
  while (atomic_load(&worker_ops) < 4 * POOL)
    sched_yield();

  for (int round = 0; round < MAIN_FORKS; round++)
    fork_and_check(round);

  pthread_t f[THREAD_FORKERS];
  for (int i = 0; i < THREAD_FORKERS; i++)
    pthread_create(&f[i], NULL, forker,
                   (void *)(uintptr_t)(1000 + i * FORKS_PER_THREAD));
  uint64_t s = 99;
  for (int i = 0; i < 20000; i++) { /* the main thread allocates meanwhile */
    block_t b;
    if (new_block(&b, &s, 0xAAAAull << 32 | (uint64_t)i))
      pool_swap((int)(rnd(&s) % POOL), &b);
  }
  for (int i = 0; i < THREAD_FORKERS; i++)
    pthread_join(f[i], NULL);

  atomic_store(&stop, 1);
  for (int i = 0; i < WORKERS; i++)
    pthread_join(w[i], NULL);
  for (int i = 0; i < POOL; i++) {
    block_t empty = {0};
    pool_swap(i, &empty);
  }
  int nf = atomic_load(&failures);
  if (nf) {
    fprintf(stderr, "fork: %d failure(s)\n", nf);
    return 1;
  }
  printf("fork: %d forks (%d from threads) with %d busy threads: all passed\n",
         MAIN_FORKS + THREAD_FORKERS * FORKS_PER_THREAD,
         THREAD_FORKERS * FORKS_PER_THREAD, WORKERS);
  return 0;
}
