/* soak.c: the long-running workload behind scripts/soak.sh (hours, outside
 * CI; CTest runs it for a few seconds so it keeps working).
 *
 * THREADS workers allocate, check and free through the standard names
 * (linked with liballot.so) in cycles: a phase that grows the live set to
 * about MAX_LIVE, a phase that shrinks it to a tenth, steady random churn in
 * between, blocks handed between threads, and now and then a worker exits
 * and a new one takes its place (heap abandonment and reuse). Every block
 * carries a pattern checked before it is freed. Every interval the main
 * thread writes one log line:
 *
 *   time_s ops live_MiB rss_MiB vsize_MiB in_use_MiB committed_MiB
 *   reserved_MiB check_failures pattern_failures
 *
 * in_use, committed and reserved come from allot_stats_get(); every worker
 * runs allot_check() on its own pages each cycle and the main thread runs it
 * on the shared structures each interval; any inconsistency is counted and
 * its message logged. Resident memory is sampled all along: the lowest RSS
 * of the last third of the run must stay within 1.5x + 32 MiB of the lowest
 * of the first third (runs of a minute or more), or the run fails as a
 * leak.
 *
 *   hostile_soak <seconds> [interval_s] [threads] [max_live_MiB] */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "allot.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define MAXT 32
#define SLOTS 8192
#define MAILBOX 1024

typedef struct {
  unsigned char *p;
  size_t size;
  uint32_t tag;
} blk_t;

static int nthreads = 4;
static size_t max_live = 256 * MIB;
static atomic_int stop;
static atomic_long ops, check_failures, pattern_failures;
static _Atomic size_t live_bytes;
static pthread_mutex_t mail_lock = PTHREAD_MUTEX_INITIALIZER;
static blk_t mail[MAILBOX];
static int mail_n;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long status_kib(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  size_t n = strlen(key);
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, key, n) == 0 && line[n] == ':') {
      v = atol(line + n + 1);
      break;
    }
  if (f) fclose(f);
  return v;
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void stamp(blk_t *b) {
  size_t n = b->size;
  for (size_t i = 0; i < n && i < 48; i++)
    b->p[i] = (unsigned char)(b->tag + i);
  for (size_t i = 48; i < n; i += 4096)
    b->p[i] = (unsigned char)(b->tag ^ i);
  if (n > 48) b->p[n - 1] = (unsigned char)(b->tag * 3);
}

static void check_free(blk_t *b) {
  size_t n = b->size;
  int bad = 0;
  for (size_t i = 0; i < n && i < 48; i++)
    bad |= b->p[i] != (unsigned char)(b->tag + i);
  for (size_t i = 48; i < n - 1 && n > 1; i += 4096)
    bad |= b->p[i] != (unsigned char)(b->tag ^ i);
  if (n > 48) bad |= b->p[n - 1] != (unsigned char)(b->tag * 3);
  if (bad && atomic_fetch_add(&pattern_failures, 1) < 10)
    fprintf(stderr, "soak: FAILED: block %p (%zu bytes) corrupted\n",
            (void *)b->p, n);
  atomic_fetch_sub(&live_bytes, n);
  free(b->p);
  b->p = NULL;
}

static size_t pick_size(uint64_t *s) {
  uint64_t r = rnd(s) % 1000;
  if (r < 600) return 1 + rnd(s) % 256;
  if (r < 850) return 256 + rnd(s) % (8 * KIB);
  if (r < 990) return 8 * KIB + rnd(s) % (256 * KIB);
  return MIB + rnd(s) % (4 * MIB);
}

static void run_check(const char *who) {
  char report[256] = "";
  if (allot_check_report(report, sizeof report) != 0) {
    if (atomic_fetch_add(&check_failures, 1) < 10)
      fprintf(stderr, "soak: FAILED: allot_check (%s): %s\n", who, report);
  }
}

typedef struct {
  int id;
  long cycles; /* then exit, and a new worker takes over */
} wargs_t;

