/* test_api_mallinfo.c: glibc's statistics and tuning interfaces as allot
 * provides them when it replaces malloc (linked with liballot.so): mallinfo2,
 * mallinfo, malloc_info's XML, malloc_stats, mallopt, malloc_trim. */
#include "test_api_common.h"

#include <malloc.h>

static size_t in_use(void) {
  return mallinfo2().uordblks;
}

static void test_mallinfo(void) {
  void *probe = malloc(10);
  CHECK(allot_owns(probe), "malloc is not allot's");
  free(probe);
  static const size_t sizes[] = {48, 1000, 20000, 3 << 20};
  static void *p[4][50];
  for (int k = 0; k < 4; k++) {
    size_t count = k == 3 ? 3 : 50, asked = sizes[k] * count;
    size_t before = in_use();
    for (size_t i = 0; i < count; i++)
      p[k][i] = malloc(sizes[k]);
    size_t live = in_use();
    CHECK(live >= before + asked, "%zu x %zu: uordblks grew by %zd only", count,
          sizes[k], (ssize_t)(live - before));
    struct mallinfo2 m = mallinfo2();
    if (k == 3)
      CHECK(m.hblks >= 3 && m.hblkhd >= asked, "hblks %zu hblkhd %zu", m.hblks,
            m.hblkhd);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo old = mallinfo();
#pragma GCC diagnostic pop
    CHECK((size_t)old.uordblks == (live > 0x7fffffff ? 0x7fffffffu : live) ||
              (size_t)old.uordblks >= before + asked,
          "mallinfo uordblks %d", old.uordblks);
    for (size_t i = 0; i < count; i++)
      free(p[k][i]);
    size_t after = in_use();
    /* slack: the runtime may allocate meanwhile (the purge thread's TLS) */
    CHECK(after + asked <= live + 4096,
          "%zu x %zu freed: uordblks fell by %zd only", count, sizes[k],
          (ssize_t)(live - after));
  }
  struct mallinfo2 m = mallinfo2();
  CHECK(m.arena > 0 && m.fordblks > 0 && m.usmblks > 0,
        "arena %zu fordblks %zu usmblks %zu", m.arena, m.fordblks, m.usmblks);
}

static void test_malloc_info(void) {
  void *keep[100];
  for (int i = 0; i < 100; i++)
    keep[i] = malloc(40 + (size_t)i * 100);
  for (int i = 0; i < 100; i += 2)
    free(keep[i]);
  FILE *f = tmpfile();
  CHECK(f && malloc_info(0, f) == 0, "malloc_info");
  char buf[65536];
  rewind(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  CHECK(strncmp(buf, "<malloc version=\"1\">\n", 21) == 0 &&
            strstr(buf, "<heap nr=\"0\">\n<sizes>\n") &&
            strstr(buf, "<total type=\"fast\" count=\"") &&
            strstr(buf, "<total type=\"mmap\" count=\"") &&
            strstr(buf, "<system type=\"current\" size=\"") &&
            strstr(buf, "<aspace type=\"total\" size=\"") && n > 22 &&
            strcmp(buf + n - 10, "</malloc>\n") == 0,
        "malloc_info XML:\n%s", buf);
  errno = 0;
  CHECK(malloc_info(1, stdout) == -1 && errno == EINVAL, "options != 0");
  for (int i = 1; i < 100; i += 2)
    free(keep[i]);
}

static void call_malloc_stats(void *arg) {
  (void)arg;
  void *p = malloc(100);
  malloc_stats();
  free(p);
}

static void test_malloc_stats(void) {
  char err[8192];
  int st = in_child(call_malloc_stats, NULL, err, sizeof err);
  CHECK(exited_ok(st) &&
            strncmp(err, "Arena 0:\nsystem bytes     = ", 28) == 0 &&
            strstr(err, "\nin use bytes     = ") &&
            strstr(err, "Total (incl. mmap):\n") &&
            strstr(err, "max mmap regions = "),
        "malloc_stats:\n%s", err);
}

static void test_mallopt(void) {
  CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "M_MMAP_THRESHOLD");
  CHECK(mallopt(M_ARENA_MAX, 1) == 1, "M_ARENA_MAX");
  CHECK(mallopt(M_TOP_PAD, 0) == 1, "M_TOP_PAD");
  CHECK(mallopt(M_CHECK_ACTION, 3) == 1, "M_CHECK_ACTION");
  CHECK(mallopt(M_MXFAST, 64) == 1 && mallopt(M_MXFAST, 100000) == 0,
        "M_MXFAST range");
  CHECK(mallopt(12345, 1) == 0, "unknown parameter");
  CHECK(mallopt(M_TRIM_THRESHOLD, 1 << 20) == 1 &&
            allot_option_get(ALLOT_OPTION_PURGE_DELAY) != 0,
        "a trim threshold is accepted and ignored");
  CHECK(mallopt(M_TRIM_THRESHOLD, 0) == 1 &&
            allot_option_get(ALLOT_OPTION_PURGE_DELAY) == 0,
        "M_TRIM_THRESHOLD 0 means no purge delay");
}

static void test_trim(void) {
  void *p[2000];
  for (int i = 0; i < 2000; i++)
    p[i] = malloc(2000);
  for (int i = 0; i < 2000; i++)
    free(p[i]);
  CHECK(malloc_trim(0) == 1, "malloc_trim after freeing 4 MB");
}

int main(void) {
  test_mallinfo();
  test_malloc_info();
  test_malloc_stats();
  test_trim();
  test_mallopt();
  return finish("test_api_mallinfo");
}
