/* procstatus.h: one field of /proc/self/status, read without malloc (the
 * helpers run inside programs whose allocator is under observation). Shared
 * by the inspect and record shims and by the replayer. */
#ifndef ALLOT_TOOLS_PROCSTATUS_H
#define ALLOT_TOOLS_PROCSTATUS_H

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* "VmHWM", "VmRSS", ...: the value in kB, or -1 */
static inline long proc_status_kib(const char *field) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *p = strstr(buf, field);
  if (!p) return -1;
  p += strlen(field);
  while (*p == ' ' || *p == '\t' || *p == ':')
    p++;
  return strtol(p, NULL, 10);
}

#endif
