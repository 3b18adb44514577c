/* pagesize.c: allot on a kernel whose pages are not 4 KiB stops at its
 * first call with a one-line message and abort() (os.c, docs/design.md "Page
 * size"), before it maps anything; on a 4 KiB kernel it works.
 *
 * Linked with allot-testhooks (prefixed API): allot_test_page_size() makes
 * allot see another page size. Each case runs in a forked child (this
 * process stays single-threaded and never calls allot itself), whose
 * standard error the parent reads.
 *
 *   hostile_pagesize   also under qemu-aarch64 -p 65536 (a kernel page of
 *                      64 KiB, test/verify.cmake), where the real size is
 *                      what allot must refuse */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allot.h"

void allot_test_page_size(unsigned long size);

static int errors;

/* Runs allot in a child that sees pages of fake bytes (0: the kernel's);
 * returns its wait status, its standard error in err. */
static int run(unsigned long fake, char *err, size_t cap) {
  int fds[2];
  if (pipe(fds) != 0) {
    perror("pagesize: pipe");
    exit(1);
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    perror("pagesize: fork");
    exit(1);
  }
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    if (fake) allot_test_page_size(fake);
    char *p = allot_malloc(100);
    if (!p) _exit(3);
    memset(p, 1, 100);
    allot_free(p);
    void *big = allot_malloc((size_t)8 << 20);
    if (!big) _exit(4);
    allot_free(big);
    _exit(0);
  }
  close(fds[1]);
  size_t n = 0;
  ssize_t r;
  while (n + 1 < cap && (r = read(fds[0], err + n, cap - 1 - n)) > 0)
    n += (size_t)r;
  err[n] = 0;
  close(fds[0]);
  int st;
  if (waitpid(pid, &st, 0) != pid) {
    perror("pagesize: waitpid");
    exit(1);
  }
  return st;
}

static void expect_refused(unsigned long fake, unsigned long size) {
  char err[512], want[160];
  int st = run(fake, err, sizeof err);
  snprintf(want, sizeof want,
           "allot: the kernel's page size is %lu bytes; allot needs "
           "4096-byte pages\n",
           size);
  /* the message is the first line (qemu adds one of its own after it) */
  if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT ||
      strncmp(err, want, strlen(want))) {
    fprintf(stderr,
            "pagesize: FAILED: %lu-byte pages: status 0x%x, stderr \"%s\", "
            "expected SIGABRT and \"%s\"\n",
            size, (unsigned)st, err, want);
    errors++;
  }
}

static void expect_works(void) {
  char err[512];
  int st = run(0, err, sizeof err);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || err[0]) {
    fprintf(stderr,
            "pagesize: FAILED: 4096-byte pages: status 0x%x, stderr "
            "\"%s\"\n",
            (unsigned)st, err);
    errors++;
  }
}

int main(void) {
  unsigned long real = getauxval(AT_PAGESZ);
  if (real == 4096) {
    expect_works();
    expect_refused(16384, 16384);
    expect_refused(65536, 65536);
  } else {
    expect_refused(0, real);
  }
  if (errors) return 1;
  printf("pagesize: ok (kernel pages of %lu bytes)\n", real);
  return 0;
}
