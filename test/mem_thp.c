/* mem_thp.c: transparent huge pages and ALLOT_HUGE_PAGES (off, on, auto).
 *
 *   mem_thp check on|off|auto
 *                          the mappings holding a large block and a few MiB
 *                          of small blocks carry the advice asked for
 *                          (VmFlags hg, nh or neither, in /proc/self/smaps)
 *                          and, with on or off, are or are not backed by
 *                          huge pages (AnonHugePages)
 *   mem_thp bench [MiB] [accesses]
 *                          the measurement of docs/memory.md: allocate MiB
 *                          (default 1024) of 64..512-byte blocks, then read
 *                          and write them in random order; prints the times,
 *                          RSS and huge-page bytes (run it once per setting)
 *
 * check exits 77 (skip) when the kernel has no THP at all. It runs with the
 * option set through the environment by the CTest entry. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The THP policy in force: "always", "madvise", "never", or "" if none. */
static void thp_policy(char *out, size_t n) {
  out[0] = 0;
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f) return;
  char line[128];
  if (fgets(line, sizeof line, f)) {
    char *a = strchr(line, '['), *b = a ? strchr(a, ']') : NULL;
    if (a && b && (size_t)(b - a - 1) < n) {
      memcpy(out, a + 1, (size_t)(b - a - 1));
      out[b - a - 1] = 0;
    }
  }
  fclose(f);
}

/* What /proc/self/smaps says of the mappings that contain any of the
 * addresses given (with n == 0, of every mapping): AnonHugePages bytes, and
 * how many carry the madvise flags hg (MADV_HUGEPAGE) and nh
 * (MADV_NOHUGEPAGE) in VmFlags. */
typedef struct thp_view {
  size_t huge, maps, hg, nh;
} thp_view_t;

static thp_view_t smaps_view(void *const *addr, size_t n) {
  thp_view_t v = {0, 0, 0, 0};
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) return v;
  char line[512];
  int in = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    size_t kb;
    char perms[8];
    /* a mapping's first line: "lo-hi perms offset dev inode [path]" */
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 &&
        strlen(perms) == 4) {
      in = n == 0;
      for (size_t i = 0; i < n && !in; i++)
        in = (uintptr_t)addr[i] >= lo && (uintptr_t)addr[i] < hi;
      v.maps += (size_t)in;
    } else if (in && sscanf(line, "AnonHugePages: %zu kB", &kb) == 1) {
      v.huge += kb * 1024;
    } else if (in && !strncmp(line, "VmFlags:", 8)) {
      v.hg += strstr(line, " hg") != NULL;
      v.nh += strstr(line, " nh") != NULL;
    }
  }
  fclose(f);
  return v;
}

static size_t rss(void) {
  long pages = 0, res = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return 0;
  if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
  fclose(f);
  return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static uint64_t rng(uint64_t *s) {
  uint64_t x = *s += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static int check(const char *want) {
  char pol[32];
  thp_policy(pol, sizeof pol);
  printf("THP policy: %s\n", pol[0] ? pol : "(not available)");
  if (!pol[0]) {
    printf("skipped: the kernel has no transparent huge pages\n");
    return 77;
  }
  int on = !strcmp(want, "on"), off = !strcmp(want, "off");
  /* a large block of 32 MiB, and 16 MiB of small blocks (four segments) */
  size_t big_size = 32 * MiB;
  unsigned char *big = malloc(big_size);
  enum { NSMALL = 16 * 1024 * 1024 / 1024 };
  static void *small[NSMALL];
  for (size_t i = 0; i < NSMALL; i++)
    small[i] = malloc(1000);
  if (!big || !small[NSMALL - 1]) return 2;
  memset(big, 1, big_size);
  for (size_t i = 0; i < NSMALL; i++)
    memset(small[i], 2, 1000);
  void *big_at[1] = {big};
  thp_view_t b = smaps_view(big_at, 1), sm = smaps_view(small, NSMALL);
  printf("ALLOT_HUGE_PAGES=%s: large block: %zu of %zu MiB in huge pages, "
         "%zu mapping(s), hg %zu, nh %zu; small blocks: %zu MiB in huge "
         "pages, %zu mapping(s), hg %zu, nh %zu\n",
         want, b.huge / MiB, big_size / MiB, b.maps, b.hg, b.nh, sm.huge / MiB,
         sm.maps, sm.hg, sm.nh);
  int ok = 1;
  /* the advice itself, whatever the policy makes of it */
  if (on) ok = b.hg == b.maps && sm.hg == sm.maps && !b.nh && !sm.nh;
  if (off) ok = b.nh == b.maps && sm.nh == sm.maps && !b.hg && !sm.hg;
  if (!on && !off) ok = !b.hg && !b.nh && !sm.hg && !sm.nh;
  /* and its effect: on gives huge pages unless the policy is never (at least
   * half: the kernel may fail to find free 2 MiB frames for some), off none */
  if (on && strcmp(pol, "never"))
    ok = ok && b.huge >= big_size / 2 && sm.huge >= 8 * MiB;
  if (off) ok = ok && b.huge == 0 && sm.huge == 0;
  for (size_t i = 0; i < NSMALL; i++)
    free(small[i]);
  free(big);
  printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

static int bench(size_t total, size_t accesses) {
  char pol[32];
  thp_policy(pol, sizeof pol);
  const char *opt = getenv("ALLOT_HUGE_PAGES");
  uint64_t s = 1;
  size_t cap = total / 64 + 1;
  unsigned char **blk = mmap(NULL, cap * sizeof *blk, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (blk == MAP_FAILED) return 2;
  double t0 = now_s();
  size_t n = 0, bytes = 0;
  while (bytes < total && n < cap) {
    size_t size = 64 + (rng(&s) % 8) * 64;
    unsigned char *p = malloc(size);
    if (!p) return 2;
    memset(p, (int)n, size);
    blk[n++] = p;
    bytes += size;
  }
  double t_alloc = now_s() - t0;
  size_t r = rss(), hp = smaps_view(NULL, 0).huge;
  t0 = now_s();
  uint64_t sum = 0;
  for (size_t i = 0; i < accesses; i++) {
    unsigned char *p = blk[rng(&s) % n];
    sum += p[0] + p[63];
    p[32]++;
  }
  double t_access = now_s() - t0;
  t0 = now_s();
  for (size_t i = 0; i < n; i++)
    free(blk[i]);
  double t_free = now_s() - t0;
  printf("policy %s, ALLOT_HUGE_PAGES=%s: %zu blocks, %zu MiB; alloc+write "
         "%.3f s, %zu random accesses %.3f s (%.1f ns each), free %.3f s; "
         "RSS %zu MiB, AnonHugePages %zu MiB (checksum %llu)\n",
         pol, opt ? opt : "(default)", n, bytes / MiB, t_alloc, accesses,
         t_access, t_access * 1e9 / (double)accesses, t_free, r / MiB, hp / MiB,
         (unsigned long long)(sum & 0xff));
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 3 && !strcmp(argv[1], "check")) return check(argv[2]);
  if (argc >= 2 && !strcmp(argv[1], "bench"))
    return bench((size_t)(argc > 2 ? atol(argv[2]) : 1024) * MiB,
                 (size_t)(argc > 3 ? atol(argv[3]) : 20000000));
  fprintf(stderr, "usage: %s check on|off | bench [MiB] [accesses]\n", argv[0]);
  return 2;
}
