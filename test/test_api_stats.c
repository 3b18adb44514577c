/* test_api_stats.c: allot_stats_* and allot_mallinfo2 (prefixed API).
 *
 * - in use grows by exactly the usable bytes of what is allocated, per class
 *   and per kind, and falls back exactly when it is freed;
 * - statistics mode switched on at run time counts every malloc, free and
 *   requested byte exactly, and the peak;
 * - frees from other threads are counted once the owner takes them in;
 * - a first-class heap's statistics are its own;
 * - text and JSON output, truncation like snprintf.
 * `test_api_stats --json` prints the JSON for an external parser. Debug and
 * secure mode add a trailer to every block and hold freed ones in a
 * quarantine, so exact byte counts do not apply there: skipped (77). */
#include "test_api_common.h"

#include <pthread.h>

static allot_stats_t st0, st1;

static size_t class_of(size_t size) {
  /* the class whose block size is the usable size of a block of size */
  void *p = allot_malloc(size);
  size_t u = allot_malloc_usable_size(p);
  allot_free(p);
  allot_stats_t s;
  allot_stats_get(&s);
  for (size_t r = 1; r < ALLOT_STATS_MEDIUM; r++)
    if (s.rows[r].block_size == u) return r;
  return 0;
}

static void test_in_use(void) {
  enum { NS = 500, NM = 12, NL = 3 };
  static void *s[NS], *m[NM], *l[NL];
  size_t cls = class_of(48);
  CHECK(cls == 3, "48 bytes in class %zu", cls);
  allot_stats_get(&st0);
  size_t expect = 0, medium = 0, large = 0;
  for (int i = 0; i < NS; i++) {
    s[i] = allot_malloc(48);
    expect += allot_malloc_usable_size(s[i]);
  }
  for (int i = 0; i < NM; i++) {
    m[i] = allot_malloc(10000 + 3000 * (size_t)i);
    medium += allot_malloc_usable_size(m[i]);
  }
  for (int i = 0; i < NL; i++) {
    l[i] = allot_malloc((2u << 20) + 100 * (size_t)i);
    large += allot_malloc_usable_size(l[i]);
  }
  allot_stats_get(&st1);
  CHECK(st1.in_use - st0.in_use == expect + medium + large,
        "in use grew by %zu, expected %zu", st1.in_use - st0.in_use,
        expect + medium + large);
  CHECK(st1.rows[cls].blocks - st0.rows[cls].blocks == NS &&
            st1.rows[cls].bytes - st0.rows[cls].bytes == expect,
        "class %zu: %zu blocks more", cls,
        st1.rows[cls].blocks - st0.rows[cls].blocks);
  CHECK(st1.rows[ALLOT_STATS_MEDIUM].blocks -
                    st0.rows[ALLOT_STATS_MEDIUM].blocks ==
                NM &&
            st1.rows[ALLOT_STATS_MEDIUM].bytes -
                    st0.rows[ALLOT_STATS_MEDIUM].bytes ==
                medium,
        "medium row");
  CHECK(st1.rows[ALLOT_STATS_LARGE].blocks -
                    st0.rows[ALLOT_STATS_LARGE].blocks ==
                NL &&
            st1.rows[ALLOT_STATS_LARGE].bytes -
                    st0.rows[ALLOT_STATS_LARGE].bytes ==
                large,
        "large row");
  CHECK(st1.reserved >= st1.in_use && st1.reserved_peak >= st1.reserved,
        "reserved %zu, peak %zu, in use %zu", st1.reserved, st1.reserved_peak,
        st1.in_use);
  CHECK(st1.committed > 0 && st1.committed <= st1.reserved,
        "committed %zu of %zu", st1.committed, st1.reserved);
  CHECK(st1.segments_small >= 1 && st1.segments_medium >= 1 &&
            st1.segments_large >= NL && st1.pages_in_use >= 1,
        "segment counts");
  /* mallinfo2 agrees */
  struct allot_mallinfo2 mi = allot_mallinfo2();
  CHECK(mi.uordblks == st1.in_use && mi.hblks >= NL && mi.hblkhd >= large,
        "mallinfo2 uordblks %zu (in use %zu), hblks %zu", mi.uordblks,
        st1.in_use, mi.hblks);
  /* the default heap's own view has everything but the large blocks */
  allot_stats_t hs;
  allot_heap_stats(allot_heap_default(), &hs);
  CHECK(hs.in_use + st1.rows[ALLOT_STATS_LARGE].bytes == st1.in_use,
        "default heap %zu + large %zu != process %zu", hs.in_use,
        st1.rows[ALLOT_STATS_LARGE].bytes, st1.in_use);
  for (int i = 0; i < NS; i++)
    allot_free(s[i]);
  for (int i = 0; i < NM; i++)
    allot_free(m[i]);
  for (int i = 0; i < NL; i++)
    allot_free(l[i]);
  allot_stats_get(&st1);
  CHECK(st1.in_use == st0.in_use, "in use after frees %zu, before %zu",
        st1.in_use, st0.in_use);
}

