/* mem_return.c: memory given back to the OS (issue 7). One program, one mode
 * per CTest entry (test/memory.cmake):
 *
 *   idle          allocate 1 GiB in mixed sizes, free it, make no further
 *                 allocation call: RSS must come back within 5 s, and the
 *                 purge thread must then go away (an idle program pays
 *                 nothing)
 *   calls         the same, with a few small malloc/free pairs while waiting
 *   xthread       one thread allocates, another frees, the allocating thread
 *                 stays alive and idle
 *   xthread-exit  the same, but the allocating thread exits before the frees
 *   xthread-small-exit  the same with 256 MiB of small blocks only (so the
 *                 freeing thread never reaches a slow path of its own)
 *   trim          malloc_trim(0) right after the frees gives the memory back
 *                 at once (run with ALLOT_PURGE_DELAY=3600000, so nothing
 *                 but the call can do it)
 *   trim-threads  the same with four threads, each freeing its own blocks
 *                 and staying alive; the main thread calls malloc_trim(0)
 *   prodcons S    producers and consumers with a bounded live set for S
 *                 seconds: RSS must stay flat after a 2 s warm-up
 *   prodcons-leak S  the same, leaking one block in 16: must fail
 *   reuse         thread A allocates N MiB, thread B frees them, thread C
 *                 allocates N MiB: RSS stays under 1.5 N + slack
 *   fork          a child of a process whose purge thread ran allocates and
 *                 frees 256 MiB and gets its RSS back
 *   lazyfree      with ALLOT_PURGE_MADV=free, purged memory shows as
 *                 LazyFree, and reusing it is correct
 *   small         a single-threaded program frees whole pages and a medium
 *                 block, under 1 MiB in all: no purge thread starts (its
 *                 stack and the C library's thread code would cost more)
 *
 * "Back" means within 10 % (plus 16 MiB) of the RSS before the phase. Only
 * malloc, free and malloc_trim are used, so the program also runs against
 * other allocators (LD_PRELOAD, or built without allot), where most modes
 * are expected to fail: that is how to check the test can fail. Exit 0 pass,
 * 1 fail, 77 skip. Bookkeeping arrays come from mmap, not from malloc. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)
#define RETURN_WITHIN_MS 5000 /* the 5 seconds */
/* Under qemu-user (scripts/cross-aarch64.sh sets ALLOT_TEST_EMULATOR) every
 * instruction and system call of the purge thread is emulated, and a
 * sanitizer build (test/memory.cmake sets ALLOT_TEST_SLOW) checks each of
 * them; both run beside other tests. xthread, which gives 1 GiB back in
 * 0.7-0.9 s in either build when the machine is quiet, took over 5 s (690
 * and 712 MiB still resident) once under qemu and once in the UBSan build
 * with another suite running beside it. The 5 seconds are the issue's
 * promise for a program with a CPU to run on, which the default build
 * checks; the slow builds check that the memory comes back, with four times
 * the time. */
static int return_within_ms(void) {
  return getenv("ALLOT_TEST_EMULATOR") || getenv("ALLOT_TEST_SLOW")
             ? 4 * RETURN_WITHIN_MS
             : RETURN_WITHIN_MS;
}
#define POLL_MS 50

static int failed;

/* ---- measuring ------------------------------------------------------------
 */

