/* test_api_fixed.c: heaps in a caller's buffer (allot_fixed_*), prefixed API.
 *
 * For buffers from 1 KiB to 1 GiB (misaligned on purpose; 1 GiB and 256 MiB
 * only where they can be mapped): creation works from allot_fixed_min_size()
 * up, which is at most 1 KiB, and leaves at least 3/4 of a 4 KiB buffer to
 * blocks; a random mix of malloc, memalign, calloc, realloc and free, with
 * contents checked, the heap checked and its statistics compared with what
 * the test holds; NULL only when the request is larger than what the heap
 * promised it could serve; filling until NULL gives NULL with errno ENOMEM
 * and a sound heap, then everything freed gives the whole buffer back; the
 * walk tiles the region; and no call reaches the OS. Misuse (double free, a
 * foreign pointer) aborts with one line.
 *
 * Then the time of malloc and free, in CPU ticks (TSC on x86-64), on a
 * fragmented buffer: printed, never asserted. `test_api_fixed --timing` runs
 * the longer measurement used for docs/api.md. */
#include "test_api_common.h"

#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define MAXLIVE 4096

typedef struct live {
  unsigned char *p;
  size_t size;
  unsigned char tag;
} live_t;

static live_t live[MAXLIVE];
static size_t nlive;

/* The first and (for blocks of 32 bytes or more) the last 16 bytes. */
static void stamp(live_t *l) {
  size_t n = l->size < 16 ? l->size : 16;
  memset(l->p, l->tag, n);
  if (l->size >= 32) memset(l->p + l->size - 16, l->tag ^ 0xff, 16);
}
static int head_stamped(const live_t *l, size_t keep) {
  size_t n = keep < 16 ? keep : 16;
  for (size_t i = 0; i < n; i++)
    if (l->p[i] != l->tag) return 0;
  return 1;
}
static int stamped(const live_t *l) {
  if (!head_stamped(l, l->size)) return 0;
  if (l->size >= 32)
    for (size_t i = l->size - 16; i < l->size; i++)
      if (l->p[i] != (unsigned char)(l->tag ^ 0xff)) return 0;
  return 1;
}

typedef struct walk_tally {
  uint8_t *region, *next;
  size_t size, chunks, used, bad;
} walk_tally_t;

static int walk_visit(const allot_walk_info_t *w, void *arg) {
  walk_tally_t *t = arg;
  if (w->type == ALLOT_WALK_REGION) {
    t->region = w->addr;
    t->size = w->size;
    t->next = (uint8_t *)w->addr + 16;
    return 0;
  }
  if ((uint8_t *)w->addr != t->next + 16 || w->kind != ALLOT_KIND_FIXED)
    t->bad++;
  t->next = (uint8_t *)w->addr + w->size;
  t->chunks++;
  t->used += w->in_use;
  return 0;
}

static size_t os_maps(void) {
  allot_stats_t st;
  allot_stats_get(&st);
  return st.os_maps + st.os_unmaps + st.os_purges + st.os_remaps;
}

static void consistent(allot_fixed_t *f, const char *when, size_t bufsize) {
  char msg[256];
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 0, "%zu-byte buffer, %s: %s",
        bufsize, when, msg);
  allot_fixed_stats_t st;
  allot_fixed_stats(f, &st);
  size_t bytes = 0;
  for (size_t i = 0; i < nlive; i++)
    bytes += allot_fixed_usable_size(f, live[i].p);
  CHECK(st.blocks == nlive && st.in_use == bytes && st.in_use_peak >= bytes,
        "%zu-byte buffer, %s: stats %zu blocks %zu bytes, held %zu / %zu",
        bufsize, when, st.blocks, st.in_use, nlive, bytes);
  walk_tally_t t = {0};
  CHECK(allot_fixed_walk(f, walk_visit, &t) == 0 && t.bad == 0 &&
            t.used == nlive && t.next == t.region + t.size - 16,
        "%zu-byte buffer, %s: walk tiles badly (%zu bad, %zu used)", bufsize,
        when, t.bad, t.used);
}

static size_t pick_size(size_t limit) {
  size_t r = rnd_below(100), s;
  if (r < 60)
    s = 1 + rnd_below(256);
  else if (r < 90)
    s = 1 + rnd_below(8192);
  else
    s = 1 + rnd_below(limit);
  return s < limit ? s : limit;
}

