/* test_api_common.h: helpers shared by the test_api_*.c programs — a CHECK
 * that counts failures instead of stopping, and running code or this program
 * again in a child process with its stderr captured (for aborts, warnings and
 * output at exit). */
#ifndef TEST_API_COMMON_H
#define TEST_API_COMMON_H

#include <allot.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNUSED __attribute__((unused))

static int failures;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      failures++;                                                              \
    }                                                                          \
  } while (0)

UNUSED static int finish(const char *name) {
  if (failures) {
    fprintf(stderr, "%s: %d check(s) failed\n", name, failures);
    return 1;
  }
  printf("%s: ok\n", name);
  return 0;
}

/* Read all of fd into buf (NUL-terminated), then close it. */
UNUSED static void slurp(int fd, char *buf, size_t len) {
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, len - 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
    if (n == len - 1) break;
  }
  buf[n] = 0;
  close(fd);
}

/* Run fn(arg) in a forked child whose stderr goes to err; returns the wait
 * status. */
UNUSED static int in_child(void (*fn)(void *), void *arg, char *err,
                           size_t len) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    fn(arg);
    _exit(0);
  }
  close(fds[1]);
  slurp(fds[0], err, len);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

/* Run this program again as `self <arg>` with env_kv ("NAME=value", or NULL)
 * added to the environment; stderr into err, stdout into out (either may be
 * NULL). Returns the wait status. */
UNUSED static int run_self(const char *arg, const char *env_kv, char *out,
                           size_t out_len, char *err, size_t err_len) {
  int efd[2], ofd[2];
  if (pipe(efd) != 0 || pipe(ofd) != 0) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(efd[1], 2);
    dup2(ofd[1], 1);
    close(efd[0]);
    close(efd[1]);
    close(ofd[0]);
    close(ofd[1]);
    if (env_kv) putenv((char *)env_kv);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) _exit(126);
    self[n] = 0;
    /* cross-built tests run under an emulator (docs/testing.md, aarch64) */
    const char *emu = getenv("ALLOT_TEST_EMULATOR");
    if (emu && *emu) execlp(emu, emu, self, arg, (char *)NULL);
    execl(self, self, arg, (char *)NULL);
    _exit(127);
  }
  close(efd[1]);
  close(ofd[1]);
  /* the child writes little: drain stdout, then stderr */
  char sink[256];
  if (out)
    slurp(ofd[0], out, out_len);
  else
    slurp(ofd[0], sink, sizeof sink);
  if (err)
    slurp(efd[0], err, err_len);
  else
    slurp(efd[0], sink, sizeof sink);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

UNUSED static int aborted(int status) {
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

UNUSED static int exited_ok(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Debug and secure mode (and any AddressSanitizer build, where allot's
 * checked mode is always on) give blocks a trailer and hold freed ones in a
 * quarantine: exact sizes and "freed at once" do not apply there. */
UNUSED static int checked_mode(void) {
#if defined(__SANITIZE_ADDRESS__)
  return 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return 1;
#endif
#endif
  return allot_option_get(ALLOT_OPTION_DEBUG) ||
         allot_option_get(ALLOT_OPTION_SECURE);
}

/* Deterministic pseudo-random numbers (xorshift64*). */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
UNUSED static uint64_t rnd(void) {
  uint64_t x = rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545F4914F6CDD1Dull;
}
UNUSED static size_t rnd_below(size_t n) {
  return (size_t)(rnd() % n);
}

#endif
