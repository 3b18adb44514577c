/* test_tools_workload.c: the program the tests of the allot command
 * (test/tools.cmake) run under `allot run`, `record`, `replay`, `map` and
 * `prof`. Deterministic for a given seed and thread count: every thread
 * makes and frees blocks of every kind (small, medium, large, calloc,
 * realloc, aligned), hands some to the next thread to free, and two
 * allocation sites hold memory to the end so a profile has a known answer:
 * hold_big() holds the most (about 3/4 of what is held), hold_small() less.
 *
 *   test_tools_workload [THREADS [ROUNDS [SEED]]]
 *
 * Prints "workload: ok held=N" (bytes held at exit) and exits 0. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 512
#define HANDOFF 64

static int threads = 2, rounds = 4000;
static unsigned seed0 = 1;

typedef struct ring {
  pthread_mutex_t lock;
  void *slot[HANDOFF];
  int count;
} ring_t;

static ring_t rings[64];

static uint32_t next_rand(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static size_t pick_size(uint32_t *s) {
  uint32_t r = next_rand(s) % 1000;
  if (r < 700) return 1 + next_rand(s) % 256;       /* small */
  if (r < 950) return 257 + next_rand(s) % 8000;    /* small, larger */
  if (r < 995) return 8193 + next_rand(s) % 200000; /* medium */
  return (1u << 20) + next_rand(s) % (3u << 20);    /* large */
}

/* Blocks held to the end by two sites: noinline so a profile sees them. */
static void *held[4096];
static size_t nheld, held_bytes;
static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;

static __attribute__((noinline)) void hold(void *p, size_t size) {
  pthread_mutex_lock(&held_lock);
  if (nheld < 4096) {
    held[nheld++] = p;
    held_bytes += size;
  } else {
    free(p);
  }
  pthread_mutex_unlock(&held_lock);
}

__attribute__((noinline)) void hold_big(void) {
  void *p = malloc(96 * 1024);
  memset(p, 1, 96 * 1024);
  hold(p, 96 * 1024);
}

__attribute__((noinline)) void hold_small(void) {
  void *p = malloc(32 * 1024);
  memset(p, 2, 32 * 1024);
  hold(p, 32 * 1024);
}

static void *thread_main(void *arg) {
  int id = (int)(intptr_t)arg;
  uint32_t s = seed0 * 2654435761u + (uint32_t)id * 40503u + 1;
  void *win[WINDOW];
  size_t sz[WINDOW];
  memset(win, 0, sizeof win);
  for (int r = 0; r < rounds; r++) {
    int i = (int)(next_rand(&s) % WINDOW);
    uint32_t kind = next_rand(&s) % 100;
    if (win[i]) {
      if (kind < 10) {
        /* grow or shrink it */
        size_t n = pick_size(&s);
        void *q = realloc(win[i], n);
        if (q) {
          memset(q, 3, n < sz[i] ? n : sz[i]);
          win[i] = q;
          sz[i] = n;
        }
        continue;
      }
      if (kind < 20) {
        /* hand it to the next thread, which frees it */
        ring_t *rg = &rings[(id + 1) % threads];
        pthread_mutex_lock(&rg->lock);
        if (rg->count < HANDOFF) {
          rg->slot[rg->count++] = win[i];
          win[i] = NULL;
        }
        pthread_mutex_unlock(&rg->lock);
        if (!win[i]) continue;
      }
      free(win[i]);
      win[i] = NULL;
      continue;
    }
    size_t n = pick_size(&s);
    void *p;
    if (kind < 10) {
      p = calloc(1, n);
    } else if (kind < 15) {
      size_t align = (size_t)16 << (next_rand(&s) % 9);
      if (posix_memalign(&p, align, n) != 0) p = NULL;
    } else if (kind < 18) {
      p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    } else {
      p = malloc(n);
    }
    if (!p) {
      fprintf(stderr, "workload: allocation of %zu failed\n", n);
      exit(1);
    }
    memset(p, 4, n < 4096 ? n : 4096);
    win[i] = p;
    sz[i] = n;
    if (r % 256 == 0) hold_big();
    if (r % 512 == 0) hold_small();
    /* free what the previous thread handed over */
    ring_t *mine = &rings[id];
    pthread_mutex_lock(&mine->lock);
    while (mine->count)
      free(mine->slot[--mine->count]);
    pthread_mutex_unlock(&mine->lock);
  }
  for (int i = 0; i < WINDOW; i++)
    free(win[i]);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) threads = atoi(argv[1]);
  if (argc > 2) rounds = atoi(argv[2]);
  if (argc > 3) seed0 = (unsigned)atoi(argv[3]);
  if (threads < 1 || threads > 64 || rounds < 1) {
    fprintf(stderr, "usage: test_tools_workload [THREADS [ROUNDS [SEED]]]\n");
    return 2;
  }
  for (int i = 0; i < threads; i++)
    pthread_mutex_init(&rings[i].lock, NULL);
  pthread_t t[64];
  for (int i = 1; i < threads; i++)
    pthread_create(&t[i], NULL, thread_main, (void *)(intptr_t)i);
  thread_main(0);
  for (int i = 1; i < threads; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < threads; i++)
    while (rings[i].count)
      free(rings[i].slot[--rings[i].count]);
  printf("workload: ok held=%zu\n", held_bytes);
  return 0;
}