static void free_one(allot_fixed_t *f, size_t k) {
  CHECK(stamped(&live[k]), "block %p (%zu bytes) overwritten", live[k].p,
        live[k].size);
  allot_fixed_free(f, live[k].p);
  live[k] = live[--nlive];
}

static void exercise(size_t size, size_t misalign) {
  size_t maps = os_maps();
  unsigned char *raw = mmap(NULL, size + 64, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED && size >= (256u << 20)) {
    printf("%zu-byte buffer: cannot be mapped here, skipped\n", size);
    return;
  }
  CHECK(raw != MAP_FAILED, "mmap %zu", size);
  if (raw == MAP_FAILED) return;
  maps = os_maps();
  allot_fixed_t *f = allot_fixed_create(raw + misalign, size);
  if (size < allot_fixed_min_size()) {
    CHECK(f == NULL && errno == EINVAL, "%zu bytes is below the minimum", size);
    munmap(raw, size + 64);
    return;
  }
  CHECK(f != NULL, "create in %zu bytes (minimum %zu)", size,
        allot_fixed_min_size());
  if (!f) return;
  {
    allot_fixed_stats_t st;
    allot_fixed_stats(f, &st);
    /* the bin table grows with the buffer: a 4 KiB heap keeps 3/4 of it */
    CHECK(size < 4096 || size > 8192 || st.free >= size * 3 / 4,
          "%zu-byte buffer: only %zu bytes free (overhead %zu)", size, st.free,
          st.overhead);
    CHECK(st.free + st.overhead == size && st.in_use == 0,
          "%zu-byte buffer: free %zu + overhead %zu", size, st.free,
          st.overhead);
  }
  nlive = 0;
  size_t limit = size / 4, ops = size >= (16 << 20) ? 6000 : 20000;
  for (size_t op = 0; op < ops; op++) {
    size_t r = rnd_below(100);
    if (nlive && (nlive == MAXLIVE || r < 40)) {
      free_one(f, rnd_below(nlive));
    } else if (nlive && r < 50) { /* realloc, in place or moving */
      live_t *l = &live[rnd_below(nlive)];
      size_t n = pick_size(limit);
      unsigned char *q = allot_fixed_realloc(f, l->p, n);
      if (q) {
        size_t keep = n < l->size ? n : l->size;
        l->p = q;
        CHECK(head_stamped(l, keep), "realloc lost contents");
        l->size = n;
        stamp(l);
      }
    } else {
      allot_fixed_stats_t st;
      allot_fixed_stats(f, &st);
      size_t n = pick_size(limit), align = 0;
      unsigned char *p;
      if (r < 55) {
        align = (size_t)32 << rnd_below(8);
        p = allot_fixed_memalign(f, align, n);
        CHECK(!p || ((uintptr_t)p & (align - 1)) == 0, "alignment %zu", align);
      } else if (r < 60) {
        p = allot_fixed_calloc(f, 1, n);
        for (size_t i = 0; p && i < n; i++)
          if (p[i]) {
            CHECK(0, "calloc not zeroed");
            break;
          }
      } else {
        p = allot_fixed_malloc(f, n);
        CHECK(p || n > st.largest_free,
              "malloc(%zu) failed with %zu promised free", n, st.largest_free);
      }
      if (!p) {
        CHECK(errno == ENOMEM, "errno %d on exhaustion", errno);
        continue;
      }
      CHECK(allot_fixed_usable_size(f, p) >= n, "usable size");
      CHECK(p >= raw && p + n <= raw + misalign + size, "block outside buffer");
      live[nlive] = (live_t){p, n, (unsigned char)(op * 7 + 1)};
      stamp(&live[nlive++]);
    }
    if (op % 2000 == 0) consistent(f, "during the mix", size);
  }
  consistent(f, "after the mix", size);
  /* exhaustion: small blocks until NULL, then all of it back */
  allot_fixed_stats_t st;
  size_t failures_before;
  allot_fixed_stats(f, &st);
  failures_before = st.failures;
  while (nlive < MAXLIVE) {
    errno = 0;
    unsigned char *p = allot_fixed_malloc(f, 64 + size / 64);
    if (!p) {
      CHECK(errno == ENOMEM, "%zu-byte buffer exhausted: errno %d", size,
            errno);
      break;
    }
    live[nlive] = (live_t){p, 64 + size / 64, (unsigned char)nlive};
    stamp(&live[nlive++]);
  }
  allot_fixed_stats(f, &st);
  CHECK(nlive == MAXLIVE || st.failures == failures_before + 1,
        "exhaustion returned NULL once");
  consistent(f, "exhausted", size);
  /* and then every smaller request too, until even 1 byte fails */
  for (size_t n = 64 + size / 64; n && nlive < MAXLIVE; n /= 2) {
    unsigned char *p;
    while (nlive < MAXLIVE && (p = allot_fixed_malloc(f, n))) {
      live[nlive] = (live_t){p, n, (unsigned char)nlive};
      stamp(&live[nlive++]);
    }
  }
  if (nlive < MAXLIVE) {
    errno = 0;
    CHECK(allot_fixed_malloc(f, 1) == NULL && errno == ENOMEM &&
              allot_fixed_calloc(f, 1, 1) == NULL &&
              allot_fixed_memalign(f, 64, 1) == NULL &&
              allot_fixed_realloc(f, live[0].p, live[0].size + 4096) == NULL,
          "%zu-byte buffer full: a 1-byte request succeeded", size);
    allot_fixed_stats(f, &st);
    CHECK(st.largest_free == 0, "%zu-byte buffer full: %zu still free", size,
          st.largest_free);
  }
  consistent(f, "full", size);
  while (nlive)
    free_one(f, nlive - 1);
  consistent(f, "emptied", size);
  allot_fixed_stats(f, &st);
  /* bins are 1/16 apart (exact below 256 bytes): within 1/8 of it all */
  CHECK(st.in_use == 0 && st.free + st.overhead == size &&
            st.largest_free + 16 >= st.free / 16 * 14,
        "%zu-byte buffer emptied: free %zu, overhead %zu, largest %zu", size,
        st.free, st.overhead, st.largest_free);
  void *all = allot_fixed_malloc(f, st.largest_free);
  CHECK(all != NULL, "the largest free block (%zu) of %zu", st.largest_free,
        size);
  allot_fixed_free(f, all);
  CHECK(os_maps() == maps, "%zu-byte buffer: the heap called the OS", size);
  munmap(raw, size + 64);
}