static void test_stats_mode(void) {
  CHECK(allot_option_set(ALLOT_OPTION_STATS, 1) == 0, "stats mode on");
  allot_stats_get(&st0);
  CHECK(st0.stats_mode == 1, "stats_mode flag");
  CHECK(st0.in_use_peak >= st0.in_use, "peak %zu < in use %zu", st0.in_use_peak,
        st0.in_use);
  enum { N = 1000 };
  static void *p[N];
  size_t asked = 0, cls = class_of(100);
  allot_stats_get(&st0);
  for (int i = 0; i < N; i++) {
    p[i] = allot_malloc(100);
    asked += 100;
  }
  void *med = allot_malloc(50000), *big = allot_malloc(3 << 20);
  asked += 50000 + (3 << 20);
  allot_stats_get(&st1);
  CHECK(st1.mallocs - st0.mallocs == N + 2, "mallocs counted %zu",
        st1.mallocs - st0.mallocs);
  CHECK(st1.rows[cls].mallocs - st0.rows[cls].mallocs == N,
        "class %zu mallocs %zu", cls,
        st1.rows[cls].mallocs - st0.rows[cls].mallocs);
  CHECK(st1.requested - st0.requested == asked, "requested %zu, asked %zu",
        st1.requested - st0.requested, asked);
  CHECK(st1.rows[ALLOT_STATS_MEDIUM].mallocs -
                    st0.rows[ALLOT_STATS_MEDIUM].mallocs ==
                1 &&
            st1.rows[ALLOT_STATS_LARGE].mallocs -
                    st0.rows[ALLOT_STATS_LARGE].mallocs ==
                1,
        "medium and large mallocs");
  CHECK(st1.in_use_peak >= st1.in_use && st1.in_use_peak >= st0.in_use + asked,
        "peak %zu", st1.in_use_peak);
  size_t peak = st1.in_use_peak;
  med = allot_realloc(med, 200000); /* counted as a free and a malloc */
  for (int i = 0; i < N; i++)
    allot_free(p[i]);
  allot_free(med);
  allot_free(big);
  allot_stats_get(&st1);
  CHECK(st1.frees - st0.frees == N + 3 && st1.mallocs - st0.mallocs == N + 3,
        "frees %zu mallocs %zu", st1.frees - st0.frees,
        st1.mallocs - st0.mallocs);
  CHECK(st1.in_use == st0.in_use, "in use back to %zu: %zu", st0.in_use,
        st1.in_use);
  CHECK(st1.in_use_peak >= peak, "peak fell from %zu to %zu", peak,
        st1.in_use_peak);
  allot_stats_reset();
  allot_stats_get(&st1);
  CHECK(st1.mallocs == 0 && st1.frees == 0 && st1.requested == 0 &&
            st1.in_use_peak == st1.in_use,
        "after reset: mallocs %zu peak %zu in use %zu", st1.mallocs,
        st1.in_use_peak, st1.in_use);
  /* a first-class heap counts its own */
  allot_heap_t *h = allot_heap_new();
  for (int i = 0; i < 10; i++)
    p[i] = allot_heap_malloc(h, 3000);
  allot_stats_t hs;
  allot_heap_stats(h, &hs);
  CHECK(hs.mallocs == 10 && hs.requested == 30000 && hs.in_use_peak >= 30000,
        "heap counters: mallocs %zu requested %zu", hs.mallocs, hs.requested);
  allot_heap_destroy(h);
  allot_stats_get(&st1);
  CHECK(st1.mallocs == 10 && st1.frees == 10,
        "destroyed heap's counts kept: %zu mallocs %zu frees", st1.mallocs,
        st1.frees);
  if (!allot_option_get(ALLOT_OPTION_DEBUG) &&
      !allot_option_get(ALLOT_OPTION_SECURE))
    CHECK(allot_option_set(ALLOT_OPTION_STATS, 0) == 0, "stats mode off");
}