/* Resident bytes, read without stdio (which would allocate). */
static size_t rss(void) {
  char buf[128];
  int fd = open("/proc/self/statm", O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = buf;
  while (*p && *p != ' ')
    p++; /* skip the size field */
  return (size_t)strtoul(p, NULL, 10) * (size_t)sysconf(_SC_PAGESIZE);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static int threads_in_process(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* Milliseconds that the process's threads have spent runnable but waiting
 * for a CPU (run_delay, the second field of each thread's schedstat), or
 * -1. Raw system calls only: no allocation while memory is being watched. */
static double cpu_wait_ms(void) {
  int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY);
  if (dir < 0) return -1;
  char ents[4096];
  double ns = 0;
  long n;
  while ((n = syscall(SYS_getdents64, dir, ents, sizeof ents)) > 0) {
    for (long off = 0; off < n;) {
      struct {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[];
      } *e = (void *)(ents + off);
      off += e->reclen;
      if (e->name[0] == '.') continue;
      char path[64], buf[128];
      snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", e->name);
      int fd = open(path, O_RDONLY);
      if (fd < 0) continue;
      ssize_t got = read(fd, buf, sizeof buf - 1);
      close(fd);
      if (got <= 0) continue;
      buf[got] = 0;
      unsigned long long run, wait;
      if (sscanf(buf, "%llu %llu", &run, &wait) == 2) ns += (double)wait;
    }
  }
  close(dir);
  return n < 0 ? -1 : ns / 1e6;
}

static size_t target_of(size_t before) {
  return before + before / 10 + 16 * MiB;
}

static double mib(size_t b) {
  return (double)b / (double)MiB;
}

/* ---- the allocation phase -------------------------------------------------
 */

static uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* Log-uniform in [lo, hi]. */
static size_t log_uniform(uint64_t *s, size_t lo, size_t hi) {
  double u = (double)(rng_next(s) >> 11) / 9007199254740992.0;
  double v = (double)lo * __builtin_pow((double)hi / (double)lo, u);
  size_t r = (size_t)v;
  return r < lo ? lo : r > hi ? hi : r;
}

/* A size of the given kind: 0 small (<= 8 KiB, most of them tiny),
 * 1 medium (8 KiB .. 1 MiB), 2 large (1 .. 16 MiB). */
static size_t size_of_kind(uint64_t *s, int kind) {
  if (kind == 0) return log_uniform(s, 8, 8192);
  if (kind == 1) return log_uniform(s, 8193, MiB);
  return log_uniform(s, MiB + 1, 16 * MiB);
}

typedef struct phase {
  void **ptr;
  size_t n, cap, bytes;
} phase_t;

static void *map_array(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  memset(p, 0, bytes); /* resident before the baseline is taken */
  return p;
}

static void phase_init(phase_t *ph, size_t total) {
  /* the smallest blocks average a few hundred bytes: room for all */
  ph->cap = total / 3 / 256 + 4096;
  ph->ptr = map_array(ph->cap * sizeof *ph->ptr);
  ph->n = ph->bytes = 0;
}

static void phase_done(phase_t *ph) {
  munmap(ph->ptr, ph->cap * sizeof *ph->ptr);
}

/* Allocate about `total` bytes, a third of them in each kind, interleaved,
 * and write every byte (the memory must become resident). */
static void phase_alloc(phase_t *ph, size_t total, uint64_t seed) {
  uint64_t s = seed;
  size_t budget[3] = {total / 3, total / 3, total - 2 * (total / 3)};
  while (budget[0] + budget[1] + budget[2] > 0 && ph->n < ph->cap) {
    int kind = (int)(rng_next(&s) % 64);
    kind = kind < 60 ? 0 : kind < 63 ? 1 : 2; /* by count */
    if (!budget[kind]) {
      kind = budget[0] ? 0 : budget[1] ? 1 : 2;
    }
    size_t size = size_of_kind(&s, kind);
    if (size > budget[kind]) size = budget[kind];
    if (size == 0) size = 1;
    void *p = malloc(size);
    if (!p) {
      fprintf(stderr, "malloc(%zu) failed\n", size);
      exit(2);
    }
    memset(p, (int)(size & 0xff) | 1, size);
    ph->ptr[ph->n++] = p;
    ph->bytes += size;
    budget[kind] -= size;
  }
}

/* Free blocks [from, to) of the phase in random order. */
static void phase_free_range(phase_t *ph, size_t from, size_t to,
                             uint64_t seed) {
  uint64_t s = seed;
  for (size_t i = to; i > from + 1; i--) {
    size_t j = from + (size_t)(rng_next(&s) % (i - from));
    void *t = ph->ptr[i - 1];
    ph->ptr[i - 1] = ph->ptr[j];
    ph->ptr[j] = t;
  }
  for (size_t i = from; i < to; i++) {
    free(ph->ptr[i]);
    ph->ptr[i] = NULL;
  }
}

/* Poll RSS until it is at most target or the time is up. `calls`: make a few
 * small malloc/free pairs at every poll (a program that carries on lightly).
 * Returns the last RSS and sets *ms to when it got there. */
static size_t wait_for_rss(size_t target, long limit_ms, int calls,
                           double *ms) {
  double t0 = now_ms();
  size_t r = rss();
  uint64_t s = 42;
  while (r > target && now_ms() - t0 < (double)limit_ms) {
    sleep_ms(POLL_MS);
    for (int i = 0; i < calls; i++) {
      void *p = malloc(16 + rng_next(&s) % 240);
      if (p) memset(p, 1, 16);
      free(p);
    }
    r = rss();
  }
  *ms = now_ms() - t0;
  return r;
}

/* The 5 s are for a program that has a CPU to run on. On a machine with
 * more runnable threads than CPUs (the suite runs tests side by side, and
 * the machine is shared) the purge thread waits its turn, and its madvise
 * calls take longer too: xthread gave 1 GiB back in 0.7 s alone and failed
 * the 5 s three runs in three with four busy loops beside it on 2 CPUs
 * (the purge thread ran 2.2 s of those 5), and once in a session's suite.
 * So when the memory is not back in time and the process's threads spent
 * more than a fifth of that time waiting for a CPU (their schedstat
 * run_delay), the wait goes on up to four times as long, and says why
 * (as the slow builds' wait is from the start: return_within_ms). */
static void check_back(const char *what, size_t before, size_t peak,
                       int calls) {
  size_t target = target_of(before);
  double ms, waited0 = cpu_wait_ms();
  int limit = return_within_ms();
  size_t after = wait_for_rss(target, limit, calls, &ms);
  double waited = cpu_wait_ms() - waited0;
  if (after > target && limit == RETURN_WITHIN_MS && waited0 >= 0 &&
      waited > limit / 5.0) {
    double more;
    printf("%s: %.1f MiB still resident after %.0f ms, while the process's "
           "threads waited %.0f ms for a CPU: waiting up to %d ms\n",
           what, mib(after), ms, waited, 4 * limit);
    after = wait_for_rss(target, 3 * limit, calls, &more);
    ms += more;
    limit *= 4;
  }
  printf("%s: RSS before %.1f MiB, at peak %.1f MiB, after %.1f MiB "
         "(%.0f ms; target <= %.1f MiB within %d ms)\n",
         what, mib(before), mib(peak), mib(after), ms, mib(target), limit);
  if (after > target) {
    printf("%s: FAILED: RSS not back within %d ms\n", what, limit);
    failed = 1;
  }
}

/* ---- idle, calls ----------------------------------------------------------
 */

static void mode_single(size_t total, int calls) {
  phase_t ph;
  phase_init(&ph, total);
  size_t before = rss();
  phase_alloc(&ph, total, 1);
  size_t peak = rss();
  phase_free_range(&ph, 0, ph.n, 2);
  check_back(calls ? "calls" : "idle", before, peak, calls);
  if (!calls && !failed) {
    /* Nothing is left to give back: a background thread must not stay. */
    double t0 = now_ms();
    int n = threads_in_process();
    while (n > 1 && now_ms() - t0 < 5000) {
      sleep_ms(POLL_MS);
      n = threads_in_process();
    }
    printf("idle: %d thread(s) after %.0f ms\n", n, now_ms() - t0);
    if (n != 1) {
      printf("idle: FAILED: a background thread stays in an idle program\n");
      failed = 1;
    }
  }
  phase_done(&ph);
}

/* ---- xthread, xthread-exit ------------------------------------------------
 */

typedef struct xshare {
  phase_t ph;
  size_t total;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int allocated, release;
  int small_only; /* only blocks of the small classes */
} xshare_t;

static void phase_alloc_small(phase_t *ph, size_t total, uint64_t seed);

static void *x_allocator(void *arg) {
  xshare_t *x = arg;
  if (x->small_only)
    phase_alloc_small(&x->ph, x->total, 3);
  else
    phase_alloc(&x->ph, x->total, 3);
  pthread_mutex_lock(&x->mu);
  x->allocated = 1;
  pthread_cond_broadcast(&x->cv);
  /* -exit: leave now; otherwise stay alive (and idle) until released */
  while (!x->release)
    pthread_cond_wait(&x->cv, &x->mu);
  pthread_mutex_unlock(&x->mu);
  return NULL;
}

static void *x_freer(void *arg) {
  xshare_t *x = arg;
  phase_free_range(&x->ph, 0, x->ph.n, 4);
  return NULL;
}

static void mode_xthread(size_t total, int allocator_exits, int small_only) {
  static xshare_t x;
  x.total = total;
  x.small_only = small_only;
  pthread_mutex_init(&x.mu, NULL);
  pthread_cond_init(&x.cv, NULL);
  phase_init(&x.ph, total);
  size_t before = rss();
  pthread_t a, b;
  x.release = allocator_exits;
  pthread_create(&a, NULL, x_allocator, &x);
  pthread_mutex_lock(&x.mu);
  while (!x.allocated)
    pthread_cond_wait(&x.cv, &x.mu);
  pthread_mutex_unlock(&x.mu);
  if (allocator_exits) pthread_join(a, NULL);
  size_t peak = rss();
  pthread_create(&b, NULL, x_freer, &x);
  pthread_join(b, NULL);
  check_back(small_only        ? "xthread-small-exit"
             : allocator_exits ? "xthread-exit"
                               : "xthread",
             before, peak, 0);
  if (!allocator_exits) {
    pthread_mutex_lock(&x.mu);
    x.release = 1;
    pthread_cond_broadcast(&x.cv);
    pthread_mutex_unlock(&x.mu);
    pthread_join(a, NULL);
  }
  phase_done(&x.ph);
}

/* ---- trim, trim-threads ---------------------------------------------------
 */

static void check_now(const char *what, size_t before, size_t peak,
                      size_t freed) {
  size_t target = target_of(before);
  malloc_trim(0);
  size_t after = rss();
  printf("%s: RSS before %.1f MiB, at peak %.1f MiB, after the frees %.1f "
         "MiB, after malloc_trim(0) %.1f MiB (target <= %.1f MiB)\n",
         what, mib(before), mib(peak), mib(freed), mib(after), mib(target));
  if (after > target) {
    printf("%s: FAILED: malloc_trim(0) did not give the memory back\n", what);
    failed = 1;
  }
}

static void mode_trim(size_t total) {
  phase_t ph;
  phase_init(&ph, total);
  size_t before = rss();
  phase_alloc(&ph, total, 5);
  size_t peak = rss();
  phase_free_range(&ph, 0, ph.n, 6);
  check_now("trim", before, peak, rss());
  phase_done(&ph);
}

enum { TRIM_THREADS = 4 };
static phase_t trim_ph[TRIM_THREADS];
static pthread_barrier_t trim_done, trim_checked;
static size_t trim_total;

static void *trim_worker(void *arg) {
  size_t i = (size_t)arg;
  phase_alloc(&trim_ph[i], trim_total / TRIM_THREADS, 10 + i);
  phase_free_range(&trim_ph[i], 0, trim_ph[i].n, 20 + i);
  pthread_barrier_wait(&trim_done);
  pthread_barrier_wait(&trim_checked); /* alive while main trims */
  return NULL;
}

static void mode_trim_threads(size_t total) {
  trim_total = total;
  for (size_t i = 0; i < TRIM_THREADS; i++)
    phase_init(&trim_ph[i], total / TRIM_THREADS);
  pthread_barrier_init(&trim_done, NULL, TRIM_THREADS + 1);
  pthread_barrier_init(&trim_checked, NULL, TRIM_THREADS + 1);
  size_t before = rss();
  pthread_t t[TRIM_THREADS];
  for (size_t i = 0; i < TRIM_THREADS; i++)
    pthread_create(&t[i], NULL, trim_worker, (void *)i);
  pthread_barrier_wait(&trim_done);
  /* the peak passed while the threads ran: report the sum allocated */
  size_t peak = before;
  for (size_t i = 0; i < TRIM_THREADS; i++)
    peak += trim_ph[i].bytes;
  check_now("trim-threads", before, peak, rss());
  pthread_barrier_wait(&trim_checked);
  for (size_t i = 0; i < TRIM_THREADS; i++)
    pthread_join(t[i], NULL);
  for (size_t i = 0; i < TRIM_THREADS; i++)
    phase_done(&trim_ph[i]);
}

/* ---- prodcons --------------------------------------------------------------
 * Pairs of threads: the producer allocates blocks of mixed sizes (and writes
 * them), the consumer checks and frees them. Each pair's ring holds at most
 * RING blocks and the consumer takes one only when the ring is full; the
 * size of a block is fixed by its slot, so after the first fill the live set
 * is the same multiset of sizes (give or take one block) however the threads
 * are scheduled. Memory flows from consumer to producer only through the
 * allocator's cross-thread frees. */
enum { PAIRS = 2, RING = 8192 };

typedef struct ring {
  _Atomic size_t head, tail; /* producer writes head, consumer tail */
  void *slot[RING];
  size_t size[RING]; /* fixed per slot */
} ring_t;

static ring_t rings[PAIRS];
static int pc_leak; /* prodcons-leak: the test of the test */
static atomic_int pc_stop;
static _Atomic size_t pc_ops;

static size_t pc_size(uint64_t *s) {
  uint64_t r = rng_next(s) % 1000;
  if (r < 900) return log_uniform(s, 8, 1024);
  if (r < 990) return log_uniform(s, 1025, 64 * 1024);
  if (r < 999) return log_uniform(s, 64 * 1024, MiB);
  return log_uniform(s, MiB + 1, 4 * MiB);
}

static void *producer(void *arg) {
  ring_t *r = arg;
  while (!atomic_load_explicit(&pc_stop, memory_order_relaxed)) {
    size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (h - atomic_load_explicit(&r->tail, memory_order_acquire) == RING) {
      sched_yield();
      continue;
    }
    size_t size = r->size[h % RING];
    unsigned char *p = malloc(size);
    if (!p) {
      fprintf(stderr, "malloc(%zu) failed\n", size);
      exit(2);
    }
    p[0] = (unsigned char)size;
    p[size - 1] = (unsigned char)(size >> 3);
    if (size > 4096) memset(p + 1, 0x5a, size - 2); /* make it resident */
    r->slot[h % RING] = p;
    atomic_store_explicit(&r->head, h + 1, memory_order_release);
  }
  return NULL;
}

static void *consumer(void *arg) {
  ring_t *r = arg;
  size_t n = 0;
  for (;;) {
    size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    /* only from a full ring: the live set stays at RING blocks */
    if (atomic_load_explicit(&r->head, memory_order_acquire) - t < RING) {
      if (atomic_load_explicit(&pc_stop, memory_order_relaxed)) break;
      sched_yield();
      continue;
    }
    unsigned char *p = r->slot[t % RING];
    size_t size = r->size[t % RING];
    if (p[0] != (unsigned char)size ||
        p[size - 1] != (unsigned char)(size >> 3)) {
      fprintf(stderr, "prodcons: block contents changed\n");
      exit(1);
    }
    /* prodcons-leak drops one block in 16, as an allocator would that
     * never reused some of what other threads free: RSS must be seen to
     * grow */
    if (!pc_leak || t % 16) free(p);
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
    if (++n % 1024 == 0)
      atomic_fetch_add_explicit(&pc_ops, 1024, memory_order_relaxed);
  }
  return NULL;
}

static void mode_prodcons(long seconds) {
  enum { WARMUP_MS = 2000, SAMPLE_MS = 100 };
  pthread_t p[PAIRS], c[PAIRS];
  uint64_t seed = 99;
  for (int i = 0; i < PAIRS; i++)
    for (size_t k = 0; k < RING; k++)
      rings[i].size[k] = pc_size(&seed);
  enum { MAX_SAMPLES = 1200 };
  static uint16_t trace[MAX_SAMPLES]; /* MiB */
  for (int i = 0; i < PAIRS; i++) {
    pthread_create(&p[i], NULL, producer, &rings[i]);
    pthread_create(&c[i], NULL, consumer, &rings[i]);
  }
  double t0 = now_ms();
  size_t warm_max = 0, max = 0, last = 0;
  long samples = 0;
  /* the leaking run stops as soon as the growth shows, and may take three
   * times as long to show it on a loaded machine, where fewer blocks go
   * round (seen: 193 -> 230 MiB in 5 s against a limit of 249) */
  double run_ms = (double)seconds * 1000 * (pc_leak ? 3 : 1);
  while (now_ms() - t0 < run_ms &&
         !(pc_leak && max > warm_max + warm_max / 4 + 8 * MiB)) {
    sleep_ms(SAMPLE_MS);
    size_t r = rss();
    if (samples < MAX_SAMPLES) trace[samples] = (uint16_t)(r / MiB);
    if (now_ms() - t0 < WARMUP_MS) {
      if (r > warm_max) warm_max = r;
    } else if (r > max) {
      max = r;
    }
    samples++;
    last = r;
  }
  atomic_store(&pc_stop, 1);
  for (int i = 0; i < PAIRS; i++) {
    pthread_join(p[i], NULL);
    pthread_join(c[i], NULL);
  }
  /* what the rings still hold */
  for (int i = 0; i < PAIRS; i++)
    for (size_t t = rings[i].tail; t != rings[i].head; t++)
      free(rings[i].slot[t % RING]);
  size_t limit = warm_max + warm_max / 4 + 8 * MiB;
  printf("prodcons: %ld s, %zu million blocks; RSS warm-up max %.1f MiB, "
         "max after %.1f MiB over %ld samples, last %.1f MiB (limit %.1f "
         "MiB)\n",
         seconds, atomic_load(&pc_ops) / 1000000, mib(warm_max), mib(max),
         samples, mib(last), mib(limit));
  if (max > limit) {
    printf("prodcons: FAILED: RSS grew with a bounded live set\n");
    failed = 1;
  }
  if (failed || getenv("MEM_TRACE")) { /* RSS (MiB), a sample per 100 ms */
    for (long i = 0; i < samples && i < MAX_SAMPLES; i++)
      printf("%u%c", trace[i], i % 20 == 19 ? '\n' : ' ');
    printf("\n");
  }
}

/* ---- reuse -----------------------------------------------------------------
 * A allocates N MiB of small blocks (medium and large blocks go back to
 * their heap or the OS whoever frees them: the other modes cover them), B
 * frees them all, C allocates N MiB again. With A still alive (`reuse`) or gone
 * (`reuse-exit`), C must reuse what B freed rather than map N more. */
static phase_t reuse_ph[2];
static size_t reuse_total;

static void phase_alloc_small(phase_t *ph, size_t total, uint64_t seed) {
  uint64_t s = seed;
  while (ph->bytes < total && ph->n < ph->cap) {
    size_t size = size_of_kind(&s, 0);
    void *p = malloc(size);
    if (!p) exit(2);
    memset(p, 0x33, size);
    ph->ptr[ph->n++] = p;
    ph->bytes += size;
  }
}

static void *reuse_a(void *arg) {
  (void)arg;
  phase_alloc_small(&reuse_ph[0], reuse_total, 7);
  return NULL;
}
static void *reuse_b(void *arg) {
  (void)arg;
  phase_free_range(&reuse_ph[0], 0, reuse_ph[0].n, 8);
  return NULL;
}
static void *reuse_c(void *arg) {
  (void)arg;
  phase_alloc_small(&reuse_ph[1], reuse_total, 9);
  return NULL;
}

static pthread_barrier_t a_done, a_end;

/* A as a long-lived worker: it does its task, then parks (alive, idle, its
 * heap still owned) until the end of the test. */
static void *reuse_a_parked(void *arg) {
  reuse_a(arg);
  pthread_barrier_wait(&a_done);
  pthread_barrier_wait(&a_end);
  return NULL;
}

static void mode_reuse(size_t total, int a_alive) {
  reuse_total = total;
  phase_init(&reuse_ph[0], total * 2);
  phase_init(&reuse_ph[1], total * 2);
  pthread_barrier_init(&a_done, NULL, 2);
  pthread_barrier_init(&a_end, NULL, 2);
  size_t before = rss();
  pthread_t a, b, c;
  if (a_alive) {
    pthread_create(&a, NULL, reuse_a_parked, NULL);
    pthread_barrier_wait(&a_done);
  } else {
    pthread_create(&a, NULL, reuse_a, NULL);
    pthread_join(a, NULL);
  }
  size_t after_a = rss();
  pthread_create(&b, NULL, reuse_b, NULL);
  pthread_join(b, NULL);
  size_t after_b = rss();
  pthread_create(&c, NULL, reuse_c, NULL);
  pthread_join(c, NULL);
  size_t after_c = rss();
  size_t n = reuse_ph[0].bytes;
  size_t limit = before + n + n / 2 + 16 * MiB;
  const char *what = a_alive ? "reuse" : "reuse-exit";
  printf("%s: N = %.0f MiB; RSS before %.1f, after A %.1f, after B %.1f, "
         "after C %.1f MiB (limit %.1f MiB)\n",
         what, mib(n), mib(before), mib(after_a), mib(after_b), mib(after_c),
         mib(limit));
  if (after_c > limit) {
    printf("%s: FAILED: memory freed by B was not reused by C\n", what);
    failed = 1;
  }
  if (a_alive) {
    pthread_barrier_wait(&a_end);
    pthread_join(a, NULL);
  }
  phase_free_range(&reuse_ph[1], 0, reuse_ph[1].n, 10);
  phase_done(&reuse_ph[0]);
  phase_done(&reuse_ph[1]);
}

/* ---- fork ------------------------------------------------------------------
 */

static void mode_fork(void) {
  /* the parent's purge thread is busy (or just finished) at the fork */
  phase_t ph;
  phase_init(&ph, 64 * MiB);
  phase_alloc(&ph, 64 * MiB, 11);
  phase_free_range(&ph, 0, ph.n, 12);
  phase_done(&ph);
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    phase_t c;
    phase_init(&c, 256 * MiB);
    size_t before = rss();
    phase_alloc(&c, 256 * MiB, 13);
    size_t peak = rss();
    phase_free_range(&c, 0, c.n, 14);
    check_back("fork (child)", before, peak, 0);
    fflush(stdout);
    _exit(failed);
  }
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    printf("fork: FAILED: child status %#x\n", st);
    failed = 1;
  }
  /* and the parent still gives memory back after the fork */
  phase_init(&ph, 256 * MiB);
  size_t before = rss();
  phase_alloc(&ph, 256 * MiB, 15);
  size_t peak = rss();
  phase_free_range(&ph, 0, ph.n, 16);
  check_back("fork (parent)", before, peak, 0);
  phase_done(&ph);
}

/* ---- lazyfree
 * ---------------------------------------------------------------- Run with
 * ALLOT_PURGE_MADV=free: purged memory is handed to the kernel with MADV_FREE,
 * which shows as LazyFree in /proc/self/smaps_rollup (and stays in RSS until
 * the kernel needs it). Then the memory is used again: calloc must still give
 * zeros and blocks must keep what is written to them. */
static size_t lazyfree_bytes(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return SIZE_MAX;
  char line[256];
  size_t kb = SIZE_MAX;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "LazyFree: %zu kB", &kb) == 1) break;
  fclose(f);
  return kb == SIZE_MAX ? SIZE_MAX : kb * 1024;
}

