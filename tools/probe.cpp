/* probe.cpp: allot-probe, the program `allot doctor` runs with liballot.so
 * preloaded. It calls every allocation entry point a program can reach -- C,
 * POSIX, glibc, glibc's __libc_* names, C++ operators new and delete in all
 * their forms, and libc functions that allocate for their caller -- and asks
 * allot (allot_owns, found with dlsym so the probe itself links no allot)
 * whether each block is allot's, or for a free, whether allot saw the block
 * go. Each check runs in a forked child, so one that crashes (a foreign
 * free() aborting in glibc) is reported and the others still run.
 *
 * Output, one line each: "ok NAME", "FAIL NAME: why", "info KEY VALUE".
 * Exit status: 0 all ok, 1 a check failed, 3 allot is not loaded. */
#include <dlfcn.h>
#include <malloc.h>
#include <new>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allot.h"

/* Results escape here, so the compiler can drop no call. */
static void *volatile sink;

static int (*owns)(const void *);
static void *(*a_malloc)(size_t);
static void *(*a_aligned)(size_t, size_t);
static size_t (*a_usable)(const void *);

static char why[256];

static bool fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return false;
}

static bool mine(void *p, size_t align = 1) {
  sink = p;
  if (!p) return fail("returned NULL");
  if (!owns(p)) return fail("block %p is not allot's", p);
  if ((uintptr_t)p % align) return fail("%p not aligned to %zu", p, align);
  return true;
}

/* a block made by allot directly, then given to the entry point under test */
static void *allot_block(size_t size, size_t align = 0) {
  void *p = align ? a_aligned(align, size) : a_malloc(size);
  sink = p;
  return p;
}

/* by address: the block is gone, only asking allot about it is allowed */
static bool gone(uintptr_t addr) {
  if (owns((const void *)addr))
    return fail("allot still holds %#lx after the call", (unsigned long)addr);
  return true;
}

typedef void *(*sym_alloc1)(size_t);
static void *sym(const char *name) {
  return dlsym(RTLD_DEFAULT, name);
}

/* ---- the checks ---------------------------------------------------------- */

static bool c_malloc() {
  return mine(malloc(100));
}
static bool c_free() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  free(p);
  return gone(a);
}
static bool c_calloc() {
  unsigned char *p = (unsigned char *)calloc(10, 100);
  if (!mine(p)) return false;
  for (int i = 0; i < 1000; i++)
    if (p[i]) return fail("calloc memory not zeroed");
  return true;
}
static bool c_realloc() {
  void *p = realloc(NULL, 50);
  if (!mine(p)) return false;
  void *q = realloc(p, 100000);
  return mine(q);
}
static bool c_realloc_free() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  void *q = realloc(p, 0);
  sink = q;
  return gone(a);
}
static bool c_reallocarray() {
  void *p = reallocarray(NULL, 10, 10);
  if (!mine(p)) return false;
  return mine(reallocarray(p, 100, 100));
}
static bool c_aligned_alloc() {
  return mine(aligned_alloc(256, 1024), 256);
}
static bool c_posix_memalign() {
  void *p = NULL;
  int rc = posix_memalign(&p, 4096, 100);
  if (rc) return fail("returned %d", rc);
  return mine(p, 4096);
}
static bool c_memalign() {
  return mine(memalign(64, 100), 64);
}
static bool c_valloc() {
  return mine(valloc(100), (size_t)sysconf(_SC_PAGESIZE));
}
static bool c_pvalloc() {
  return mine(pvalloc(100), (size_t)sysconf(_SC_PAGESIZE));
}
static bool c_usable_size() {
  void *p = allot_block(100);
  size_t u = malloc_usable_size(p), want = a_usable(p);
  if (u != want) return fail("%zu, allot says %zu", u, want);
  return true;
}
static bool c_large() {
  return mine(malloc((size_t)16 << 20));
}
static bool c_libc_names() {
  const char *names[] = {"__libc_malloc", "__libc_calloc", "__libc_memalign",
                         "__libc_valloc", "__libc_pvalloc"};
  for (const char *n : names) {
    void *f = sym(n);
    if (!f) continue; /* not every libc has every name */
    void *p;
    if (!strcmp(n, "__libc_calloc"))
      p = ((void *(*)(size_t, size_t))f)(4, 16);
    else if (!strcmp(n, "__libc_memalign"))
      p = ((void *(*)(size_t, size_t))f)(64, 64);
    else
      p = ((sym_alloc1)f)(64);
    if (!mine(p)) return fail("%s: %s", n, why);
  }
  void *f = sym("__libc_free");
  if (f) {
    void *p = allot_block(64);
    uintptr_t a = (uintptr_t)p;
    ((void (*)(void *))f)(p);
    if (!gone(a)) return fail("__libc_free: %s", why);
  }
  return true;
}
static bool c_strdup() {
  return mine(strdup("interposition"));
}
static bool c_asprintf() {
  char *s = NULL;
  if (asprintf(&s, "%0200d", 7) < 0) return fail("asprintf failed");
  return mine(s);
}
static bool c_getline() {
  FILE *f = fmemopen((void *)"a line of text\n", 15, "r");
  if (!f) return fail("fmemopen failed");
  char *line = NULL;
  size_t cap = 0;
  if (getline(&line, &cap, f) < 0) return fail("getline failed");
  return mine(line);
}
static bool c_fopen() {
  /* glibc allocates the FILE with malloc */
  FILE *f = fopen("/dev/null", "r");
  if (!f) return fail("fopen failed");
  return mine(f);
}
static void *thread_main(void *arg) {
  (void)arg;
  return malloc(200);
}
static bool c_thread() {
  pthread_t t;
  void *p = NULL;
  if (pthread_create(&t, NULL, thread_main, NULL)) return fail("no thread");
  pthread_join(t, &p);
  return mine(p);
}
static bool c_mallinfo2() {
  struct allot_mallinfo2 (*am)(void) =
      (struct allot_mallinfo2(*)(void))sym("allot_mallinfo2");
  if (!am) return fail("allot_mallinfo2 not found");
  struct mallinfo2 m = mallinfo2();
  struct allot_mallinfo2 a = am();
  if (m.arena != a.arena)
    return fail("arena %zu, allot says %zu", m.arena, a.arena);
  return true;
}

