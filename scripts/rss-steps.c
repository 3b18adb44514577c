/* rss-steps.c: how far the peak RSS that wait4() reports (ru_maxrss, what
 * `allot bench` reads) lies from the VmHWM a child reads from
 * /proc/self/status just before it exits, for children that touch N pages
 * of anonymous memory. Prints VmHWM/ru_maxrss and the difference, in kB,
 * for 6 children. Both come from the kernel's per-CPU RSS counters, read
 * without the batches in flight: docs/memory.md, "What the benchmark's
 * peak RSS shows".
 *   cc -O2 -o rss-steps scripts/rss-steps.c && ./rss-steps 1000 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static long vm_hwm_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) v = atol(line + 6);
  if (f) fclose(f);
  return v;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: rss-steps PAGES\n");
    return 2;
  }
  long n = atol(argv[1]);
  for (int rep = 0; rep < 6; rep++) {
    int fd[2];
    if (pipe(fd) != 0) return 1;
    pid_t pid = fork();
    if (pid == 0) {
      char *p = mmap(NULL, (size_t)n * 4096 + 4096, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) _exit(1);
      for (long i = 0; i < n; i++)
        p[i * 4096] = 1;
      long h = vm_hwm_kib();
      if (write(fd[1], &h, sizeof h) != sizeof h) _exit(1);
      _exit(0);
    }
    long h = 0;
    int st;
    struct rusage ru;
    if (read(fd[0], &h, sizeof h) != sizeof h || wait4(pid, &st, 0, &ru) < 0)
      return 1;
    printf("%ld/%ld(%+ld) ", h, ru.ru_maxrss, ru.ru_maxrss - h);
    close(fd[0]);
    close(fd[1]);
  }
  printf("\n");
  return 0;
}