static void mode_lazyfree(size_t total) {
  if (lazyfree_bytes() == SIZE_MAX) {
    printf("lazyfree: skipped: no LazyFree in /proc/self/smaps_rollup\n");
    exit(77);
  }
  phase_t ph;
  phase_init(&ph, total);
  size_t base = lazyfree_bytes();
  phase_alloc(&ph, total, 17);
  size_t peak = rss();
  phase_free_range(&ph, 0, ph.n, 18);
  /* small and medium memory is purged (large mappings are unmapped): at
   * least a quarter of the phase must become lazily freed */
  size_t want = base + total / 4;
  double t0 = now_ms();
  size_t lazy = lazyfree_bytes();
  while (lazy < want && now_ms() - t0 < return_within_ms()) {
    sleep_ms(POLL_MS);
    lazy = lazyfree_bytes();
  }
  printf("lazyfree: RSS at peak %.1f MiB, after the frees %.1f MiB; LazyFree "
         "%.1f MiB after %.0f ms (want >= %.1f MiB)\n",
         mib(peak), mib(rss()), mib(lazy), now_ms() - t0, mib(want));
  if (lazy < want) {
    printf("lazyfree: FAILED: purged memory not given with MADV_FREE\n");
    failed = 1;
  }
  /* reuse: zeroed where asked, intact where written */
  uint64_t s = 19;
  size_t n = 0, bytes = 0;
  for (; n < ph.n && bytes < total; n++) {
    size_t size = size_of_kind(&s, (int)(rng_next(&s) % 16 == 0));
    bytes += size;
    unsigned char *p = calloc(1, size);
    if (!p) exit(2);
    for (size_t k = 0; k < size; k += 61)
      if (p[k]) {
        printf("lazyfree: FAILED: calloc(%zu) byte %zu is %d\n", size, k, p[k]);
        failed = 1;
        break;
      }
    memset(p, 0x77, size);
    ph.ptr[n] = p;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char *p = ph.ptr[i];
    if (p[0] != 0x77) {
      printf("lazyfree: FAILED: a block lost its contents\n");
      failed = 1;
      break;
    }
    free(p);
  }
  phase_done(&ph);
}

