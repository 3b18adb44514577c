/* realloc.c: growth by realloc: string builders and vectors.
 *
 * 48 string builders are appended to in turn, each append of 1..40 bytes
 * growing the string with realloc to exactly the new length (the naive
 * builder many programs are), until the string reaches its target length
 * (64 bytes .. 256 KiB); then it is checked, shrunk to fit, and freed.
 * Alongside, 16 vectors of 64-bit values grow by doubling their capacity,
 * are checked, shrunk to fit with realloc, and freed. Interleaving the
 * builders keeps neighbours in the way of in-place growth.
 *
 *   realloc N     N finished strings */
#include "bench.h"

#define USAGE "STRINGS"
#define BUILDERS 48
#define VECTORS 16

typedef struct {
  char *s;
  size_t len, target;
  uint64_t seed; /* regenerates the appended text for checking */
  uint64_t next;
} builder;

typedef struct {
  uint64_t *v;
  size_t len, cap, target;
  uint64_t base;
} vector;

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static void builder_start(builder *b, uint64_t *seed) {
  b->s = NULL;
  b->len = 0;
  /* Log-uniform target between 64 bytes and 256 KiB. */
  b->target = (size_t)64 << rng_range(seed, 0, 12);
  b->target += rng_range(seed, 0, b->target);
  b->seed = rng_next(seed);
  b->next = b->seed;
}

static size_t append_len(uint64_t *s) {
  return (size_t)rng_range(s, 1, 40);
}

static void builder_append(builder *b) {
  size_t n = append_len(&b->next);
  char c = (char)('a' + (b->len % 26));
  b->s = bench_nonnull(realloc(b->s, b->len + n + 1), b->len + n + 1);
  memset(b->s + b->len, c, n);
  b->len += n;
  b->s[b->len] = 0;
}

/* Checks a finished string against its regenerated text; returns its hash. */
static uint64_t builder_finish(builder *b) {
  uint64_t s = b->seed;
  size_t pos = 0;
  while (pos < b->len) {
    size_t n = append_len(&s);
    char c = (char)('a' + (pos % 26));
    for (size_t i = 0; i < n; i++)
      if (b->s[pos + i] != c)
        bench_fail("string builder lost its contents at %zu of %zu", pos + i,
                   b->len);
    pos += n;
  }
  if (pos != b->len || b->s[b->len] != 0)
    bench_fail("string builder length corrupted");
  uint64_t h = fnv(b->s, b->len, 14695981039346656037ull);
  b->s = bench_nonnull(realloc(b->s, b->len + 1), b->len + 1); /* shrink */
  free(b->s);
  return h;
}

static void vector_start(vector *v, uint64_t *seed) {
  v->v = NULL;
  v->len = v->cap = 0;
  v->target = (size_t)rng_range(seed, 16, 100000);
  v->base = rng_next(seed);
}

static void vector_push(vector *v) {
  if (v->len == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 4;
    v->v = bench_nonnull(realloc(v->v, v->cap * 8), v->cap * 8);
  }
  v->v[v->len] = v->base + v->len * 3;
  v->len++;
}

static uint64_t vector_finish(vector *v) {
  v->v = bench_nonnull(realloc(v->v, v->len * 8), v->len * 8);
  uint64_t h = 0;
  for (size_t i = 0; i < v->len; i++) {
    if (v->v[i] != v->base + i * 3)
      bench_fail("vector lost its contents at %zu of %zu", i, v->len);
    h += v->v[i];
  }
  free(v->v);
  return h;
}

int main(int argc, char **argv) {
  bench_name = "realloc";
  long strings = bench_arg(argc, argv, 1, 6000, USAGE);
  uint64_t seed = 555, checksum = 0;
  builder b[BUILDERS];
  vector v[VECTORS];
  for (int i = 0; i < BUILDERS; i++)
    builder_start(&b[i], &seed);
  for (int i = 0; i < VECTORS; i++)
    vector_start(&v[i], &seed);
  long done = 0;
  while (done < strings) {
    for (int i = 0; i < BUILDERS; i++) {
      builder_append(&b[i]);
      if (b[i].len >= b[i].target) {
        checksum += builder_finish(&b[i]);
        builder_start(&b[i], &seed);
        done++;
      }
    }
    for (int i = 0; i < VECTORS; i++) {
      for (int k = 0; k < 4; k++)
        vector_push(&v[i]);
      if (v[i].len >= v[i].target) {
        checksum += vector_finish(&v[i]);
        vector_start(&v[i], &seed);
      }
    }
  }
  for (int i = 0; i < BUILDERS; i++) {
    checksum += b[i].len;
    free(b[i].s);
  }
  for (int i = 0; i < VECTORS; i++) {
    checksum += v[i].len;
    free(v[i].v);
  }
  bench_ok(checksum);
  return 0;
}
