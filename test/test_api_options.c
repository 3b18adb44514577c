/* test_api_options.c: allot_option_get/set and the ALLOT_* environment
 * (prefixed API).
 *
 * In this process: defaults, set and get, range and start-up-only errors.
 * In children run with one variable set: a bad value gives exactly one
 * warning line and the default, and the child then allocates normally; good
 * values (keywords, size suffixes) are taken silently; ALLOT_SHOW_STATS
 * prints at exit; ALLOT_STATS counts; ALLOT_VERBOSE reports settings. */
#include "test_api_common.h"

/* The options this test knows (others may have been added since). */
static const struct {
  allot_option_t o;
  const char *name;
} known[] = {{ALLOT_OPTION_SHOW_STATS, "ALLOT_SHOW_STATS"},
             {ALLOT_OPTION_VERBOSE, "ALLOT_VERBOSE"},
             {ALLOT_OPTION_PURGE_DELAY, "ALLOT_PURGE_DELAY"},
             {ALLOT_OPTION_PURGE_THREAD, "ALLOT_PURGE_THREAD"},
             {ALLOT_OPTION_USE_BRK, "ALLOT_USE_BRK"},
             {ALLOT_OPTION_HUGE_PAGES, "ALLOT_HUGE_PAGES"},
             {ALLOT_OPTION_SECURE, "ALLOT_SECURE"},
             {ALLOT_OPTION_SEGMENT_SIZE, "ALLOT_SEGMENT_SIZE"},
             {ALLOT_OPTION_STATS, "ALLOT_STATS"},
             {ALLOT_OPTION_DEBUG, "ALLOT_DEBUG"}};
#define NKNOWN (sizeof known / sizeof *known)

/* The child: print every option, then allocate and free a little of each
 * kind. */
static int child(void) {
  for (int i = 0; i < ALLOT_OPTION_COUNT; i++)
    printf("%s=%ld\n", allot_option_name((allot_option_t)i),
           allot_option_get((allot_option_t)i));
  void *p[64];
  for (int i = 0; i < 64; i++)
    p[i] = allot_malloc((size_t)i * 1000 + 1);
  void *big = allot_malloc(5 << 20);
  for (int i = 0; i < 64; i++)
    allot_free(p[i]);
  allot_free(big);
  allot_stats_t st;
  allot_stats_get(&st);
  printf("mallocs=%zu\n", st.mallocs);
  return allot_check();
}

static long value_in(const char *out, const char *name) {
  char key[64];
  snprintf(key, sizeof key, "%s=", name);
  const char *at = strstr(out, key);
  return at ? strtol(at + strlen(key), NULL, 10) : -999;
}

static char out[8192], err[8192];

/* Run the child with env; check it exited 0, that `name` has value `want`,
 * and that stderr is exactly `want_err` (NULL: empty). */
static void expect(const char *env, const char *name, long want,
                   const char *want_err) {
  int st = run_self("child", env, out, sizeof out, err, sizeof err);
  CHECK(exited_ok(st), "%s: child status %d, stderr: %s", env, st, err);
  CHECK(value_in(out, name) == want, "%s: %s=%ld, expected %ld", env, name,
        value_in(out, name), want);
  if (want_err)
    CHECK(strcmp(err, want_err) == 0, "%s: stderr\n  %s  expected\n  %s", env,
          err, want_err);
  else
    CHECK(err[0] == 0, "%s: unexpected stderr: %s", env, err);
}