static void *free_them(void *arg) {
  void **p = arg;
  for (int i = 0; i < 600; i++)
    allot_free(p[i]);
  return NULL;
}

static void test_xfrees(void) {
  static void *p[600];
  for (int i = 0; i < 600; i++)
    p[i] = allot_malloc(i % 6 == 0 ? 20000 : 64); /* 100 medium */
  allot_stats_get(&st0);
  pthread_t t;
  pthread_create(&t, NULL, free_them, p);
  pthread_join(t, NULL);
  allot_collect(); /* the owner takes its small blocks back */
  allot_stats_get(&st1);
  CHECK(st1.xfrees - st0.xfrees >= 600, "xfrees counted %zu",
        st1.xfrees - st0.xfrees);
}

static void test_output(void) {
  char buf[65536];
  size_t n = allot_stats_json(buf, sizeof buf);
  CHECK(n == strlen(buf) && n > 100, "json length %zu", n);
  CHECK(strncmp(buf, "{\"in_use\":", 10) == 0 &&
            strcmp(buf + n - 3, "]}\n") == 0 && strstr(buf, "\"classes\":["),
        "json shape: %.80s", buf);
  int depth = 0, bad = 0;
  for (size_t i = 0; i < n; i++) {
    depth +=
        (buf[i] == '{' || buf[i] == '[') - (buf[i] == '}' || buf[i] == ']');
    bad |= depth < 0;
  }
  CHECK(!bad && depth == 0, "json brackets unbalanced");
  char small[10];
  size_t need = allot_stats_json(small, sizeof small);
  CHECK(need > sizeof small && strlen(small) == sizeof small - 1,
        "truncated json: needs %zu, holds %zu", need, strlen(small));
  allot_stats_t st;
  allot_stats_get(&st);
  CHECK(allot_stats_format(&st, 0, NULL, 0) > 200, "text length");
  int fds[2];
  CHECK(pipe(fds) == 0, "pipe");
  CHECK(allot_stats_print(fds[1]) == 0, "print");
  close(fds[1]);
  slurp(fds[0], buf, sizeof buf);
  CHECK(strncmp(buf, "allot statistics (", 18) == 0 &&
            strstr(buf, "  in use ") && strstr(buf, "  class "),
        "text: %.200s", buf);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--json") == 0) {
    void *keep = allot_malloc(1000);
    char buf[65536];
    allot_stats_json(buf, sizeof buf);
    fputs(buf, stdout);
    allot_free(keep);
    return 0;
  }
  if (checked_mode()) {
    printf("test_api_stats: skipped (quarantine mode)\n");
    return 77;
  }
  test_in_use();
  test_xfrees();
  test_output();
  test_stats_mode();
  return finish("test_api_stats");
}
