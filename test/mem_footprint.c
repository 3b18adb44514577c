/* mem_footprint.c: the fixed footprint liballot.so adds to a small program.
 *
 * Run with liballot.so preloaded (test/memory.cmake). liballot.so's code is
 * laid out in tiers (cmake/hot-functions.txt), each a mapping of its own
 * once the IFUNC resolver has split them (os_code_tiers, src/os.c), and the
 * kernel maps a file's pages by the 64 KiB window around a fault, clamped to
 * the mapping. After the calls a program makes, this reads /proc/self/smaps:
 *   - `mem_footprint`: a mix of the calls a default-mode program makes
 *     (small, medium and aligned blocks, realloc, calloc, a second thread
 *     that frees the first one's blocks, then two threads at once on one
 *     CPU, the third taking a heap while more threads hold heaps than the
 *     process has CPUs: heap_wait_exiting): nothing of the cold code (the
 *     last tier's mapping) is resident; a function that runs but is
 *     missing from cmake/hot-functions.txt lands there and fails this;
 *   - `mem_footprint small`: what a small single-threaded program does
 *     (small blocks, calloc, stdio): only the core tier (and the resolver's
 *     page) resident, none of the later tiers: 24-32 kB of code where the
 *     whole default mode's 64 kB were before;
 *   - `mem_footprint threads`: threads that take a block the main thread
 *     made, free it, make and free small blocks of their own and exit (as
 *     bench/cache-scratch's workers do): the core and threads tiers, not
 *     the medium or rest ones (an exiting thread's empty pages are retired,
 *     page_retire: in the medium tier until session 23, 20 kB more);
 *   - libgcc_s.so.1 is not loaded: liballot.so loads it only for the
 *     backtraces of debug mode and the heap profile (os_unwind).
 * Exit 77 (skipped) without the layout (ALLOT_LAYOUT=OFF, or a linker
 * without a script: FOOTPRINT_NO_LAYOUT).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 2000

static void *blocks[N];

static void *freer(void *arg) {
  (void)arg;
  for (int i = 0; i < N; i += 2) {
    free(blocks[i]);
    blocks[i] = NULL;
  }
  return NULL;
}

static pthread_barrier_t both;

/* a thread holding a heap while the other takes one */
static void *holder(void *arg) {
  void *p = malloc(100 + (size_t)(uintptr_t)arg);
  pthread_barrier_wait(&both);
  free(p);
  return p ? NULL : arg;
}

static void workload(void) {
  uint64_t seed = 42;
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < N; i++) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      size_t size = 1 + (size_t)(seed >> 33) % (i % 50 == 0 ? 200000 : 2000);
      void *p = NULL;
      switch (i % 4) {
      case 0:
        p = malloc(size);
        break;
      case 1:
        p = calloc(1, size);
        break;
      case 2:
        if (posix_memalign(&p, 64, size) != 0) p = NULL;
        break;
      default:
        p = realloc(malloc(size / 2 + 1), size);
        break;
      }
      if (!p) {
        printf("FAILED: allocation of %zu bytes\n", size);
        exit(1);
      }
      memset(p, 1, size);
      blocks[i] = p;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, freer, NULL) != 0 ||
        pthread_join(t, NULL) != 0) {
      printf("FAILED: thread\n");
      exit(1);
    }
    for (int i = 0; i < N; i++)
      free(blocks[i]);
  }
  /* on one CPU: main's heap and the first holder's are more than the CPUs */
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &one);
  sched_setaffinity(0, sizeof one, &one);
  pthread_t h[2];
  pthread_barrier_init(&both, NULL, 2);
  if (pthread_create(&h[0], NULL, holder, (void *)1) != 0 ||
      pthread_create(&h[1], NULL, holder, (void *)2) != 0 ||
      pthread_join(h[0], NULL) != 0 || pthread_join(h[1], NULL) != 0) {
    printf("FAILED: threads\n");
    exit(1);
  }
}

static void small_workload(void) {
  /* what a small tool does: small blocks, a few zeroed ones, stdio */
  void *keep[64];
  for (int round = 0; round < 100; round++) {
    for (int i = 0; i < 64; i++) {
      keep[i] =
          i % 8 ? malloc(16 + (size_t)(i * 37 + round) % 1000) : calloc(4, 24);
      if (!keep[i]) {
        printf("FAILED: allocation\n");
        exit(1);
      }
      memset(keep[i], 1, 16);
    }
    for (int i = 0; i < 64; i++)
      free(keep[i]);
  }
  printf("small workload done\n");
}

