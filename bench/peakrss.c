/* peakrss.c: a program's peak resident set, counted exactly.
 *
 *   peakrss [-m MAPFILE] PROG [ARGS...]
 *
 * Runs PROG (the environment as given, LD_PRELOAD included) and reads
 * /proc/PID/smaps, which walks the page tables and is exact, as fast as it
 * can while PROG runs, then once more when ptrace stops PROG at its exit
 * (after its atexit handlers and destructors, before the kernel tears the
 * address space down). The processes PROG starts (fork, vfork, and so
 * posix_spawn: a compiler driver's cc1 and as) are followed the same way.
 * Prints to stderr
 *
 *   peak KB (anon KB, file KB) exit KB (anon KB, file KB) reads N procs P
 *
 * the largest total any one of the P processes reached, with its anonymous
 * and file-backed parts (as ru_maxrss is the largest of a process and its
 * children, not their sum), and PROG's own at its exit. With -m, the smaps
 * text of the peak goes to MAPFILE, to see which mappings held it.
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

/* The processes followed (thread group leaders: a program's threads share
 * its memory and are not traced themselves). */
#define MAX_PROCS 1024
static pid_t procs[MAX_PROCS];
static int nprocs, seen_procs;

static void add_proc(pid_t p) {
  for (int i = 0; i < nprocs; i++)
    if (procs[i] == p) return;
  if (nprocs < MAX_PROCS) procs[nprocs++] = p;
  seen_procs++;
}

static void drop_proc(pid_t p) {
  for (int i = 0; i < nprocs; i++)
    if (procs[i] == p) {
      procs[i] = procs[--nprocs];
      return;
    }
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
  int st, main_st = 0;
  waitpid(pid, &st, 0);
  long opts = PTRACE_O_TRACEEXIT | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK |
              PTRACE_O_EXITKILL;
  ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *)opts);
  ptrace(PTRACE_CONT, pid, NULL, NULL);
  add_proc(pid);
  long reads = 0, at_exit = -1, exit_anon = 0;
  for (;;) {
    pid_t w = waitpid(-1, &st, WNOHANG | __WALL);
    if (w < 0) break; /* no tracee left */
    if (w > 0) {
      if (WIFSTOPPED(st)) {
        int sig = WSTOPSIG(st), event = st >> 16;
        if (event == PTRACE_EVENT_EXIT) {
          long kb = read_smaps(w);
          if (w == pid) {
            at_exit = kb;
            exit_anon = last_anon;
          }
          sig = 0;
        } else if (event == PTRACE_EVENT_FORK ||
                   event == PTRACE_EVENT_VFORK) {
          unsigned long child = 0;
          ptrace(PTRACE_GETEVENTMSG, w, NULL, &child);
          add_proc((pid_t)child); /* it inherits the options */
          sig = 0;
        } else if (sig == SIGTRAP || (sig == SIGSTOP && w != pid)) {
          sig = 0; /* an exec's trap, a new process's first stop */
        }
        ptrace(PTRACE_CONT, w, NULL, (void *)(long)sig);
        continue;
      }
      drop_proc(w); /* exited or killed */
      if (w == pid) main_st = st;
      continue;
    }
    for (int i = 0; i < nprocs; i++)
      if (read_smaps(procs[i]) >= 0) reads++;
  }
  fprintf(stderr,
          "peak %ld kB (anon %ld, file %ld) exit %ld kB (anon %ld, file %ld) "
          "reads %ld procs %d\n",
          peak, peak_anon, peak - peak_anon, at_exit, exit_anon,
          at_exit - exit_anon, reads, seen_procs);
  if (mapfile) {
    FILE *f = fopen(mapfile, "w");
    if (!f) {
      perror("peakrss: map file");
      return 2;
    }
    fputs(best, f);
    fclose(f);
  }
  if (WIFEXITED(main_st)) return WEXITSTATUS(main_st);
  return 128 + (WIFSIGNALED(main_st) ? WTERMSIG(main_st) : 0);
}