/* ---- misuse ------------------------------------------------------------- */

static char misuse_buf[1 << 16];

static void double_free(void *arg) {
  (void)arg;
  allot_fixed_t *f = allot_fixed_create(misuse_buf, sizeof misuse_buf);
  void *p = allot_fixed_malloc(f, 100);
  void *q = allot_fixed_malloc(f, 100);
  allot_fixed_free(f, p);
  allot_fixed_free(f, p);
  (void)q;
}

static void foreign(void *arg) {
  (void)arg;
  allot_fixed_t *f = allot_fixed_create(misuse_buf, sizeof misuse_buf);
  static char elsewhere[64];
  allot_fixed_free(f, elsewhere + 32);
}

static void test_misuse(void) {
  char err[1024];
  int st = in_child(double_free, NULL, err, sizeof err);
  CHECK(aborted(st) && strstr(err, "allot: fixed_free(): double free at 0x"),
        "double free: %s", err);
  st = in_child(foreign, NULL, err, sizeof err);
  CHECK(aborted(st) &&
            strstr(err, "allot: fixed_free(): pointer not from this heap at"),
        "foreign pointer: %s", err);
  CHECK(allot_fixed_create(NULL, 1 << 20) == NULL && errno == EINVAL,
        "NULL buffer");
}

/* ---- timing ----------------------------------------------------------------
 */

