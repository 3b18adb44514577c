/* test_static_override.c: linking liballot.a into a program replaces malloc
 * and friends in it — for the program's own calls, for the C library's
 * internal allocations (strdup, getline, asprintf...), and in other threads.
 * Built twice (test/package.cmake): a dynamically linked program with
 * liballot.a, and a fully static one (-static), where glibc's own malloc
 * must stay out of the link. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <allot.h>

#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)

static int aligned(const void *p, size_t a) {
  return (uintptr_t)p % a == 0;
}

/* A live allot block of at least n bytes, as the standard names see it. */
static void check_block(void *p, size_t n) {
  CHECK(p != NULL);
  if (!p) return;
  CHECK(allot_owns(p));
  CHECK(malloc_usable_size(p) >= n);
  CHECK(malloc_usable_size(p) == allot_malloc_usable_size(p));
  memset(p, 0x5A, n);
}

/* Free through the standard name and see the block go. (The copy hidden
 * from the compiler keeps -Wuse-after-free quiet about looking at a freed
 * pointer, which is the point here.) */
static void free_and_check(void *p) {
  void *q = p;
  __asm__ volatile("" : "+r"(q));
  free(p);
  CHECK(!allot_owns(q));
}

static void test_standard_names(void) {
  static const size_t sizes[] = {1, 10, 100, 5000, 20000, 300000, 3 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    size_t n = sizes[i];
    void *p = malloc(n);
    check_block(p, n);
    free_and_check(p);

    unsigned char *z = calloc(n, 1);
    check_block(z, 0);
    size_t nonzero = 0;
    for (size_t k = 0; z && k < n; k++)
      nonzero += z[k] != 0;
    CHECK(nonzero == 0);
    free_and_check(z);

    p = malloc(n);
    void *q = realloc(p, 2 * n);
    check_block(q, 2 * n);
    q = reallocarray(q, n, 3);
    check_block(q, 3 * n);
    free_and_check(q);

    p = aligned_alloc(256, n);
    check_block(p, n);
    CHECK(aligned(p, 256));
    free_and_check(p);

    p = NULL;
    CHECK(posix_memalign(&p, 4096, n) == 0);
    check_block(p, n);
    CHECK(aligned(p, 4096));
    free_and_check(p);

    p = memalign(64, n);
    check_block(p, n);
    CHECK(aligned(p, 64));
    free_and_check(p);

    p = valloc(n);
    check_block(p, n);
    CHECK(aligned(p, (size_t)sysconf(_SC_PAGESIZE)));
    free_and_check(p);
  }
}

/* Memory the C library allocates for the program is allot's too, and the
 * program frees it with allot's free. */
static void test_libc_internal(void) {
  char *s = strdup("static override");
  check_block(s, strlen(s) + 1);
  free_and_check(s);

  char *a = NULL;
  CHECK(asprintf(&a, "%s %d", "number", 42) > 0);
  check_block(a, strlen(a) + 1);
  free_and_check(a);

  char *line = NULL;
  size_t cap = 0;
  FILE *f = fmemopen("first line\nsecond\n", 18, "r");
  CHECK(f != NULL);
  if (f) {
    CHECK(getline(&line, &cap, f) == 11);
    check_block(line, cap);
    fclose(f);
  }
  free(line);

  char *cwd = getcwd(NULL, 0);
  check_block(cwd, strlen(cwd) + 1);
  free_and_check(cwd);
}

static void *thread_main(void *arg) {
  (void)arg;
  void *p = malloc(1000);
  check_block(p, 1000);
  return p;
}

static void test_threads(void) {
  pthread_t t[4];
  void *r[4];
  for (int i = 0; i < 4; i++)
    CHECK(pthread_create(&t[i], NULL, thread_main, NULL) == 0);
  for (int i = 0; i < 4; i++) {
    CHECK(pthread_join(t[i], &r[i]) == 0);
    CHECK(allot_owns(r[i]));
    free(r[i]); /* freed by another thread than its allocator */
  }
}

int main(void) {
  CHECK(allot_version() == ALLOT_VERSION);
  test_standard_names();
  test_libc_internal();
  test_threads();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  puts("ok");
  return 0;
}