static void test_api(void) {
  for (size_t i = 0; i < NKNOWN; i++) {
    const char *name = allot_option_name(known[i].o);
    CHECK(name && strcmp(name, known[i].name) == 0, "option %d is %s",
          (int)known[i].o, name ? name : "(null)");
  }
  for (int i = 0; i < ALLOT_OPTION_COUNT; i++) {
    const char *name = allot_option_name((allot_option_t)i);
    CHECK(name && strncmp(name, "ALLOT_", 6) == 0, "option %d has no name", i);
    if (name && !getenv(name))
      CHECK(allot_option_get((allot_option_t)i) ==
                allot_option_default((allot_option_t)i),
            "%s: %ld, default %ld", name, allot_option_get((allot_option_t)i),
            allot_option_default((allot_option_t)i));
  }
  CHECK(allot_option_name(ALLOT_OPTION_COUNT) == NULL, "name out of range");
  errno = 0;
  CHECK(allot_option_get(ALLOT_OPTION_COUNT) == -1 && errno == EINVAL,
        "get out of range");
  CHECK(allot_option_default(ALLOT_OPTION_PURGE_DELAY) == 50, "purge default");
  CHECK(allot_option_get(ALLOT_OPTION_SEGMENT_SIZE) == 4194304, "segment size");

  CHECK(allot_option_set(ALLOT_OPTION_PURGE_DELAY, 123) == 0 &&
            allot_option_get(ALLOT_OPTION_PURGE_DELAY) == 123,
        "purge delay set");
  CHECK(allot_option_set(ALLOT_OPTION_PURGE_DELAY, -1) == EINVAL &&
            allot_option_set(ALLOT_OPTION_PURGE_DELAY, 3600001) == EINVAL &&
            allot_option_get(ALLOT_OPTION_PURGE_DELAY) == 123,
        "purge delay range");
  CHECK(allot_option_set(ALLOT_OPTION_SEGMENT_SIZE, 8 << 20) == EINVAL &&
            allot_option_set(ALLOT_OPTION_SEGMENT_SIZE, 4 << 20) == 0,
        "segment size is fixed");
  long secure = allot_option_get(ALLOT_OPTION_SECURE);
  CHECK(allot_option_set(ALLOT_OPTION_SECURE, !secure) == EPERM &&
            allot_option_get(ALLOT_OPTION_SECURE) == secure,
        "secure mode is start-up only");
  long debug = allot_option_get(ALLOT_OPTION_DEBUG);
  CHECK(allot_option_set(ALLOT_OPTION_DEBUG, !debug) == EPERM,
        "debug mode is start-up only");
  CHECK(allot_option_set(ALLOT_OPTION_COUNT, 0) == EINVAL, "unknown option");
  /* huge pages for large mappings, then back */
  CHECK(allot_option_set(ALLOT_OPTION_HUGE_PAGES, 2) == 0, "huge pages auto");
  char *big = allot_malloc(16 << 20);
  CHECK(big != NULL, "large block with huge pages");
  memset(big, 1, 16 << 20);
  allot_free(big);
  CHECK(allot_option_set(ALLOT_OPTION_HUGE_PAGES, 3) == EINVAL &&
            allot_option_set(ALLOT_OPTION_HUGE_PAGES, 0) == 0 &&
            allot_option_set(ALLOT_OPTION_HUGE_PAGES,
                             allot_option_default(ALLOT_OPTION_HUGE_PAGES)) ==
                0,
        "huge pages range");
  CHECK(allot_option_set(ALLOT_OPTION_PURGE_THREAD, 0) == 0 &&
            allot_option_set(ALLOT_OPTION_PURGE_THREAD, 1) == 0,
        "purge thread toggles");
  CHECK(allot_option_set(ALLOT_OPTION_PURGE_DELAY, 50) == 0, "restore");
}