/* C++ */
static bool c_new() {
  return mine(::operator new(100));
}
static bool c_new_array() {
  return mine(::operator new[](100));
}
static bool c_new_aligned() {
  return mine(::operator new(100, std::align_val_t(256)), 256);
}
static bool c_new_array_aligned() {
  return mine(::operator new[](100, std::align_val_t(256)), 256);
}
static bool c_new_nothrow() {
  return mine(::operator new(100, std::nothrow));
}
static bool c_new_array_nothrow() {
  return mine(::operator new[](100, std::nothrow));
}
static bool c_new_aligned_nothrow() {
  return mine(::operator new(100, std::align_val_t(256), std::nothrow), 256);
}
static bool c_new_array_aligned_nothrow() {
  return mine(::operator new[](100, std::align_val_t(256), std::nothrow), 256);
}
static bool c_delete() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  ::operator delete(p);
  return gone(a);
}
static bool c_delete_array() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  ::operator delete[](p);
  return gone(a);
}
static bool c_delete_sized() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  ::operator delete(p, 100);
  return gone(a);
}
static bool c_delete_array_sized() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  ::operator delete[](p, 100);
  return gone(a);
}
static bool c_delete_aligned() {
  void *p = allot_block(100, 256);
  uintptr_t a = (uintptr_t)p;
  ::operator delete(p, std::align_val_t(256));
  return gone(a);
}
static bool c_delete_array_aligned() {
  void *p = allot_block(100, 256);
  uintptr_t a = (uintptr_t)p;
  ::operator delete[](p, std::align_val_t(256));
  return gone(a);
}
static bool c_delete_sized_aligned() {
  void *p = allot_block(100, 256);
  uintptr_t a = (uintptr_t)p;
  ::operator delete(p, 100, std::align_val_t(256));
  return gone(a);
}
static bool c_delete_array_sized_aligned() {
  void *p = allot_block(100, 256);
  uintptr_t a = (uintptr_t)p;
  ::operator delete[](p, 100, std::align_val_t(256));
  return gone(a);
}
static bool c_delete_nothrow() {
  void *p = allot_block(100);
  uintptr_t a = (uintptr_t)p;
  ::operator delete(p, std::nothrow);
  if (!gone(a)) return false;
  p = allot_block(100);
  a = (uintptr_t)p;
  ::operator delete[](p, std::nothrow);
  if (!gone(a)) return false;
  p = allot_block(100, 256);
  a = (uintptr_t)p;
  ::operator delete(p, std::align_val_t(256), std::nothrow);
  if (!gone(a)) return false;
  p = allot_block(100, 256);
  a = (uintptr_t)p;
  ::operator delete[](p, std::align_val_t(256), std::nothrow);
  return gone(a);
}

