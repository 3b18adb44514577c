/* fixed.c: heaps in a caller's buffer (allot_fixed_*).
 *
 * The heap's header sits at the start of the buffer, followed by the bin
 * rows of its chunk heap that the buffer's size can reach (5 rows, 640
 * bytes, for 4 KiB; 23 for 1 GiB), and the rest is one region of the
 * boundary-tag chunk heap (chunk.c), so malloc, free, memalign
 * and resizing take bounded O(1) time: two bit scans and a constant number
 * of headers, whatever the buffer's size or fragmentation. Nothing here calls
 * the OS or allocates, and the heap never grows beyond its buffer: when no
 * free chunk fits, malloc returns NULL. There is no lock; the caller
 * serialises calls on one heap (a real-time or embedded caller usually owns
 * its arena from one thread anyway). */
#include "internal.h"

#include <errno.h>

#define EXPORT __attribute__((visibility("default")))
#define FIXED_MAGIC 0x6669786564686561ull /* "fixedhea" */

struct allot_fixed {
  uint64_t magic; /* FIXED_MAGIC ^ address: a header we wrote */
  uint8_t *region;
  size_t region_size;
  size_t size; /* the buffer as given */
  size_t in_use, in_use_peak, mallocs, frees, failures;
  chunk_heap_t chunks; /* last: only the bin rows it needs are there */
};

#define FIXED_PART offsetof(struct allot_fixed, chunks)

static size_t header_for(size_t region) {
  return (FIXED_PART + chunk_heap_size(region) + 15) & ~(size_t)15;
}

/* Header bytes (16-aligned) for a heap in `total` bytes of aligned buffer:
 * the smallest bin table (one more row of bins per step) that serves the
 * region left after it. */
static size_t header_size(size_t total) {
  size_t hs = header_for(0);
  while (hs < total && header_for(total - hs) > hs)
    hs += sizeof(void *[CHUNK_SL_COUNT]);
  return hs;
}

static bool fits(size_t total) {
  size_t hs = header_size(total);
  return total >= hs && total - hs >= CHUNK_REGION_OVERHEAD + CHUNK_MIN;
}

static void fixed_fault(const char *what, const void *addr) {
  fault("fixed_malloc", what, addr);
}
static void fixed_free_fault(const char *what, const void *addr) {
  fault("fixed_free", what, addr);
}

static allot_fixed_t *valid(allot_fixed_t *f, const char *fn) {
  if (!f || f->magic != (FIXED_MAGIC ^ (uintptr_t)f))
    fault(fn, "not a heap made by allot_fixed_create (or overwritten)", f);
  return f;
}

/* p lies where a payload of this heap can be (so its header is readable). */
static bool inside(const allot_fixed_t *f, const void *p) {
  uintptr_t a = (uintptr_t)p, lo = (uintptr_t)f->region + 2 * CHUNK_HEADER;
  return a >= lo && a < (uintptr_t)f->region + f->region_size - CHUNK_HEADER;
}

/* Whatever the buffer's alignment, aligning its start up and its end down
 * to 16 loses at most 30 bytes, and what is left is a multiple of 16. */
EXPORT size_t allot_fixed_min_size(void) {
  size_t total = CHUNK_REGION_OVERHEAD + CHUNK_MIN;
  while (!fits(total))
    total += 16;
  return total + 30;
}

EXPORT allot_fixed_t *allot_fixed_create(void *buf, size_t size) {
  uintptr_t start = ((uintptr_t)buf + 15) & ~(uintptr_t)15;
  uintptr_t end = ((uintptr_t)buf + size) & ~(uintptr_t)15;
  if (!buf || (uintptr_t)buf + size < (uintptr_t)buf || end < start ||
      !fits(end - start)) {
    errno = EINVAL;
    return NULL;
  }
  allot_fixed_t *f = (allot_fixed_t *)start;
  size_t hs = header_size(end - start);
  memset(f, 0, FIXED_PART);
  f->region = (uint8_t *)start + hs;
  f->region_size = end - (uintptr_t)f->region;
  f->size = size;
  /* a key of its own: header tags of one heap do not pass in another */
  chunk_heap_init_sized(&f->chunks, os_random_seed() ^ (uintptr_t)f,
                        f->region_size);
  chunk_set_fault(&f->chunks, fixed_fault);
  if (!chunk_add_region(&f->chunks, f->region, f->region_size)) {
    errno = EINVAL;
    return NULL;
  }
  f->magic = FIXED_MAGIC ^ (uintptr_t)f;
  return f;
}

static void *counted(allot_fixed_t *f, void *p) {
  if (!p) {
    f->failures++;
    errno = ENOMEM;
    return NULL;
  }
  f->mallocs++;
  f->in_use += chunk_usable_size(p);
  if (f->in_use > f->in_use_peak) f->in_use_peak = f->in_use;
  return p;
}

EXPORT void *allot_fixed_malloc(allot_fixed_t *f, size_t size) {
  valid(f, "fixed_malloc");
  /* larger than the region: fail before the bins are asked */
  if (size >= f->region_size) return counted(f, NULL);
  return counted(f, chunk_malloc(&f->chunks, size));
}

EXPORT void *allot_fixed_calloc(allot_fixed_t *f, size_t n, size_t size) {
  size_t total;
  valid(f, "fixed_calloc");
  if (__builtin_mul_overflow(n, size, &total) || total >= f->region_size)
    return counted(f, NULL);
  void *p = counted(f, chunk_malloc(&f->chunks, total));
  if (p) memset(p, 0, total);
  return p;
}