static void test_environment(void) {
  /* bad values: one line each, the default, normal behaviour */
  expect("ALLOT_PURGE_DELAY=abc", "ALLOT_PURGE_DELAY", 50,
         "allot: warning: ignoring invalid ALLOT_PURGE_DELAY=abc (valid: "
         "0..3600000); using 50\n");
  expect("ALLOT_PURGE_DELAY=-5", "ALLOT_PURGE_DELAY", 50,
         "allot: warning: ignoring invalid ALLOT_PURGE_DELAY=-5 (valid: "
         "0..3600000); using 50\n");
  expect("ALLOT_PURGE_DELAY=99999999999999999999999", "ALLOT_PURGE_DELAY", 50,
         "allot: warning: ignoring invalid "
         "ALLOT_PURGE_DELAY=99999999999999999999999 (valid: 0..3600000); "
         "using 50\n");
  expect("ALLOT_PURGE_THREAD=2", "ALLOT_PURGE_THREAD", 1,
         "allot: warning: ignoring invalid ALLOT_PURGE_THREAD=2 (valid: "
         "0..1); using 1\n");
  char line[256];
  long huge = allot_option_default(ALLOT_OPTION_HUGE_PAGES);
  snprintf(line, sizeof line,
           "allot: warning: ignoring invalid ALLOT_HUGE_PAGES=maybe (valid: "
           "0..2); using %ld\n",
           huge);
  expect("ALLOT_HUGE_PAGES=maybe", "ALLOT_HUGE_PAGES", huge, line);
  expect("ALLOT_SEGMENT_SIZE=8M", "ALLOT_SEGMENT_SIZE", 4194304,
         "allot: warning: ignoring invalid ALLOT_SEGMENT_SIZE=8M (fixed at "
         "4194304); using 4194304\n");
  expect("ALLOT_STATS=\x01\x02", "ALLOT_STATS", 0,
         "allot: warning: ignoring invalid ALLOT_STATS=?? (valid: 0..1); "
         "using 0\n");
  /* good values */
  expect("ALLOT_PURGE_DELAY=250", "ALLOT_PURGE_DELAY", 250, NULL);
  expect("ALLOT_PURGE_DELAY=", "ALLOT_PURGE_DELAY", 50, NULL);
  expect("ALLOT_HUGE_PAGES=auto", "ALLOT_HUGE_PAGES", 2, NULL);
  expect("ALLOT_HUGE_PAGES=On", "ALLOT_HUGE_PAGES", 1, NULL);
  expect("ALLOT_HUGE_PAGES=off", "ALLOT_HUGE_PAGES", 0, NULL);
  expect("ALLOT_USE_BRK=yes", "ALLOT_USE_BRK", 1, NULL);
  expect("ALLOT_PURGE_THREAD=off", "ALLOT_PURGE_THREAD", 0, NULL);
  expect("ALLOT_SEGMENT_SIZE=4MiB", "ALLOT_SEGMENT_SIZE", 4194304, NULL);
  expect("ALLOT_SEGMENT_SIZE=4194304", "ALLOT_SEGMENT_SIZE", 4194304, NULL);

  /* statistics mode from the start counts every malloc */
  int st = run_self("child", "ALLOT_STATS=1", out, sizeof out, err, sizeof err);
  CHECK(exited_ok(st) && value_in(out, "ALLOT_STATS") == 1 &&
            value_in(out, "mallocs") >= 65,
        "ALLOT_STATS=1: %s", out);
  /* statistics at exit, as text and as JSON, on stderr */
  st =
      run_self("child", "ALLOT_SHOW_STATS=1", out, sizeof out, err, sizeof err);
  CHECK(exited_ok(st) && strncmp(err, "allot statistics (", 18) == 0 &&
            strstr(err, "  reserved "),
        "ALLOT_SHOW_STATS=1: %s", err);
  st = run_self("child", "ALLOT_SHOW_STATS=json", out, sizeof out, err,
                sizeof err);
  CHECK(exited_ok(st) && strncmp(err, "{\"in_use\":", 10) == 0 &&
            strstr(err, "]}\n"),
        "ALLOT_SHOW_STATS=json: %s", err);
  /* verbose: the settings that differ from the defaults */
  setenv("ALLOT_VERBOSE", "1", 1);
  st = run_self("child", "ALLOT_PURGE_DELAY=7", out, sizeof out, err,
                sizeof err);
  unsetenv("ALLOT_VERBOSE");
  CHECK(exited_ok(st) && strstr(err, "allot: option ALLOT_VERBOSE=1\n") &&
            strstr(err, "allot: option ALLOT_PURGE_DELAY=7\n"),
        "ALLOT_VERBOSE=1: %s", err);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "child") == 0) return child();
  test_api();
  test_environment();
  return finish("test_api_options");
}