static inline uint64_t ticks(void) {
#if defined(__x86_64__)
  uint32_t lo, hi;
  __asm__ volatile("lfence\n\trdtsc" : "=a"(lo), "=d"(hi)::"memory");
  return (uint64_t)hi << 32 | lo;
#elif defined(__aarch64__)
  uint64_t v;
  __asm__ volatile("isb\n\tmrs %0, cntvct_el0" : "=r"(v)::"memory");
  return v;
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

static int by_value(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *what, uint64_t *t, size_t n) {
  qsort(t, n, sizeof *t, by_value);
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += t[i];
  printf("  %-6s mean %5llu  p50 %5llu  p99 %5llu  p99.9 %5llu  p99.99 %6llu  "
         "max %8llu\n",
         what, (unsigned long long)(sum / n), (unsigned long long)t[n / 2],
         (unsigned long long)t[n * 99 / 100],
         (unsigned long long)t[n * 999 / 1000],
         (unsigned long long)t[n * 9999 / 10000], (unsigned long long)t[n - 1]);
}

/* Fill the buffer with blocks of sizes lo..hi, free half of them at random
 * (fragmentation), then time ops pairs of free (a random live block) and
 * malloc (a random size). */
static void timing(size_t size, size_t lo, size_t hi, size_t ops) {
  unsigned char *raw = mmap(NULL, size, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return;
  memset(raw, 0, size); /* resident: measure the heap, not page faults */
  allot_fixed_t *f = allot_fixed_create(raw, size);
  size_t cap = size / lo + 1;
  void **slot = mmap(NULL, cap * sizeof *slot, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t *tm = mmap(NULL, ops * sizeof *tm, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t *tf = mmap(NULL, ops * sizeof *tf, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  size_t n = 0;
  for (int misses = 0; misses < 64 && n < cap;) {
    void *p = allot_fixed_malloc(f, lo + rnd_below(hi - lo + 1));
    if (p)
      slot[n++] = p;
    else
      misses++;
  }
  for (size_t i = 0; i < n; i++) { /* free a random half */
    size_t k = i + rnd_below(n - i);
    void *t = slot[i];
    slot[i] = slot[k];
    slot[k] = t;
  }
  for (size_t keep = n / 2; n > keep;)
    allot_fixed_free(f, slot[--n]);
  size_t failed = 0;
  for (size_t i = 0; i < ops; i++) {
    size_t k = rnd_below(n), want = lo + rnd_below(hi - lo + 1);
    void *victim = slot[k];
    uint64_t t0 = ticks();
    allot_fixed_free(f, victim);
    uint64_t t1 = ticks();
    void *p = allot_fixed_malloc(f, want);
    uint64_t t2 = ticks();
    tf[i] = t1 - t0;
    tm[i] = t2 - t1;
    if (p)
      slot[k] = p;
    else {
      slot[k] = slot[--n];
      failed++;
    }
  }
  allot_fixed_stats_t st;
  allot_fixed_stats(f, &st);
  printf("%zu %s buffer, %zu..%zu-byte blocks, %zu live (%zu%% of the "
         "buffer in use), %zu pairs, %zu malloc failures:\n",
         size >= (1u << 20) ? size >> 20 : size >> 10,
         size >= (1u << 20) ? "MiB" : "KiB", lo, hi, n, st.in_use * 100 / size,
         ops, failed);
  report("malloc", tm, ops);
  report("free", tf, ops);
  char msg[128];
  CHECK(allot_fixed_check(f, msg, sizeof msg) == 0, "after timing: %s", msg);
  munmap(tf, ops * sizeof *tf);
  munmap(tm, ops * sizeof *tm);
  munmap(slot, cap * sizeof *slot);
  munmap(raw, size);
}

int main(int argc, char **argv) {
  int long_timing = argc > 1 && strcmp(argv[1], "--timing") == 0;
  if (!long_timing) {
    CHECK(allot_fixed_min_size() <= 1024, "minimum buffer %zu bytes",
          allot_fixed_min_size());
    static const size_t sizes[] = {
        256,     1024,     1500,     2048,      4096,
        6144,    8192,     16384,    65536,     262144,
        1 << 20, 16 << 20, 64 << 20, 256 << 20, (size_t)1 << 30};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
      exercise(sizes[i], i % 3 == 1 ? 3 : 0);
    exercise(allot_fixed_min_size(), 0);
    exercise(allot_fixed_min_size(), 15);
    test_misuse();
  }
  printf("ticks per call (%s):\n",
#if defined(__x86_64__)
         "TSC"
#elif defined(__aarch64__)
         "CNTVCT"
#else
         "ns"
#endif
  );
  size_t ops = long_timing ? 2000000 : 200000;
  timing(64 << 20, 16, 4096, ops);
  timing(4 << 10, 16, 256, ops / 4);
  if (long_timing) {
    timing(64 << 10, 16, 2048, ops);
    timing(1 << 20, 16, 512, ops);
    timing(256 << 20, 16, 65536, ops);
    timing((size_t)1 << 30, 4096, 1 << 20, ops / 4);
  }
  return finish("test_api_fixed");
}