EXPORT void *allot_fixed_memalign(allot_fixed_t *f, size_t align, size_t size) {
  valid(f, "fixed_memalign");
  if (!align || (align & (align - 1))) {
    errno = EINVAL;
    return NULL;
  }
  if (size >= f->region_size || align >= f->region_size)
    return counted(f, NULL);
  return counted(f, chunk_memalign(&f->chunks, align < 16 ? 16 : align, size));
}

EXPORT void allot_fixed_free(allot_fixed_t *f, void *p) {
  valid(f, "fixed_free");
  if (!p) return;
  if (!inside(f, p)) fault("fixed_free", "pointer not from this heap", p);
  size_t u = chunk_usable_size(p); /* trusted only once chunk_free returns */
  chunk_free(&f->chunks, p, fixed_free_fault);
  f->in_use -= u;
  f->frees++;
}

EXPORT size_t allot_fixed_usable_size(allot_fixed_t *f, const void *p) {
  valid(f, "fixed_usable_size");
  if (!p) return 0;
  if (!inside(f, p) || !chunk_is_live(&f->chunks, p))
    fault("fixed_usable_size", "invalid or freed pointer", p);
  return chunk_usable_size(p);
}

EXPORT void *allot_fixed_realloc(allot_fixed_t *f, void *p, size_t size) {
  valid(f, "fixed_realloc");
  if (!p) return allot_fixed_malloc(f, size);
  if (size == 0) {
    allot_fixed_free(f, p);
    return NULL;
  }
  if (!inside(f, p) || !chunk_is_live(&f->chunks, p))
    fault("fixed_realloc", "invalid or freed pointer", p);
  size_t old = chunk_usable_size(p);
  if (size < f->region_size && chunk_resize_in_place(&f->chunks, p, size)) {
    f->in_use = f->in_use - old + chunk_usable_size(p);
    if (f->in_use > f->in_use_peak) f->in_use_peak = f->in_use;
    return p;
  }
  void *q = allot_fixed_malloc(f, size);
  if (!q) return NULL;
  memcpy(q, p, old < size ? old : size);
  allot_fixed_free(f, p);
  return q;
}

typedef struct fixed_walk {
  allot_walk_fn visit;
  void *arg;
  allot_fixed_t *f;
} fixed_walk_t;

static int visit_chunk(void *payload, size_t size, bool used, void *arg) {
  fixed_walk_t *w = arg;
  allot_walk_info_t b = {.type = ALLOT_WALK_BLOCK,
                         .kind = ALLOT_KIND_FIXED,
                         .addr = payload,
                         .size = size,
                         .block_size = size,
                         .overhead = CHUNK_HEADER,
                         .in_use = used};
  return w->visit(&b, w->arg);
}

EXPORT int allot_fixed_walk(allot_fixed_t *f, allot_walk_fn visit, void *arg) {
  valid(f, "fixed_walk");
  if (!visit) {
    errno = EINVAL;
    return -1;
  }
  allot_walk_info_t r = {.type = ALLOT_WALK_REGION,
                         .kind = ALLOT_KIND_FIXED,
                         .addr = f->region,
                         .size = f->region_size,
                         .blocks_used = f->chunks.used_count};
  int rc = visit(&r, arg);
  if (rc) return rc;
  fixed_walk_t w = {visit, arg, f};
  return chunk_walk_region(f->region, f->region_size, visit_chunk, &w);
}

static __thread const char *check_what;
static __thread const void *check_where;

static void check_fault(const char *what, const void *addr) {
  if (!check_what) {
    check_what = what;
    check_where = addr;
  }
}

EXPORT int allot_fixed_check(allot_fixed_t *f, char *buf, size_t len) {
  check_what = NULL;
  check_where = NULL;
  if (!f || f->magic != (FIXED_MAGIC ^ (uintptr_t)f)) {
    check_what = "heap header overwritten";
    check_where = f;
  } else if (f->chunks.fl_count == 0 || f->chunks.fl_count > CHUNK_FL_COUNT ||
             (uint8_t *)&f->chunks.bins[f->chunks.fl_count] > f->region ||
             f->region != (uint8_t *)f +
                              header_size(f->region_size +
                                          (size_t)(f->region - (uint8_t *)f))) {
    /* the bin table's size: it must end before the region it serves */
    check_what = "heap header overwritten (bin table size)";
    check_where = &f->chunks;
  } else {
    void *region = f->region;
    size_t size = f->region_size;
    if (chunk_check(&f->chunks, &region, &size, 1, check_fault) &&
        f->in_use != f->chunks.used_bytes - CHUNK_HEADER * f->chunks.used_count)
      check_fault("bytes in use disagree with the chunk heap", f);
  }
  if (!check_what) {
    if (buf && len) buf[0] = 0;
    return 0;
  }
  if (buf && len) {
    char hex[24];
    os_fmt_hex(hex, (uintptr_t)check_where);
    size_t n = 0;
    const char *parts[3] = {check_what, " at ", hex};
    for (int i = 0; i < 3; i++)
      for (const char *s = parts[i]; *s && n + 1 < len; s++)
        buf[n++] = *s;
    buf[n] = 0;
  }
  return 1;
}

EXPORT void allot_fixed_stats(allot_fixed_t *f, allot_fixed_stats_t *out) {
  valid(f, "fixed_stats");
  if (!out) return;
  memset(out, 0, sizeof *out);
  out->size = f->size;
  out->overhead = f->size - f->region_size + CHUNK_REGION_OVERHEAD;
  out->in_use = f->in_use;
  out->in_use_peak = f->in_use_peak;
  out->blocks = f->chunks.used_count;
  out->free = f->chunks.free_bytes;
  out->largest_free = chunk_largest_free(&f->chunks);
  out->mallocs = f->mallocs;
  out->frees = f->frees;
  out->failures = f->failures;
}
