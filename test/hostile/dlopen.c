/* dlopen.c: dlopen and dlclose around allot.
 *
 *   hostile_dlopen lib <libhostile_dl.so>
 *       The program uses allot as malloc (linked with liballot.so) and loads
 *       and unloads a library that allocates (dlib.c) LOOPS times: blocks
 *       cross between library and program in both directions, the library's
 *       thread leaves blocks behind, and the library's thread-local storage,
 *       which glibc allocates through malloc, is created in several threads
 *       and released at thread exit and dlclose. Blocks that came from the
 *       library are checked and freed after it is unloaded.
 *
 *   hostile_dlopen_self allot <liballot.so>
 *       A program that does not use allot loads liballot.so itself (as a
 *       plugin that wants the allot_* API would), allocates from several
 *       threads until allot's background purge thread runs, unloads it, and
 *       goes on creating threads and waiting past the purge delay. Code of
 *       an unloaded allot still running (the purge thread, the thread-exit
 *       destructor) would crash here. It then loads it again and uses it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOOPS 200

static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "dlopen: FAILED: " __VA_ARGS__);                         \
      fputc('\n', stderr);                                                     \
      failures++;                                                              \
    }                                                                          \
  } while (0)

static void *sym(void *h, const char *name) {
  void *f = dlsym(h, name);
  if (!f) {
    fprintf(stderr, "dlopen: FAILED: no symbol %s: %s\n", name, dlerror());
    exit(1);
  }
  return f;
}

/* ---- a library that allocates ------------------------------------------ */

typedef struct {
  int (*tls)(unsigned char);
  void (*tls_done)(void);
} tls_fns_t;

static void *tls_thread(void *arg) {
  tls_fns_t *f = arg;
  int bad = 0;
  for (int i = 0; i < 10; i++)
    bad |= f->tls((unsigned char)(i + 1));
  f->tls_done();
  return (void *)(intptr_t)bad;
}

static int run_lib(const char *path) {
  enum { KEEP = 64 };
  unsigned char *kept[KEEP];
  size_t kept_size[KEEP];
  int nkept = 0;
  for (int loop = 0; loop < LOOPS; loop++) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fprintf(stderr, "dlopen: FAILED: %s\n", dlerror());
      return 1;
    }
    void *(*dl_alloc)(size_t, unsigned char) = sym(h, "dl_alloc");
    void (*dl_free)(void *) = sym(h, "dl_free");
    void **(*dl_thread)(void) = sym(h, "dl_thread");
    tls_fns_t f = {sym(h, "dl_tls"), sym(h, "dl_tls_done")};

    /* program -> library */
    for (int i = 0; i < 20; i++)
      dl_free(malloc(10 + (size_t)i * 500));
    /* library -> program, some kept beyond dlclose */
    for (int i = 0; i < 4; i++) {
      size_t size = (size_t)1 << (4 + (loop + i) % 14);
      unsigned char *p = dl_alloc(size, (unsigned char)loop);
      CHECK(p != NULL, "dl_alloc returned NULL");
      if (!p) continue;
      if (nkept == KEEP) {
        int v = loop % KEEP;
        for (size_t k = 0; k < kept_size[v]; k += 7)
          CHECK(kept[v][k] == kept[v][0], "block from an unloaded library "
                                          "corrupted");
        free(kept[v]);
        kept[v] = p;
        kept_size[v] = size;
      } else {
        kept[nkept] = p;
        kept_size[nkept++] = size;
      }
    }
    /* the library's own thread */
    void **left = dl_thread();
    CHECK(left != NULL, "dl_thread failed");
    /* TLS of the library in the main thread and in two more */
    CHECK(f.tls((unsigned char)loop) == 0, "library TLS lost its contents");
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
      pthread_create(&t[i], NULL, tls_thread, &f);
    for (int i = 0; i < 2; i++) {
      void *r;
      pthread_join(t[i], &r);
      CHECK(r == NULL, "library TLS in a thread lost its contents");
    }
    f.tls_done();
    if (dlclose(h) != 0) CHECK(0, "dlclose: %s", dlerror());
    if (left) {
      for (int i = 0; i < 32; i++)
        free(left[i]);
      free(left);
    }
  }
  for (int i = 0; i < nkept; i++)
    free(kept[i]);
  printf("dlopen: %d loads and unloads of a library that allocates\n", LOOPS);
  return failures ? 1 : 0;
}

/* ---- allot itself, loaded and unloaded ------------------------------------
 */

typedef struct {
  void *(*malloc_)(size_t);
  void (*free_)(void *);
} allot_fns_t;

static void *allot_thread(void *arg) {
  allot_fns_t *a = arg;
  void *keep[500];
  for (int i = 0; i < 500; i++)
    keep[i] = a->malloc_(16 + (size_t)(i % 60) * 100);
  for (int i = 0; i < 500; i++)
    a->free_(keep[i]);
  return NULL;
}

static void *plain_thread(void *arg) {
  free(malloc(100));
  return arg;
}

static int count_threads(void) {
  char buf[64];
  FILE *f = fopen("/proc/self/status", "r");
  int n = -1;
  while (f && fgets(buf, sizeof buf, f))
    if (sscanf(buf, "Threads: %d", &n) == 1) break;
  if (f) fclose(f);
  return n;
}

static int mapped(const char *path) {
  char line[512];
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  FILE *f = fopen("/proc/self/maps", "r");
  int found = 0;
  while (f && fgets(line, sizeof line, f))
    if (strstr(line, base)) found = 1;
  if (f) fclose(f);
  return found;
}

static int use_allot(const char *path, int round) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen: FAILED: %s\n", dlerror());
    return 1;
  }
  allot_fns_t a = {sym(h, "allot_malloc"), sym(h, "allot_free")};
  void (*collect)(void) = sym(h, "allot_collect");
  /* enough churn that pages are emptied and the purge thread is wanted */
  for (int r = 0; r < 4; r++) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
      pthread_create(&t[i], NULL, allot_thread, &a);
    for (int i = 0; i < 4; i++)
      pthread_join(t[i], NULL);
    allot_thread(&a);
    void *big = a.malloc_((size_t)3 << 20);
    a.free_(big);
  }
  collect();
  usleep(100 * 1000); /* the purge thread, if any, is running by now */
  /* leave memory to purge: the purge thread's next wake-up is due after
   * the unload */
  allot_thread(&a);
  void *big = a.malloc_((size_t)3 << 20);
  a.free_(big);
  int threads = count_threads();
  if (dlclose(h) != 0) CHECK(0, "dlclose: %s", dlerror());
  int still = mapped(path);
  /* threads exiting and time passing after the unload */
  for (int i = 0; i < 20; i++) {
    pthread_t t;
    pthread_create(&t, NULL, plain_thread, NULL);
    pthread_join(t, NULL);
  }
  usleep(300 * 1000);
  printf("dlopen: liballot.so loaded and used (%d threads before dlclose), "
         "dlclose %s (round %d)\n",
         threads, still ? "kept it mapped" : "unmapped it", round);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: hostile_dlopen lib|allot <path>\n");
    return 2;
  }
  if (strcmp(argv[1], "lib") == 0) return run_lib(argv[2]);
  int rc = use_allot(argv[2], 0) | use_allot(argv[2], 1);
  return rc || failures ? 1 : 0;
}