static void *worker(void *arg) {
  wargs_t *w = arg;
  uint64_t s =
      0x9E3779B97F4A7C15ull * (uint64_t)(w->id + 1) ^ (uint64_t)time(NULL);
  blk_t *slot = calloc(SLOTS, sizeof *slot);
  uint32_t tag = (uint32_t)w->id << 24;
  size_t share = max_live / (size_t)nthreads;
  size_t mine = 0;
  for (long c = 0; c < w->cycles && !atomic_load(&stop); c++) {
    /* grow to the share, churn, shrink to a tenth */
    for (int phase = 0; phase < 3 && !atomic_load(&stop); phase++) {
      long steps = phase == 1 ? 20000 : 200000;
      for (long k = 0; k < steps && !atomic_load(&stop); k++) {
        blk_t *b = &slot[rnd(&s) % SLOTS];
        int want_more = phase == 0   ? mine < share
                        : phase == 1 ? rnd(&s) & 1
                                     : 0;
        if (b->p && (!want_more || rnd(&s) % 4 == 0)) {
          if (rnd(&s) % 8 == 0) { /* hand it to another thread */
            pthread_mutex_lock(&mail_lock);
            int ok = mail_n < MAILBOX;
            if (ok) mail[mail_n++] = *b;
            pthread_mutex_unlock(&mail_lock);
            if (ok) {
              mine -= b->size;
              b->p = NULL;
              continue;
            }
          }
          mine -= b->size;
          check_free(b);
        } else if (!b->p && want_more) {
          size_t size = pick_size(&s);
          if (mine + size > share) size = 1 + size % 4096;
          b->p = rnd(&s) % 16 ? malloc(size) : calloc(1, size);
          if (!b->p) {
            if (atomic_fetch_add(&pattern_failures, 1) < 10)
              fprintf(stderr, "soak: FAILED: malloc(%zu) returned NULL\n",
                      size);
            continue;
          }
          b->size = size;
          b->tag = tag++;
          stamp(b);
          mine += size;
          atomic_fetch_add(&live_bytes, size);
        } else if (b->p && rnd(&s) % 16 == 0) {
          size_t size = pick_size(&s);
          if (mine + size > share + b->size) size = 1 + size % (b->size + 1);
          unsigned char *q = realloc(b->p, size);
          if (!q) continue;
          /* the first 48 bytes survive any realloc of at least 48 */
          size_t keep = size < 48 ? size : 48;
          for (size_t i = 0; i < keep && i < b->size; i++)
            if (q[i] != (unsigned char)(b->tag + i)) {
              if (atomic_fetch_add(&pattern_failures, 1) < 10)
                fprintf(stderr, "soak: FAILED: realloc lost data\n");
              break;
            }
          atomic_fetch_add(&live_bytes, size);
          atomic_fetch_sub(&live_bytes, b->size);
          mine += size;
          mine -= b->size;
          b->p = q;
          b->size = size;
          stamp(b);
        }
        if ((k & 255) == 0) {
          blk_t got[16];
          int n = 0;
          pthread_mutex_lock(&mail_lock);
          while (n < 16 && mail_n > 0)
            got[n++] = mail[--mail_n];
          /* handed blocks count as the receiver's until freed */
          pthread_mutex_unlock(&mail_lock);
          for (int i = 0; i < n; i++)
            check_free(&got[i]);
        }
        atomic_fetch_add_explicit(&ops, 1, memory_order_relaxed);
      }
      if (phase == 2) {
        /* the shrink ends: free most of what is left, a low point */
        for (int i = 0; i < SLOTS; i++)
          if (slot[i].p && rnd(&s) % 10) {
            mine -= slot[i].size;
            check_free(&slot[i]);
          }
        malloc_trim(0);
      }
    }
    run_check("worker");
  }
  for (int i = 0; i < SLOTS; i++)
    if (slot[i].p) check_free(&slot[i]);
  free(slot);
  return NULL;
}

