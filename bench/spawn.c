/* spawn.c: runs one command and reports its wall time and peak RSS; the
 * process launcher of `allot bench`.
 *
 * Why a separate program: Linux carries a process's peak RSS (ru_maxrss)
 * across fork and exec, so every child of the Python runner would report
 * at least the runner's own ~25 MiB. This launcher is small; the command it
 * forks starts from its small image, and it reads the command's rusage
 * itself with wait4.
 *
 *   spawn STATFILE [NAME=VALUE]... -- PROG ARGS...
 *
 * The NAME=VALUE pairs are set in the command's environment only (the
 * runner passes LD_PRELOAD this way, so the launcher itself keeps the
 * system allocator). STATFILE receives one line,
 *   STATUS MAXRSS_KIB WALL_SECONDS
 * STATUS being the exit code, or minus the signal that killed the command
 * (127: it could not be started). Exit status: 0 once STATFILE is written,
 * 2 for bad usage, 1 if the command could not be forked. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void usage(void) {
  fprintf(stderr, "usage: spawn STATFILE [NAME=VALUE]... -- PROG ARGS...\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 4) usage();
  const char *statfile = argv[1];
  int i = 2;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (!strchr(argv[i], '=') || argv[i][0] == '=') usage();
  if (i >= argc - 1) usage();
  int first_env = 2, end_env = i;
  char **cmd = &argv[i + 1];

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t pid = fork();
  if (pid < 0) {
    perror("spawn: fork");
    return 1;
  }
  if (pid == 0) {
    for (int k = first_env; k < end_env; k++)
      putenv(argv[k]);
    execvp(cmd[0], cmd);
    fprintf(stderr, "spawn: %s: %s\n", cmd[0], strerror(errno));
    _exit(127);
  }
  int status;
  struct rusage ru;
  while (wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) {
      perror("spawn: wait4");
      return 1;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double wall = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);

  /* Written to a temporary name and renamed, so the runner never reads a
   * half-written line. */
  size_t n = strlen(statfile) + 8;
  char *tmp = malloc(n);
  if (!tmp) return 1;
  snprintf(tmp, n, "%s.tmp", statfile);
  FILE *f = fopen(tmp, "w");
  if (!f || fprintf(f, "%d %ld %.6f\n", code, ru.ru_maxrss, wall) < 0 ||
      fclose(f) != 0 || rename(tmp, statfile) != 0) {
    perror("spawn: writing the stat file");
    return 1;
  }
  free(tmp);
  return 0;
}
