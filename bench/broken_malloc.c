/* broken_malloc.c: a deliberately broken allocator, for testing that the
 * benchmark suite fails a broken allocator instead of timing it.
 *
 * It works (everything is eventually glibc's malloc) except that malloc,
 * calloc and realloc return blocks aligned to 8 bytes only, breaking the
 * 16-byte guarantee of x86-64 and aarch64 malloc. The micro workload
 * checks that guarantee, so `allot bench` must report it as FAIL. Every
 * block has a header just below it with the address glibc gave and the
 * size asked for, so free, realloc and the aligned functions stay
 * consistent with each other. Built as a test helper only. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);

typedef struct {
  void *base;
  size_t size;
} header;

/* p = base + offset, header right below p. */
static void *finish(char *base, char *p, size_t size) {
  header *h = (header *)(p - sizeof(header));
  h->base = base;
  h->size = size;
  return p;
}

static header *head(void *p) {
  return (header *)((char *)p - sizeof(header));
}

void *malloc(size_t size) {
  if (size > SIZE_MAX / 2) return NULL;
  char *base = __libc_malloc(size + 40);
  if (!base) return NULL;
  /* glibc's blocks are 16-aligned: +24 is 8 mod 16. */
  return finish(base, base + 24, size);
}

void free(void *p) {
  if (p) __libc_free(head(p)->base);
}

void *calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / 4 / size) return NULL;
  void *p = malloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}

void *realloc(void *old, size_t size) {
  if (!old) return malloc(size);
  if (size == 0) {
    free(old);
    return NULL;
  }
  void *p = malloc(size);
  if (!p) return NULL;
  size_t keep = head(old)->size < size ? head(old)->size : size;
  memcpy(p, old, keep);
  free(old);
  return p;
}

void *memalign(size_t align, size_t size) {
  if (align < 16) align = 16;
  if (align & (align - 1) || size > SIZE_MAX / 2 || align > SIZE_MAX / 4)
    return NULL;
  char *base = __libc_malloc(size + align + sizeof(header));
  if (!base) return NULL;
  uintptr_t p = ((uintptr_t)base + sizeof(header) + align - 1) & ~(align - 1);
  return finish(base, (char *)p, size);
}

void *aligned_alloc(size_t align, size_t size) {
  return memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size) {
  if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
  void *p = memalign(align, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void *valloc(size_t size) {
  return memalign(4096, size);
}

void *pvalloc(size_t size) {
  return memalign(4096, (size + 4095) & ~4095ul);
}

size_t malloc_usable_size(void *p) {
  return p ? head(p)->size : 0;
}