/* what bench/cache-scratch's workers do, with a few classes */
static void *small_thread(void *arg) {
  free(arg);
  for (int i = 0; i < 20000; i++) {
    void *p = malloc(8 + (size_t)(i % 4) * 24);
    if (!p) return NULL;
    memset(p, i, 8);
    free(p);
  }
  return arg;
}

static void threads_workload(void) {
  pthread_t t[4];
  for (int i = 0; i < 4; i++) {
    void *handed = malloc(8);
    if (!handed || pthread_create(&t[i], NULL, small_thread, handed) != 0) {
      printf("FAILED: threads\n");
      exit(1);
    }
  }
  for (int i = 0; i < 4; i++) {
    void *r;
    if (pthread_join(t[i], &r) != 0 || !r) {
      printf("FAILED: threads\n");
      exit(1);
    }
  }
  printf("threads workload done\n");
}

#define MAX_MAPS 16

int main(int argc, char **argv) {
  int small = argc > 1 && strcmp(argv[1], "small") == 0;
  int threads = argc > 1 && strcmp(argv[1], "threads") == 0;
  if (small)
    small_workload();
  else if (threads)
    threads_workload();
  else
    workload();
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) {
    printf("FAILED: /proc/self/smaps\n");
    return 1;
  }
  /* liballot.so's executable mappings in address order: the tiers (core,
   * threads, medium, rest, cold), then the resolver's segment */
  char line[512], perms[8] = "";
  long rss[MAX_MAPS];
  int n = 0, in_code = 0, gcc_s = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long a, b;
    char path[256] = "";
    /* a mapping's first line; its attribute lines ("Rss: ...") do not
     * parse as an address range */
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &a, &b, perms, path) >=
        3) {
      in_code = strstr(path, "liballot") && strcmp(perms, "r-xp") == 0 &&
                n < MAX_MAPS;
      if (in_code) rss[n++] = -1;
      if (strstr(path, "libgcc_s")) gcc_s = 1;
      continue;
    }
    long kb;
    if (in_code && sscanf(line, "Rss: %ld kB", &kb) == 1) rss[n - 1] = kb;
  }
  fclose(f);
  if (n == 0) {
    printf("FAILED: no code mapping of liballot.so (not preloaded?)\n");
    return 1;
  }
  long total = 0;
  for (int i = 0; i < n; i++)
    total += rss[i];
  if (getenv("FOOTPRINT_NO_LAYOUT")) {
    printf("SKIPPED: no layout; liballot.so's code is %d mapping(s), %ld kB "
           "resident\n",
           n, total);
    return 77;
  }
  if (n < 6) {
    printf("FAILED: liballot.so's code is %d mapping(s), not split by tiers "
           "(os_code_tiers in src/os.c); %ld kB resident\n",
           n, total);
    return 1;
  }
  static const char *const tier[] = {"core", "threads", "medium", "rest",
                                     "cold"};
  int ok = 1;
  printf("liballot.so code resident:");
  for (int i = 0; i < n; i++)
    printf(" %s %ld kB", i < 5 ? tier[i] : "boot", rss[i]);
  printf(", %ld kB in all\n", total);
  if (rss[4] != 0) {
    printf("FAILED: %ld kB of the cold code resident: a function the "
           "default mode runs is missing from cmake/hot-functions.txt\n",
           rss[4]);
    ok = 0;
  }
  /* the tiers past those the workload may run: past the core (small), past
   * the threads tier (threads); none in the mix */
  int from = small ? 1 : threads ? 2 : 4;
  for (int i = from; i < 4; i++)
    if (rss[i] != 0) {
      printf("FAILED: tier %s resident (%ld kB) in %s: one of its functions "
             "belongs in %s (cmake/hot-functions.txt)\n",
             tier[i], rss[i],
             small ? "a small single-threaded program"
                   : "a program whose threads make and free small blocks "
                     "and exit",
             small ? "the core" : "the core or threads tier");
      ok = 0;
    }
  if (gcc_s) {
    printf("FAILED: libgcc_s.so.1 is loaded in a C program in the default "
           "mode\n");
    ok = 0;
  }
  if (ok) printf("ok: no libgcc_s\n");
  return ok ? 0 : 1;
}
