/* mem_footprint.c: the fixed footprint liballot.so adds to a small program.
 *
 * Run with liballot.so preloaded (test/memory.cmake). After a mix of the
 * calls a default-mode program makes (small, medium and aligned blocks,
 * realloc, calloc, a second thread that frees the first one's blocks), it
 * checks in /proc/self/smaps that:
 *   - liballot.so's code mapping has at most 64 kB resident: the kernel maps
 *     file pages by 64 KiB window around a fault, and the build lays out the
 *     code the default mode runs first, in one window (cmake/layout.cmake);
 *     a function that runs but is missing from cmake/hot-functions.txt
 *     lands in another window and fails this;
 *   - libgcc_s.so.1 is not loaded: liballot.so loads it only for the
 *     backtraces of debug mode and the heap profile (os_unwind).
 * Exit 77 (skipped) when the library's code does not start on a 64 KiB
 * boundary (a loader older than glibc 2.35 ignores the alignment) or when
 * the build has no layout (ALLOT_LAYOUT=OFF, or a linker without a script).
 */
#define _GNU_SOURCE
#include <pthread.h>
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
}

int main(void) {
  workload();
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) {
    printf("FAILED: /proc/self/smaps\n");
    return 1;
  }
  char line[512], perms[8] = "";
  unsigned long lo = 0, code_lo = 0;
  long code_rss = -1;
  int in_code = 0, gcc_s = 0, found = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long a, b;
    char path[256] = "";
    /* a mapping's first line; its attribute lines ("Rss: ...") do not
     * parse as an address range */
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &a, &b, perms, path) >=
        3) {
      lo = a;
      in_code = strstr(path, "liballot") && strcmp(perms, "r-xp") == 0;
      if (in_code) {
        code_lo = lo;
        found = 1;
      }
      if (strstr(path, "libgcc_s")) gcc_s = 1;
      continue;
    }
    long kb;
    if (in_code && sscanf(line, "Rss: %ld kB", &kb) == 1) code_rss = kb;
  }
  fclose(f);
  if (!found || code_rss < 0) {
    printf("FAILED: no code mapping of liballot.so (not preloaded?)\n");
    return 1;
  }
  if (getenv("FOOTPRINT_NO_LAYOUT") || (code_lo & 0xffff)) {
    printf("SKIPPED: liballot.so's code at %#lx is not 64 KiB-aligned (or "
           "no layout); %ld kB resident\n",
           code_lo, code_rss);
    return 77;
  }
  int ok = 1;
  if (code_rss > 64) {
    printf("FAILED: liballot.so code resident %ld kB > 64 kB: a function "
           "the default mode runs is missing from cmake/hot-functions.txt\n",
           code_rss);
    ok = 0;
  }
  if (gcc_s) {
    printf("FAILED: libgcc_s.so.1 is loaded in a C program in the default "
           "mode\n");
    ok = 0;
  }
  if (ok)
    printf("ok: liballot.so code resident %ld kB, no libgcc_s\n", code_rss);
  return ok ? 0 : 1;
}
