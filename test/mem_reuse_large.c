/* mem_reuse_large.c: a malloc or calloc above the medium limit (1 MiB) is cut
 * from the heap's free medium chunks when medium frees have left that much
 * resident and unused (segment.c, medium_large; docs/memory.md, "Large
 * requests from idle medium memory"), instead of a mapping of its own on top
 * of them. Checked: where the block comes from (the walk's kind), that it
 * takes no fresh memory (allot's committed bytes), that calloc's block is
 * zero though the memory was written before, that realloc moves such a block
 * to a mapping of its own (where it can grow by remapping) and keeps its
 * contents when it shrinks, that free_sized takes it with the size asked
 * for, that requests above half a segment and a heap with nothing idle still
 * get mappings, and that the heap stays consistent (allot_check).
 *
 * Runs in threads of their own. Default mode only (the test's ENVIRONMENT
 * turns the checked modes off, which never do this) and a long purge delay,
 * so the idle memory is not given back mid-test. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>

#include "test_api_common.h" /* CHECK, finish */

void free_sized(void *p, size_t size); /* C23; allot exports it */

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

typedef struct {
  const void *p;
  int kind;
} find_t;

static int find(const allot_walk_info_t *w, void *arg) {
  find_t *f = arg;
  if (w->type == ALLOT_WALK_BLOCK && w->addr == f->p) f->kind = w->kind;
  return 0;
}
static int kind_of(const void *p) {
  find_t f = {p, 0};
  allot_walk(find, &f);
  return f.kind;
}

static size_t committed(void) {
  allot_stats_t st;
  allot_stats_get(&st);
  return st.committed;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i += 512)
    p[i] = (unsigned char)(seed + i / 512);
}
static int intact(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i += 512)
    if (p[i] != (unsigned char)(seed + i / 512)) return 0;
  return 1;
}

/* Six medium blocks of 512 KiB written and freed: 3 MiB idle in one region,
 * coalesced into one free chunk. */
static void make_idle(void) {
  void *m[6];
  for (int i = 0; i < 6; i++) {
    m[i] = malloc(512 * KiB);
    CHECK(m[i] && kind_of(m[i]) == ALLOT_KIND_MEDIUM, "medium block %d", i);
    if (m[i]) memset(m[i], 0xa5, 512 * KiB);
  }
  for (int i = 0; i < 6; i++)
    free(m[i]);
}

static void *reuse(void *arg) {
  (void)arg;
  make_idle();

  /* malloc: from the idle chunks, no fresh memory */
  size_t before = committed();
  size_t n = 1536 * KiB;
  unsigned char *p = malloc(n);
  CHECK(p != NULL, "malloc(%zu)", n);
  if (!p) return NULL;
  CHECK(kind_of(p) == ALLOT_KIND_MEDIUM,
        "malloc(1.5 MiB) after 3 MiB of "
        "medium frees: kind %d, want medium",
        kind_of(p));
  CHECK(malloc_usable_size(p) >= n, "usable %zu", malloc_usable_size(p));
  fill(p, n, 7);
  size_t after = committed();
  CHECK(after < before + 256 * KiB,
        "committed grew by %zu KiB for a block cut from idle memory",
        (after - before) / KiB);
  CHECK(allot_check() == 0, "allot_check with the block live");

  /* realloc: moves to a mapping of its own, contents kept */
  unsigned char *q = realloc(p, n + 64 * KiB);
  CHECK(q != NULL && kind_of(q) == ALLOT_KIND_LARGE,
        "realloc to 1.56 MiB: kind %d, want large", q ? kind_of(q) : -1);
  if (!q) return NULL;
  CHECK(intact(q, n, 7), "realloc lost the contents");
  free(q);

  /* realloc of such a block to medium and small sizes: contents kept */
  unsigned char *r = malloc(n);
  CHECK(r != NULL && kind_of(r) == ALLOT_KIND_MEDIUM, "second malloc(%zu)", n);
  if (!r) return NULL;
  fill(r, n, 9);
  r = realloc(r, 512 * KiB);
  CHECK(r != NULL && intact(r, 512 * KiB, 9), "realloc to 512 KiB");
  if (!r) return NULL;
  r = realloc(r, 100);
  CHECK(r != NULL && r[0] == (unsigned char)9, "realloc to 100 bytes");
  free(r);
  CHECK(allot_check() == 0, "allot_check after the reallocs");

  /* calloc: zero, though the chunks were written with 0xa5 */
  size_t z = 1200 * KiB;
  unsigned char *c = calloc(1, z);
  CHECK(c != NULL && kind_of(c) == ALLOT_KIND_MEDIUM, "calloc(%zu): kind %d", z,
        c ? kind_of(c) : -1);
  if (!c) return NULL;
  size_t nonzero = 0;
  for (size_t i = 0; i < z; i++)
    nonzero += c[i] != 0;
  CHECK(nonzero == 0, "calloc's block has %zu bytes not zero", nonzero);

  /* above half a segment: a mapping, idle memory or not */
  void *big = malloc(2 * MiB + 4 * KiB);
  CHECK(big && kind_of(big) == ALLOT_KIND_LARGE,
        "malloc(2 MiB + 4 KiB): "
        "kind %d, want large",
        big ? kind_of(big) : -1);
  free(big);
  free_sized(c, z); /* the size asked for: a medium block's checks */
  CHECK(allot_check() == 0, "allot_check after the frees");
  return NULL;
}

/* A new heap with no medium frees behind it maps its large blocks. */
static void *fresh(void *arg) {
  (void)arg;
  void *p = malloc(1536 * KiB);
  CHECK(p && kind_of(p) == ALLOT_KIND_LARGE,
        "malloc(1.5 MiB) in a new "
        "heap: kind %d, want large",
        p ? kind_of(p) : -1);
  free(p);
  return NULL;
}

int main(void) {
  /* fresh first: a thread's heap outlives it, pooled for the next one */
  pthread_t t;
  if (pthread_create(&t, NULL, fresh, NULL) != 0) return 1;
  pthread_join(t, NULL);
  if (pthread_create(&t, NULL, reuse, NULL) != 0) return 1;
  pthread_join(t, NULL);
  return finish("mem_reuse_large");
}
