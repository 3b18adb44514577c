/* test_tools_ownmalloc.c: a program with an allocator of its own (a bump
 * allocator over a static arena), as redis carries jemalloc: its malloc
 * comes before any LD_PRELOAD, and `allot doctor PROG` has to say so. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static _Alignas(16) char arena[1 << 20];
static size_t used;

void *malloc(size_t size) {
  size = (size + 15) & ~(size_t)15;
  if (used + size > sizeof arena) return NULL;
  used += size;
  return arena + used - size;
}
void free(void *p) {
  (void)p;
}
void *calloc(size_t n, size_t size) {
  void *p = malloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}
void *realloc(void *p, size_t size) {
  void *q = malloc(size);
  if (q && p) memcpy(q, p, size); /* the arena is large enough to over-read */
  return q;
}

int main(void) {
  puts("ownmalloc: ok");
  return 0;
}
