/* checked.c: malloc and free in checked mode.
 *
 * When debugging, statistics or secure mode is on, g.slow_mode routes every
 * small malloc here (no page is ever made current, so the fast path always
 * misses) and every free through checked_free (one predictable test in
 * free). The default mode never runs this code, so its checks cost nothing
 * there.
 *
 * Debug mode (ALLOT_DEBUG=1) fills new blocks with 0xA5 and freed blocks with
 * 0xDD (past the two words a free small block keeps its links in), so reads
 * of uninitialised or freed memory show a recognisable pattern. */
#include "internal.h"

#define FILL_NEW 0xA5
#define FILL_FREED 0xDD

static size_t block_usable(const void *p) {
  return allot_malloc_usable_size(p);
}

void *checked_malloc(heap_t *h, size_t cls, size_t size) {
  void *p = page_alloc_block(h, cls);
  if (!p) return NULL;
  if (g.debug) memset(p, FILL_NEW, class_size[cls]);
  (void)size;
  return p;
}

void *checked_big(void *p, size_t size) {
  if (g.debug) memset(p, FILL_NEW, size);
  return p;
}

void checked_free(void *p, const char *fn) {
  if (!p) return;
  if (g.debug) {
    size_t u = block_usable(p); /* validates p: faults on a bad pointer */
    if (u > sizeof(block_t))
      memset((uint8_t *)p + sizeof(block_t), FILL_FREED, u - sizeof(block_t));
  }
  free_unchecked(p, fn);
}