int main(int argc, char **argv) {
  double duration = argc > 1 ? atof(argv[1]) : 10;
  double interval = argc > 2 ? atof(argv[2]) : 10;
  if (argc > 3) nthreads = atoi(argv[3]);
  if (argc > 4) max_live = (size_t)atol(argv[4]) * MIB;
  if (nthreads < 1 || nthreads > MAXT) nthreads = 4;
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("# soak: %.0f s, %d threads, live set up to %zu MiB, allot %d\n",
         duration, nthreads, max_live >> 20, allot_version());
  printf("# time_s ops live_MiB rss_MiB vsize_MiB in_use_MiB committed_MiB "
         "reserved_MiB check_failures pattern_failures\n");
  pthread_t t[MAXT];
  wargs_t args[MAXT];
  uint64_t s = (uint64_t)time(NULL) | 1;
  for (int i = 0; i < nthreads; i++) {
    args[i] = (wargs_t){i, 1 + (long)(rnd(&s) % 4)};
    pthread_create(&t[i], NULL, worker, &args[i]);
  }
  double start = now_s(), next = start + interval;
  int spawned = nthreads;
  long min_first = -1, min_last = -1; /* lowest RSS (KiB) in the first and
                                         last thirds of the run */
  int failed = 0;
  while (now_s() - start < duration) {
    usleep(50 * 1000);
    /* a worker that finished its cycles is replaced by a new one */
    for (int i = 0; i < nthreads; i++) {
      if (pthread_tryjoin_np(t[i], NULL) == 0) {
        args[i] = (wargs_t){spawned++ % 256, 1 + (long)(rnd(&s) % 4)};
        pthread_create(&t[i], NULL, worker, &args[i]);
      }
    }
    double at = now_s() - start;
    long rss = status_kib("VmRSS");
    if (at < duration / 3 && (min_first < 0 || rss < min_first))
      min_first = rss;
    if (at > duration * 2 / 3 && (min_last < 0 || rss < min_last))
      min_last = rss;
    if (now_s() >= next) {
      next += interval;
      run_check("main");
      allot_stats_t st;
      memset(&st, 0, sizeof st);
      allot_stats_get(&st);
      printf("%.0f %ld %.1f %.1f %.1f %.1f %.1f %.1f %ld %ld\n",
             now_s() - start, atomic_load(&ops),
             (double)atomic_load(&live_bytes) / MIB,
             (double)status_kib("VmRSS") / 1024,
             (double)status_kib("VmSize") / 1024, (double)st.in_use / MIB,
             (double)st.committed / MIB, (double)st.reserved / MIB,
             atomic_load(&check_failures), atomic_load(&pattern_failures));
      if (atomic_load(&check_failures) || atomic_load(&pattern_failures)) {
        failed = 1;
        break;
      }
    }
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < nthreads; i++)
    pthread_join(t[i], NULL);
  pthread_mutex_lock(&mail_lock);
  for (int i = 0; i < mail_n; i++)
    check_free(&mail[i]);
  mail_n = 0;
  pthread_mutex_unlock(&mail_lock);
  malloc_trim(0);
  run_check("main, at the end");
  printf("# lowest RSS: %ld KiB in the first third, %ld KiB in the last; "
         "end RSS %ld KiB; %ld ops\n",
         min_first, min_last, status_kib("VmRSS"), atomic_load(&ops));
  if (duration >= 60 && min_first > 0 &&
      min_last > min_first + min_first / 2 + 32 * 1024) {
    printf("# FAILED: resident memory keeps growing (lowest %ld KiB early, "
           "%ld KiB late)\n",
           min_first, min_last);
    failed = 1;
  }
  if (atomic_load(&check_failures) || atomic_load(&pattern_failures))
    failed = 1;
  printf("# %s\n", failed ? "FAILED" : "passed");
  return failed;
}
