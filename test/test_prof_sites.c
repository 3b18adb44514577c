/* test_prof_sites.c: allocation sites of known live sizes, for `allot prof`
 * (test/test_prof.py).
 *
 * At the peak: site_a holds 30 MiB (256-byte blocks; the first 12 MiB
 * allocated alternately with site_a2's, the same class, which a sampler that
 * always took the malloc finding the list empty would never see), site_a2
 * 12 MiB (256-byte blocks), site_b 10 MiB (40 KiB blocks), site_e 8 MiB (1 KiB
 * blocks, made by another thread), site_c 2 MiB (one large block). site_d
 * churns: 300 MiB of 16 B - 32 KiB blocks, each freed at once. site_a's
 * blocks are freed before exit, the others stay live.
 *
 * `misc` checks what a sampled block must keep doing when most blocks are
 * sampled (run with a tiny ALLOT_PROF_RATE): usable sizes, realloc,
 * free_sized with the size asked for, alignment, frees by another thread,
 * and a heap that allot_check finds consistent. It frees every block it
 * allocated, so the profile must end with nothing live: a sampled block
 * whose free the profiler missed would stay there.
 *
 *   test_prof_sites [STATUS]     exits with STATUS (default 0)
 *   test_prof_sites misc         exits 0 if every check held */
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
#define MIB ((size_t)1 << 20)

#define N_A (30 * MIB / 256)
#define N_A2 (12 * MIB / 256)
#define N_B (10 * MIB / (40 << 10))
#define N_E (8 * MIB / 1024)

static void *a[N_A], *a2[N_A2], *bb[N_B], *e[N_E], *c;

static void *got(void *p, size_t n) {
  if (!p) {
    fprintf(stderr, "test_prof_sites: out of memory\n");
    exit(1);
  }
  memset(p, 1, n); /* resident, and no tail call: each site keeps a frame */
  return p;
}

static NOINLINE void *site_a(void) {
  return got(malloc(256), 256);
}
static NOINLINE void *site_a2(void) {
  return got(malloc(256), 256);
}
static NOINLINE void *site_b(void) {
  return got(malloc(40 << 10), 40 << 10);
}
static NOINLINE void *site_c(void) {
  return got(malloc(2 * MIB), 2 * MIB);
}
static NOINLINE void *site_e(void) {
  return got(malloc(1024), 1024);
}

static uint64_t rng = 88172645463325252ull;
static NOINLINE void site_d(size_t total) {
  for (size_t done = 0; done < total;) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t n = 16 + (size_t)(rng % (32 << 10));
    void *p = got(malloc(n), 16);
    free(p);
    done += n;
  }
}

static void *thread_e(void *arg) {
  for (size_t i = 0; i < N_E; i++)
    e[i] = site_e();
  return arg;
}

/* Blocks allocated by main and freed by another thread, while main goes on
 * freeing and allocating into the same pages. */
#define XN 20000
static void *xblocks[XN];
static void *free_half(void *arg) {
  for (size_t i = 0; i < XN; i += 2)
    free(xblocks[i]);
  return arg;
}

static int fail(const char *what, size_t n) {
  fprintf(stderr, "test_prof_sites misc: %s (size %zu)\n", what, n);
  return 1;
}

static int misc(void) {
  /* C23's free_sized: allot has it, glibc 2.36 does not */
  void (*free_sized)(void *, size_t) =
      (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
  if (!free_sized) return fail("no free_sized (not running on allot?)", 0);
  /* a ring of live blocks, so that pages fill and the slow path refills */
  static unsigned char *ring[4096];
  static size_t ring_n[4096];
  for (size_t i = 0; i < 200000 + 4096; i++) {
    size_t slot = i % 4096;
    if (ring[slot]) free_sized(ring[slot], ring_n[slot]);
    ring[slot] = NULL;
    if (i >= 200000) continue;
    size_t n = 1 + (i * 7919) % 3000;
    unsigned char *p = malloc(n);
    if (!p || malloc_usable_size(p) < n) return fail("usable size", n);
    memset(p, (int)(i & 255), n);
    if (i % 3 == 0) {
      size_t m = i % 2 ? n * 5 + 9000 : n / 2 + 1; /* grow to medium, shrink */
      unsigned char *q = realloc(p, m);
      if (!q || malloc_usable_size(q) < m) return fail("realloc", m);
      for (size_t k = 0; k < (m < n ? m : n); k++)
        if (q[k] != (unsigned char)(i & 255)) return fail("realloc copy", m);
      p = q;
      n = m;
    }
    ring[slot] = p;
    ring_n[slot] = n;
  }
  for (size_t align = 16; align <= 8192; align *= 2)
    for (size_t k = 1; k <= 3; k++)
      for (int rep = 0; rep < 200; rep++) {
        void *p = aligned_alloc(align, align * k);
        if (!p || (uintptr_t)p % align) return fail("alignment", align);
        free(p);
      }
  for (size_t i = 0; i < XN; i++)
    xblocks[i] = got(malloc(16 + (i * 40503) % 2000), 16);
  pthread_t t;
  if (pthread_create(&t, NULL, free_half, NULL))
    return fail("pthread_create", 0);
  for (size_t i = 1; i < XN; i += 2) {
    free(xblocks[i]);
    xblocks[i] = got(malloc(16 + (i * 7) % 500), 16);
  }
  if (pthread_join(t, NULL)) return fail("pthread_join", 0);
  for (size_t i = 1; i < XN; i += 2)
    free(xblocks[i]);
  int (*check)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "allot_check");
  if (!check || check() != 0) return fail("allot_check", 0);
  return 0;
}

/* A sampled block freed twice (run with every block sampled): the second
 * free must abort. The first free drops the sample (a small one's page
 * counts its samples, and its frees go past free's fast path while it has
 * any) and frees the block. Blocks of a page are counted (and sampled) when
 * a refill hands them out, so the blocks are held, not freed one by one. */
static void *held[1000];
static int double_free(const char *what) {
  size_t n = !strcmp(what, "small") ? 100 : 100 << 10;
  for (size_t i = 0; i < sizeof held / sizeof *held; i++)
    held[i] = got(malloc(n), n);
  free(held[0]);
  free(held[0]);
  return 0; /* not reached */
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "misc")) return misc();
  if (argc > 2 && !strcmp(argv[1], "double")) return double_free(argv[2]);
  site_d(100 * MIB);
  for (size_t i = 0; i < N_A2; i++) {
    a[i] = site_a();
    a2[i] = site_a2();
  }
  site_d(100 * MIB);
  for (size_t i = N_A2; i < N_A; i++)
    a[i] = site_a();
  for (size_t i = 0; i < N_B; i++)
    bb[i] = site_b();
  pthread_t t;
  if (pthread_create(&t, NULL, thread_e, NULL) || pthread_join(t, NULL))
    return 1;
  site_d(100 * MIB);
  c = site_c();
  /* the peak: 62 MiB */
  for (size_t i = 0; i < N_A; i++)
    free(a[i]);
  return argc > 1 ? atoi(argv[1]) : 0;
}
