/* test_tools_hijack.c: a library `allot doctor` is told to preload ahead of
 * allot (--preload-first) in test/tools.cmake. It answers two entry points
 * itself, memalign and operator new[], with memory allot never saw, so the
 * doctor has to name exactly those two as not reaching allot. */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/mman.h>

static void *mapped(size_t size) {
  void *p = mmap(NULL, size + 4096, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

__attribute__((visibility("default"))) void *memalign(size_t align,
                                                      size_t size) {
  (void)align; /* page-aligned: fine for any alignment the probe asks */
  return mapped(size);
}

/* operator new[](size_t) */
__attribute__((visibility("default"))) void *_Znam(size_t size) {
  return mapped(size);
}
