/* peakrss.c: a program's peak resident set, counted exactly.
 *
 *   peakrss [-m MAPFILE] PROG [ARGS...]
 *
 * Runs PROG (the environment as given, LD_PRELOAD included) and reads
 * /proc/PID/smaps, which walks the page tables and is exact, as fast as it
 * can while PROG runs, then once more when ptrace stops PROG at its exit
 * (after its atexit handlers and destructors, before the kernel tears the
 * address space down). Prints to stderr
 *
 *   peak KB (anon KB, file KB) exit KB (anon KB, file KB) reads N
 *
 * the largest total seen and its anonymous and file-backed parts, and the
 * same at exit. With -m, the smaps text of the peak goes to MAPFILE, to see
 * which mappings held it.
 *
 * Why: the kernel keeps RSS in per-CPU counters that it folds in batches,
 * and ru_maxrss (what `allot bench` and bench/spawn report) reads them
 * unfolded: for small programs it is off by up to ~170 kB either way
 * (docs/memory.md). The polling can miss a peak shorter than one read (a
 * read of a small process's smaps takes well under a millisecond; N says
 * how many were made), and it takes a CPU of its own, so use it for memory,
 * never for time. Linux only; needs ptrace of its own child. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF (4 << 20)
static char buf[BUF], best[BUF];
static long peak = -1, peak_anon, last_anon;

static long sum_field(const char *text, const char *field) {
  long total = 0;
  size_t n = strlen(field);
  for (const char *s = text; (s = strstr(s, field)); s += n)
    if (s == text || s[-1] == '\n') total += strtol(s + n, NULL, 10);
  return total;
}

/* One exact reading: total RSS in kB, or -1 once the process is gone. */
static long read_smaps(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  size_t n = 0;
  ssize_t r;
  while (n < BUF - 1 && (r = read(fd, buf + n, BUF - 1 - n)) > 0)
    n += (size_t)r;
  close(fd);
  buf[n] = 0;
  if (!n) return -1;
  long total = sum_field(buf, "Rss:");
  last_anon = sum_field(buf, "Anonymous:");
  if (total > peak) {
    peak = total;
    peak_anon = last_anon;
    memcpy(best, buf, n + 1);
  }
  return total;
}

int main(int argc, char **argv) {
  const char *mapfile = NULL;
  int first = 1;
  if (argc > 2 && strcmp(argv[1], "-m") == 0) {
    mapfile = argv[2];
    first = 3;
  }
  if (first >= argc) {
    fprintf(stderr, "usage: peakrss [-m MAPFILE] PROG [ARGS...]\n");
    return 2;
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("peakrss: fork");
    return 2;
  }
  if (pid == 0) {
    ptrace(PTRACE_TRACEME, 0, NULL, NULL);
    raise(SIGSTOP);
    execvp(argv[first], argv + first);
    perror("peakrss: exec");
    _exit(127);
  }
  int st;
  waitpid(pid, &st, 0);
  ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *)(long)PTRACE_O_TRACEEXIT);
  ptrace(PTRACE_CONT, pid, NULL, NULL);
  long reads = 0, at_exit = -1, exit_anon = 0;
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) {
      if (WIFSTOPPED(st)) {
        int sig = WSTOPSIG(st);
        if (sig == SIGTRAP && (st >> 16) == PTRACE_EVENT_EXIT) {
          at_exit = read_smaps(pid);
          exit_anon = last_anon;
          sig = 0;
        } else if (sig == SIGTRAP) {
          sig = 0; /* the exec's */
        }
        ptrace(PTRACE_CONT, pid, NULL, (void *)(long)sig);
        continue;
      }
      break;
    }
    if (read_smaps(pid) >= 0) reads++;
  }
  fprintf(stderr,
          "peak %ld kB (anon %ld, file %ld) exit %ld kB (anon %ld, file %ld) "
          "reads %ld\n",
          peak, peak_anon, peak - peak_anon, at_exit, exit_anon,
          at_exit - exit_anon, reads);
  if (mapfile) {
    FILE *f = fopen(mapfile, "w");
    if (!f) {
      perror("peakrss: map file");
      return 2;
    }
    fputs(best, f);
    fclose(f);
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}