/* ---- small ---------------------------------------------------------------
 */

static void mode_small(void) {
  enum { N = 384 }; /* six 64 KiB pages of 1 KiB blocks */
  static void *blocks[N];
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(1000);
    if (blocks[i]) memset(blocks[i], 1, 1000);
  }
  void *medium = malloc(100 * 1024);
  if (medium) memset(medium, 2, 100 * 1024);
  for (int i = 0; i < N; i++)
    free(blocks[i]);
  free(medium);
  double t0 = now_ms();
  int n = threads_in_process();
  while (n == 1 && now_ms() - t0 < 300) {
    sleep_ms(10);
    n = threads_in_process();
  }
  printf("small: %d thread(s) in the 300 ms after freeing 484 KiB\n", n);
  if (n != 1) {
    printf("small: FAILED: a purge thread started for under 1 MiB\n");
    failed = 1;
  }
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *mode = argc > 1 ? argv[1] : "idle";
  size_t total = (size_t)(argc > 2 ? atol(argv[2]) : 1024) * MiB;
  if (!strcmp(mode, "idle"))
    mode_single(total, 0);
  else if (!strcmp(mode, "calls"))
    mode_single(total, 20);
  else if (!strcmp(mode, "xthread"))
    mode_xthread(total, 0, 0);
  else if (!strcmp(mode, "xthread-exit"))
    mode_xthread(total, 1, 0);
  else if (!strcmp(mode, "xthread-small-exit"))
    mode_xthread(argc > 2 ? total : 256 * MiB, 1, 1);
  else if (!strcmp(mode, "trim"))
    mode_trim(total);
  else if (!strcmp(mode, "trim-threads"))
    mode_trim_threads(total);
  else if (!strcmp(mode, "prodcons"))
    mode_prodcons(argc > 2 ? atol(argv[2]) : 30);
  else if (!strcmp(mode, "prodcons-leak"))
    pc_leak = 1, mode_prodcons(argc > 2 ? atol(argv[2]) : 5);
  else if (!strcmp(mode, "reuse"))
    mode_reuse(argc > 2 ? total : 256 * MiB, 1);
  else if (!strcmp(mode, "reuse-exit"))
    mode_reuse(argc > 2 ? total : 256 * MiB, 0);
  else if (!strcmp(mode, "fork"))
    mode_fork();
  else if (!strcmp(mode, "lazyfree"))
    mode_lazyfree(argc > 2 ? total : 256 * MiB);
  else if (!strcmp(mode, "small"))
    mode_small();
  else {
    fprintf(stderr,
            "usage: %s idle|calls|xthread|xthread[-small]-exit|trim|"
            "trim-threads|prodcons[-leak] [s]|reuse|reuse-exit|fork|lazyfree|"
            "small [MiB]\n",
            argv[0]);
    return 2;
  }
  printf("%s: %s\n", mode, failed ? "FAILED" : "ok");
  return failed;
}