struct check {
  const char *name;
  bool (*fn)();
};

static const check checks[] = {
    {"malloc", c_malloc},
    {"free", c_free},
    {"calloc", c_calloc},
    {"realloc", c_realloc},
    {"realloc-to-zero", c_realloc_free},
    {"reallocarray", c_reallocarray},
    {"aligned_alloc", c_aligned_alloc},
    {"posix_memalign", c_posix_memalign},
    {"memalign", c_memalign},
    {"valloc", c_valloc},
    {"pvalloc", c_pvalloc},
    {"malloc_usable_size", c_usable_size},
    {"malloc-large", c_large},
    {"__libc_*", c_libc_names},
    {"libc-strdup", c_strdup},
    {"libc-asprintf", c_asprintf},
    {"libc-getline", c_getline},
    {"libc-fopen", c_fopen},
    {"thread-malloc", c_thread},
    {"mallinfo2", c_mallinfo2},
    {"new", c_new},
    {"new[]", c_new_array},
    {"new-aligned", c_new_aligned},
    {"new[]-aligned", c_new_array_aligned},
    {"new-nothrow", c_new_nothrow},
    {"new[]-nothrow", c_new_array_nothrow},
    {"new-aligned-nothrow", c_new_aligned_nothrow},
    {"new[]-aligned-nothrow", c_new_array_aligned_nothrow},
    {"delete", c_delete},
    {"delete[]", c_delete_array},
    {"delete-sized", c_delete_sized},
    {"delete[]-sized", c_delete_array_sized},
    {"delete-aligned", c_delete_aligned},
    {"delete[]-aligned", c_delete_array_aligned},
    {"delete-sized-aligned", c_delete_sized_aligned},
    {"delete[]-sized-aligned", c_delete_array_sized_aligned},
    {"delete-nothrow", c_delete_nothrow},
};

static int run_check(const check &c) {
  int fds[2];
  if (pipe(fds) != 0) return 1;
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    why[0] = 0;
    bool ok = c.fn();
    if (!ok) {
      ssize_t r = write(fds[1], why, strlen(why));
      (void)r;
    }
    _exit(ok ? 0 : 1);
  }
  close(fds[1]);
  char msg[256];
  ssize_t n = pid > 0 ? read(fds[0], msg, sizeof msg - 1) : -1;
  close(fds[0]);
  msg[n > 0 ? n : 0] = 0;
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0) {
    printf("FAIL %s: could not fork\n", c.name);
    return 1;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    printf("ok %s\n", c.name);
    return 0;
  }
  if (WIFSIGNALED(status))
    printf("FAIL %s: crashed (%s): another allocator got an allot block, "
           "or the reverse\n",
           c.name, strsignal(WTERMSIG(status)));
  else
    printf("FAIL %s: %s\n", c.name, msg[0] ? msg : "failed");
  return 1;
}

int main(int argc, char **argv) {
  owns = (int (*)(const void *))sym("allot_owns");
  a_malloc = (void *(*)(size_t))sym("allot_malloc");
  a_aligned = (void *(*)(size_t, size_t))sym("allot_aligned_alloc");
  a_usable = (size_t(*)(const void *))sym("allot_malloc_usable_size");
  if (!owns || !a_malloc || !a_aligned || !a_usable) {
    printf("FAIL loaded: allot is not in this process (allot_owns not "
           "found): LD_PRELOAD did not take effect\n");
    return 3;
  }
  int (*version)(void) = (int (*)(void))sym("allot_version");
  printf("info version %d\n", version ? version() : -1);
  Dl_info di;
  if (dladdr((void *)owns, &di) && di.dli_fname)
    printf("info library %s\n", di.dli_fname);
  long (*opt_get)(allot_option_t) =
      (long (*)(allot_option_t))sym("allot_option_get");
  const char *(*opt_name)(allot_option_t) =
      (const char *(*)(allot_option_t))sym("allot_option_name");
  if (opt_get && opt_name)
    for (int i = 0; i < ALLOT_OPTION_COUNT; i++) {
      const char *n = opt_name((allot_option_t)i);
      if (n) printf("info option %s %ld\n", n, opt_get((allot_option_t)i));
    }
  int failed = 0;
  for (const check &c : checks) {
    if (argc > 1) { /* only the checks named */
      bool wanted = false;
      for (int i = 1; i < argc; i++)
        wanted |= !strcmp(argv[i], c.name);
      if (!wanted) continue;
    }
    failed += run_check(c);
  }
  return failed ? 1 : 0;
}
