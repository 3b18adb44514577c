/* introspect.c: seeing the heap — statistics (allot_stats_*, and glibc's
 * mallinfo2, mallinfo, malloc_stats, malloc_info, mallopt), the walk over
 * every region, page and block (allot_walk), and the consistency check
 * (allot_check).
 *
 * Nothing here runs on the malloc and free fast paths. Statistics are
 * gathered when asked for, from what the layers keep anyway: a small page's
 * used count, a chunk heap's byte counts, a large segment's size, the OS
 * layer's call counters, and mincore() for what is resident. Exact per-call
 * counters (requests, per-class counts, the peak in use) exist only in
 * statistics mode, where every call goes through checked.c, which reports
 * each block made and freed to stats_alloc / stats_free. Output is formatted
 * by hand into caller or stack buffers and written with write(2), so it
 * works at exit and never allocates. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* plain fields another thread may be writing, and _Atomic counters */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ALOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

_Static_assert(ALLOT_STATS_ROWS == STATS_ROWS &&
                   ALLOT_STATS_MEDIUM == STATS_MEDIUM &&
                   ALLOT_STATS_LARGE == STATS_LARGE,
               "allot.h's statistics rows are the classes' rows");

/* ---- text output into a bounded buffer ------------------------------------
 */

typedef struct out {
  char *buf;
  size_t len, pos; /* pos counts what the whole text needs */
} out_t;

static void put(out_t *o, const char *s) {
  for (; *s; s++, o->pos++)
    if (o->pos + 1 < o->len) o->buf[o->pos] = *s;
}
static void put_num(out_t *o, size_t v) {
  char t[24];
  os_fmt_dec(t, v);
  put(o, t);
}
static void put_pad(out_t *o, size_t v, int width) {
  char t[24];
  os_fmt_dec(t, v);
  for (int n = (int)strlen(t); n < width; n++)
    put(o, " ");
  put(o, t);
}
static void put_hex(out_t *o, uintptr_t v) {
  char t[24];
  os_fmt_hex(t, v);
  put(o, t);
}
static size_t put_end(out_t *o) {
  if (o->len) o->buf[o->pos < o->len ? o->pos : o->len - 1] = 0;
  return o->pos;
}

static int write_all(int fd, const char *s, size_t n) {
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return errno ? errno : EIO;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

/* ---- statistics-mode counters ---------------------------------------------
 */

static heap_stats_t retired; /* counters of destroyed and deleted heaps */
static heap_stats_t unowned; /* large blocks of thread heaps (process-wide) */
static _Atomic size_t p_in_use, p_peak;
static _Atomic size_t committed_peak;

static void raise_peak(_Atomic size_t *peak, size_t now) {
  size_t old = atomic_load_explicit(peak, memory_order_relaxed);
  while (now > old &&
         !atomic_compare_exchange_weak_explicit(
             peak, &old, now, memory_order_relaxed, memory_order_relaxed)) {
  }
}

static void add(_Atomic size_t *x, size_t v) {
  atomic_fetch_add_explicit(x, v, memory_order_relaxed);
}

/* The statistics row, usable size and owner of live block p. */
static heap_t *classify(const void *p, size_t *row, size_t *usable) {
  segment_t *s = segment_of(p);
  *row = SIZE_MAX;
  if (s->kind == SEG_SMALL) {
    page_t *pg = page_of(s, p);
    *row = pg->cls;
    *usable = pg->bsize;
    return atomic_load_explicit(&pg->heap, memory_order_relaxed);
  }
  if (s->kind == SEG_MEDIUM) {
    *row = STATS_MEDIUM;
    *usable = chunk_usable_size(p);
    return atomic_load_explicit(&s->heap, memory_order_relaxed);
  }
  if (s->kind == SEG_LARGE) {
    *row = STATS_LARGE;
    *usable = s->large_size;
    heap_t *h = atomic_load_explicit(&s->heap, memory_order_relaxed);
    /* a first-class heap's block is linked to it just after this call */
    if (!h && checked_heap && checked_heap->first_class) h = checked_heap;
    return h;
  }
  return NULL;
}

void stats_alloc(const void *p, size_t requested) {
  size_t row, u;
  heap_t *h = classify(p, &row, &u);
  if (row == SIZE_MAX) return;
  heap_stats_t *st = h ? &h->stats : &unowned;
  add(&st->mallocs[row], 1);
  add(&st->requested, requested);
  raise_peak(&st->in_use_peak,
             atomic_fetch_add_explicit(&st->in_use, u, memory_order_relaxed) +
                 u);
  raise_peak(&p_peak,
             atomic_fetch_add_explicit(&p_in_use, u, memory_order_relaxed) + u);
}

void stats_free(const void *p, size_t usable) {
  size_t row, u;
  heap_t *h = classify(p, &row, &u);
  if (row == SIZE_MAX) return;
  heap_stats_t *st = h ? &h->stats : &unowned;
  add(&st->frees[row], 1);
  atomic_fetch_sub_explicit(&st->in_use, usable, memory_order_relaxed);
  atomic_fetch_sub_explicit(&p_in_use, usable, memory_order_relaxed);
}

static void fold(heap_stats_t *into, heap_stats_t *from) {
  for (size_t r = 0; r < STATS_ROWS; r++) {
    add(&into->mallocs[r], atomic_exchange(&from->mallocs[r], 0));
    add(&into->frees[r], atomic_exchange(&from->frees[r], 0));
  }
  add(&into->requested, atomic_exchange(&from->requested, 0));
  add(&into->xfrees, atomic_exchange(&from->xfrees, 0));
}

void stats_heap_retire(heap_t *h) {
  fold(&retired, &h->stats);
  add(&retired.xfrees, atomic_exchange(&h->xfrees, 0));
  atomic_store(&h->stats.in_use, 0);
  atomic_store(&h->stats.in_use_peak, 0);
}

/* ---- gathering --------------------------------------------------------------
 */

typedef struct tally {
  size_t blocks[STATS_ROWS], bytes[STATS_ROWS], pages[STATS_ROWS];
  size_t free_blocks[STATS_ROWS]; /* small classes: free blocks in pages */
  size_t free_small, free_pages, free_medium, free_chunks, cached;
  size_t seg_small, seg_medium, seg_large, seg_cached, pages_in_use;
  size_t reserved, committed, large_mapped, heaps;
} tally_t;

static size_t os_page_size(void) {
  static size_t ps;
  if (!ps) ps = (size_t)sysconf(_SC_PAGESIZE);
  return ps;
}

/* Bytes of [p, p+len) resident in memory. */
static size_t resident(const void *p, size_t len) {
  unsigned char vec[1024];
  size_t ps = os_page_size(), total = 0;
  uintptr_t a = (uintptr_t)p & ~(ps - 1), end = (uintptr_t)p + len;
  while (a < end) {
    size_t n = end - a;
    if (n > sizeof vec * ps) n = sizeof vec * ps;
    n = (n + ps - 1) & ~(ps - 1);
    if (mincore((void *)a, n, vec) == 0)
      for (size_t i = 0; i < n / ps; i++)
        total += (vec[i] & 1) * ps;
    a += n;
  }
  return total;
}

/* Blocks other threads freed into an own page that the owner has not taken
 * in yet (they are still counted in pg->used). Only the owner calls this:
 * nobody else takes from xfree, so the list below its head is stable. */
static size_t pending_xfree(page_t *pg, size_t limit) {
  uint8_t *start = page_start(segment_of(pg), pg);
  block_t *b =
      xfree_head(atomic_load_explicit(&pg->xfree, memory_order_acquire));
  size_t n = 0;
  while (b && n < limit) {
    if ((uint8_t *)b < start || (uint8_t *)b >= start + PAGE_SIZE) break;
    n++;
    b = link_decode(b->next, b);
  }
  return n;
}

static int count_free_chunk(void *payload, size_t size, bool used, void *arg) {
  (void)payload;
  (void)size;
  if (!used) ++*(size_t *)arg;
  return 0;
}

/* One heap's pages, chunks and (with_large) its own large blocks. own: the
 * calling thread owns it, so its pending cross-thread frees can be counted. */
static void gather_heap(heap_t *h, tally_t *t, bool own, bool with_large) {
  os_lock(&h->seg_lock);
  for (segment_t *s = h->segs; s; s = s->hnext) {
    t->seg_small++;
    t->reserved += s->map_size;
    t->committed += resident(s, s->map_size);
    /* the descriptors of pages in use only: the others may lie on header
     * pages never written, which a read makes resident (docs/memory.md,
     * session 23) */
    uint64_t in_use = segment_pages_used_mask(s);
    t->free_pages +=
        (PAGES_PER_SEG - 1 - (size_t)__builtin_popcountll(in_use)) * PAGE_SIZE;
    for (uint64_t m = in_use; m; m &= m - 1) {
      page_t *pg = &s->pages[__builtin_ctzll(m)];
      size_t bsize = LOAD(pg->bsize), cls = LOAD(pg->cls);
      if (!bsize) {
        t->free_pages += PAGE_SIZE;
        continue;
      }
      if (cls == 0 || cls >= NCLASSES) continue;
      size_t reserved = LOAD(pg->reserved), used = LOAD(pg->used);
      if (own) used -= pending_xfree(pg, used);
      if (used > reserved) used = reserved; /* read while changing */
      t->blocks[cls] += used;
      t->bytes[cls] += used * bsize;
      t->pages[cls]++;
      t->pages_in_use++;
      t->free_blocks[cls] += reserved - used;
      t->free_small += (reserved - used) * bsize;
    }
  }
  os_unlock(&h->seg_lock);
  os_lock(&h->medium_lock);
  for (segment_t *s = h->medium_segs; s; s = s->hnext) {
    t->seg_medium++;
    t->reserved += s->map_size;
    t->committed += resident(s, s->map_size);
    chunk_walk_region(s->region, s->region_size, count_free_chunk,
                      &t->free_chunks);
  }
  t->blocks[STATS_MEDIUM] += h->chunks.used_count;
  t->bytes[STATS_MEDIUM] +=
      h->chunks.used_bytes - CHUNK_HEADER * h->chunks.used_count;
  t->free_medium += h->chunks.free_bytes;
  if (with_large) {
    for (segment_t *s = h->large_segs; s; s = s->hnext) {
      t->seg_large++;
      t->reserved += s->map_size;
      t->committed += resident(s, s->map_size);
      if (atomic_load(&s->large_state) != LARGE_LIVE) {
        t->cached += s->map_size; /* in checked mode's quarantine */
        continue;
      }
      t->blocks[STATS_LARGE]++;
      t->bytes[STATS_LARGE] += s->large_size;
      t->large_mapped += s->map_size;
    }
  }
  os_unlock(&h->medium_lock);
}

/* Segments that belong to no heap: large blocks, caches, zero-size blocks. */
static void gather_global(segment_t *s, void *arg) {
  tally_t *t = arg;
  if (s->kind == SEG_LARGE) {
    uint32_t st = atomic_load_explicit(&s->large_state, memory_order_acquire);
    t->reserved += s->map_size;
    t->committed += resident(s, s->map_size);
    if (st == LARGE_LIVE) {
      t->seg_large++;
      t->blocks[STATS_LARGE]++;
      t->bytes[STATS_LARGE] += s->large_size;
      t->large_mapped += s->map_size;
    } else if (st == LARGE_QUARANTINED) { /* freed; checked mode holds it */
      t->seg_large++;
      t->cached += s->map_size;
    } else {
      t->seg_cached++;
      t->cached += s->map_size;
    }
  } else if (s->kind == 0) {
    t->seg_cached++;
    t->cached += s->map_size;
    t->reserved += s->map_size;
    t->committed += resident(s, s->map_size);
  } else if (s->kind == SEG_ZERO) {
    t->reserved += s->map_size;
    t->committed += resident(s, PAGE_SIZE);
  }
}

static bool heap_counts(const heap_t *h) {
  int state = LOAD(h->state);
  return state == HEAP_ABANDONED ||
         (state == HEAP_ACTIVE && (LOAD(h->owner) || LOAD(h->first_class)));
}

static void gather_all(tally_t *t) {
  uint64_t me = thread_uid();
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    gather_heap(h, t, LOAD(h->owner) == me, false);
    if (heap_counts(h)) t->heaps++;
  }
  segments_visit(gather_global, t);
}

static void sum_counters(heap_stats_t *into, heap_stats_t *from) {
  for (size_t r = 0; r < STATS_ROWS; r++) {
    add(&into->mallocs[r], ALOAD(from->mallocs[r]));
    add(&into->frees[r], ALOAD(from->frees[r]));
  }
  add(&into->requested, ALOAD(from->requested));
  add(&into->xfrees, ALOAD(from->xfrees));
}

static void fill(allot_stats_t *st, const tally_t *t, heap_stats_t *c) {
  memset(st, 0, sizeof *st);
  for (size_t r = 0; r < STATS_ROWS; r++) {
    allot_class_stats_t *row = &st->rows[r];
    row->block_size = r && r < NCLASSES ? class_size[r] : 0;
    row->blocks = t->blocks[r];
    row->bytes = t->bytes[r];
    row->pages = t->pages[r];
    row->mallocs = ALOAD(c->mallocs[r]);
    row->frees = ALOAD(c->frees[r]);
    st->in_use += t->bytes[r];
    st->mallocs += row->mallocs;
    st->frees += row->frees;
  }
  st->requested = ALOAD(c->requested);
  st->xfrees = ALOAD(c->xfrees);
  st->committed = t->committed;
  st->reserved = t->reserved;
  st->free_small = t->free_small;
  st->free_pages = t->free_pages;
  st->free_medium = t->free_medium;
  st->free_chunks = t->free_chunks;
  st->cached = t->cached;
  st->segments_small = t->seg_small;
  st->segments_medium = t->seg_medium;
  st->segments_large = t->seg_large;
  st->segments_cached = t->seg_cached;
  st->pages_in_use = t->pages_in_use;
  st->heaps = t->heaps;
  st->stats_mode = g.stats;
  st->os_maps = atomic_load(&os_stats.mmaps);
  st->os_unmaps = atomic_load(&os_stats.munmaps);
  st->os_purges = atomic_load(&os_stats.purges);
  st->os_remaps = atomic_load(&os_stats.remaps);
  st->os_time_ns = atomic_load(&os_stats.ns);
}

EXPORT int allot_stats_get(allot_stats_t *out) {
  if (!out) return EINVAL;
  allot_process_init();
  tally_t t;
  memset(&t, 0, sizeof t);
  gather_all(&t);
  heap_stats_t c;
  memset(&c, 0, sizeof c);
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    sum_counters(&c, &h->stats);
    add(&c.xfrees, ALOAD(h->xfrees));
  }
  sum_counters(&c, &retired);
  sum_counters(&c, &unowned);
  fill(out, &t, &c);
  if (g.slow_mode) {
    /* blocks waiting in checked mode's quarantines are free to the program
     * (the walk says so too), though the layers still hold them */
    size_t q = 0;
    for (heap_t *h = heaps_first(); h; h = h->next_all)
      q += checked_quarantine_bytes(h, NULL);
    if (q > out->in_use) q = out->in_use;
    out->in_use -= q;
    out->free_small += q;
  }
  out->reserved = atomic_load(&os_stats.mapped);
  out->reserved_peak = atomic_load(&os_stats.mapped_peak);
  raise_peak(&committed_peak, out->committed);
  out->committed_peak = atomic_load(&committed_peak);
  out->in_use_peak = g.stats ? atomic_load(&p_peak) : 0;
  return 0;
}

EXPORT int allot_heap_stats(allot_heap_t *heap, allot_stats_t *out) {
  heap_t *h = (heap_t *)heap;
  if (!h || !out) return EINVAL;
  tally_t t;
  memset(&t, 0, sizeof t);
  gather_heap(h, &t, LOAD(h->owner) == thread_uid(), true);
  t.heaps = 1;
  fill(out, &t, &h->stats);
  out->xfrees = ALOAD(h->xfrees);
  out->reserved_peak = out->reserved;
  out->committed_peak = out->committed;
  out->in_use_peak = g.stats ? ALOAD(h->stats.in_use_peak) : 0;
  return 0;
}

/* Statistics mode begins (allot_option_set): the running in-use counters
 * start from what is in use now. */
INTERNAL void stats_mode_start(void);
void stats_mode_start(void) {
  uint64_t me = thread_uid();
  size_t total = 0;
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    tally_t t;
    memset(&t, 0, sizeof t);
    gather_heap(h, &t, LOAD(h->owner) == me, true);
    size_t in_use = 0;
    for (size_t r = 0; r < STATS_ROWS; r++)
      in_use += t.bytes[r];
    atomic_store(&h->stats.in_use, in_use);
    atomic_store(&h->stats.in_use_peak, in_use);
  }
  tally_t t;
  memset(&t, 0, sizeof t);
  gather_all(&t);
  for (size_t r = 0; r < STATS_ROWS; r++)
    total += t.bytes[r];
  size_t own_large = 0;
  for (heap_t *h = heaps_first(); h; h = h->next_all)
    if (h->first_class) {
      os_lock(&h->medium_lock);
      for (segment_t *s = h->large_segs; s; s = s->hnext)
        own_large += s->large_size;
      os_unlock(&h->medium_lock);
    }
  size_t large = t.bytes[STATS_LARGE];
  atomic_store(&unowned.in_use, large > own_large ? large - own_large : 0);
  atomic_store(&p_in_use, total);
  atomic_store(&p_peak, total);
}

EXPORT void allot_stats_reset(void) {
  heap_stats_t *all[2] = {&retired, &unowned};
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    heap_stats_t scratch;
    memset(&scratch, 0, sizeof scratch);
    fold(&scratch, &h->stats);
    atomic_store(&h->xfrees, 0);
    atomic_store(&h->stats.in_use_peak, atomic_load(&h->stats.in_use));
  }
  for (int i = 0; i < 2; i++) {
    heap_stats_t scratch;
    memset(&scratch, 0, sizeof scratch);
    fold(&scratch, all[i]);
  }
  atomic_store(&p_peak, atomic_load(&p_in_use));
  atomic_store(&committed_peak, 0);
}

/* ---- formatting
 * --------------------------------------------------------------- */

static const char *row_name(size_t r) {
  return r == 0              ? "zero"
         : r == STATS_MEDIUM ? "medium"
         : r == STATS_LARGE  ? "large"
                             : NULL;
}

static void json_field(out_t *o, const char *name, size_t v, bool comma) {
  put(o, "\"");
  put(o, name);
  put(o, "\":");
  put_num(o, v);
  if (comma) put(o, ",");
}

static void format_json(out_t *o, const allot_stats_t *st) {
  put(o, "{");
  json_field(o, "in_use", st->in_use, true);
  json_field(o, "in_use_peak", st->in_use_peak, true);
  json_field(o, "requested", st->requested, true);
  json_field(o, "mallocs", st->mallocs, true);
  json_field(o, "frees", st->frees, true);
  json_field(o, "committed", st->committed, true);
  json_field(o, "committed_peak", st->committed_peak, true);
  json_field(o, "reserved", st->reserved, true);
  json_field(o, "reserved_peak", st->reserved_peak, true);
  json_field(o, "free_small", st->free_small, true);
  json_field(o, "free_pages", st->free_pages, true);
  json_field(o, "free_medium", st->free_medium, true);
  json_field(o, "free_chunks", st->free_chunks, true);
  json_field(o, "cached", st->cached, true);
  json_field(o, "segments_small", st->segments_small, true);
  json_field(o, "segments_medium", st->segments_medium, true);
  json_field(o, "segments_large", st->segments_large, true);
  json_field(o, "segments_cached", st->segments_cached, true);
  json_field(o, "pages_in_use", st->pages_in_use, true);
  json_field(o, "xfrees", st->xfrees, true);
  json_field(o, "os_maps", st->os_maps, true);
  json_field(o, "os_unmaps", st->os_unmaps, true);
  json_field(o, "os_purges", st->os_purges, true);
  json_field(o, "os_remaps", st->os_remaps, true);
  json_field(o, "os_time_ns", st->os_time_ns, true);
  json_field(o, "heaps", st->heaps, true);
  put(o, st->stats_mode ? "\"stats_mode\":true," : "\"stats_mode\":false,");
  put(o, "\"classes\":[");
  bool first = true;
  for (size_t r = 0; r < ALLOT_STATS_ROWS; r++) {
    const allot_class_stats_t *c = &st->rows[r];
    if (!c->blocks && !c->pages && !c->mallocs && !c->frees) continue;
    put(o, first ? "{" : ",{");
    first = false;
    json_field(o, "class", r, true);
    if (row_name(r)) {
      put(o, "\"kind\":\"");
      put(o, row_name(r));
      put(o, "\",");
    } else {
      put(o, "\"kind\":\"small\",");
    }
    json_field(o, "block_size", c->block_size, true);
    json_field(o, "blocks", c->blocks, true);
    json_field(o, "bytes", c->bytes, true);
    json_field(o, "pages", c->pages, true);
    json_field(o, "mallocs", c->mallocs, true);
    json_field(o, "frees", c->frees, false);
    put(o, "}");
  }
  put(o, "]}\n");
}

static void text_line(out_t *o, const char *label, size_t v, const char *unit) {
  put(o, "  ");
  put(o, label);
  for (size_t n = strlen(label); n < 16; n++)
    put(o, " ");
  put_pad(o, v, 14);
  put(o, unit);
  put(o, "\n");
}

static void format_text(out_t *o, const allot_stats_t *st) {
  put(o, "allot statistics (");
  put_num(o, st->heaps);
  put(o, st->heaps == 1 ? " heap" : " heaps");
  put(o, st->stats_mode ? ", statistics mode)\n" : ")\n");
  text_line(o, "in use", st->in_use, " bytes");
  if (st->stats_mode) {
    text_line(o, "in use peak", st->in_use_peak, " bytes");
    text_line(o, "requested", st->requested, " bytes in total");
    text_line(o, "mallocs", st->mallocs, "");
    text_line(o, "frees", st->frees, "");
  }
  text_line(o, "committed", st->committed, " bytes resident");
  text_line(o, "committed peak", st->committed_peak, " bytes (sampled)");
  text_line(o, "reserved", st->reserved, " bytes mapped");
  text_line(o, "reserved peak", st->reserved_peak, " bytes");
  text_line(o, "free small", st->free_small, " bytes in pages in use");
  text_line(o, "free pages", st->free_pages, " bytes");
  text_line(o, "free medium", st->free_medium, " bytes");
  text_line(o, "free chunks", st->free_chunks, "");
  text_line(o, "cached", st->cached, " bytes");
  text_line(o, "segments small", st->segments_small, "");
  text_line(o, "segments medium", st->segments_medium, "");
  text_line(o, "segments large", st->segments_large, "");
  text_line(o, "segments cached", st->segments_cached, "");
  text_line(o, "pages in use", st->pages_in_use, "");
  text_line(o, "xfrees", st->xfrees, " frees from other threads");
  text_line(o, "os mmap", st->os_maps, " calls");
  text_line(o, "os munmap", st->os_unmaps, " calls");
  text_line(o, "os purge", st->os_purges, " calls");
  text_line(o, "os mremap", st->os_remaps, " calls");
  if (st->stats_mode) text_line(o, "os time", st->os_time_ns, " ns in them");
  put(o, "  class    size      blocks         bytes   pages     mallocs       "
         "frees\n");
  for (size_t r = 0; r < ALLOT_STATS_ROWS; r++) {
    const allot_class_stats_t *c = &st->rows[r];
    if (!c->blocks && !c->pages && !c->mallocs && !c->frees) continue;
    put(o, "  ");
    if (row_name(r)) {
      put(o, row_name(r));
      for (size_t n = strlen(row_name(r)); n < 14; n++)
        put(o, " ");
    } else {
      put_pad(o, r, 5);
      put_pad(o, c->block_size, 9);
    }
    put_pad(o, c->blocks, 12);
    put_pad(o, c->bytes, 14);
    put_pad(o, c->pages, 8);
    put_pad(o, c->mallocs, 12);
    put_pad(o, c->frees, 12);
    put(o, "\n");
  }
}

EXPORT size_t allot_stats_format(const allot_stats_t *st, int json, char *buf,
                                 size_t len) {
  out_t o = {buf, buf ? len : 0, 0};
  if (!st) return 0;
  if (json)
    format_json(&o, st);
  else
    format_text(&o, st);
  return put_end(&o);
}

EXPORT size_t allot_stats_json(char *buf, size_t len) {
  allot_stats_t st;
  allot_stats_get(&st);
  return allot_stats_format(&st, 1, buf, len);
}

static int print_stats(int fd, int json) {
  allot_stats_t st;
  char buf[16384];
  allot_stats_get(&st);
  size_t n = allot_stats_format(&st, json, buf, sizeof buf);
  if (n >= sizeof buf) n = sizeof buf - 1;
  return write_all(fd, buf, n);
}

EXPORT int allot_stats_print(int fd) {
  return print_stats(fd, 0);
}

/* ALLOT_SHOW_STATS: a destructor, so it runs after the program's atexit
 * handlers and needs no registration from inside malloc. */
static __attribute__((destructor)) void show_stats_at_exit(void) {
  if (!g.show_stats) return;
  print_stats(2, g.show_stats == 2);
}

/* ---- glibc's interfaces
 * ------------------------------------------------------- */

EXPORT struct allot_mallinfo2 allot_mallinfo2(void) {
  allot_stats_t st;
  allot_stats_get(&st);
  struct allot_mallinfo2 m;
  memset(&m, 0, sizeof m);
  size_t free_small_blocks = 0;
  tally_t t; /* the per-class free block counts are not in allot_stats_t */
  memset(&t, 0, sizeof t);
  uint64_t me = thread_uid();
  for (heap_t *h = heaps_first(); h; h = h->next_all)
    gather_heap(h, &t, LOAD(h->owner) == me, false);
  for (size_t r = 1; r < NCLASSES; r++)
    free_small_blocks += t.free_blocks[r];
  m.arena = (st.segments_small + st.segments_medium) * SEG_SIZE;
  m.ordblks = st.free_chunks;
  m.smblks = free_small_blocks;
  m.hblks = st.rows[STATS_LARGE].blocks;
  m.hblkhd = st.rows[STATS_LARGE].bytes;
  m.usmblks = st.reserved_peak;
  m.fsmblks = st.free_small;
  m.uordblks = st.in_use;
  m.fordblks = st.free_small + st.free_pages + st.free_medium;
  m.keepcost = st.cached;
  return m;
}

EXPORT void allot_malloc_stats(void) {
  char buf[8192];
  out_t o = {buf, sizeof buf, 0};
  uint64_t me = thread_uid();
  size_t nr = 0;
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    tally_t t;
    memset(&t, 0, sizeof t);
    gather_heap(h, &t, LOAD(h->owner) == me, true);
    if (!t.reserved) continue;
    size_t in_use = 0;
    for (size_t r = 0; r < STATS_ROWS; r++)
      in_use += t.bytes[r];
    put(&o, "Arena ");
    put_num(&o, nr++);
    put(&o, ":\nsystem bytes     = ");
    put_pad(&o, t.reserved, 10);
    put(&o, "\nin use bytes     = ");
    put_pad(&o, in_use, 10);
    put(&o, "\n");
    if (o.pos > sizeof buf - 512) {
      write_all(2, buf, o.pos);
      o.pos = 0;
    }
  }
  allot_stats_t st;
  allot_stats_get(&st);
  put(&o, "Total (incl. mmap):\nsystem bytes     = ");
  put_pad(&o, st.reserved, 10);
  put(&o, "\nin use bytes     = ");
  put_pad(&o, st.in_use, 10);
  put(&o, "\nmax mmap regions = ");
  put_pad(&o, st.segments_large, 10);
  put(&o, "\nmax mmap bytes   = ");
  put_pad(&o, st.reserved_peak, 10);
  put(&o, "\n");
  write_all(2, buf, o.pos < sizeof buf ? o.pos : sizeof buf - 1);
}

static void xml_total(FILE *f, const char *type, size_t count, size_t size) {
  fprintf(f, "<total type=\"%s\" count=\"%zu\" size=\"%zu\"/>\n", type, count,
          size);
}
static void xml_system(FILE *f, size_t cur, size_t max) {
  fprintf(f, "<system type=\"current\" size=\"%zu\"/>\n", cur);
  fprintf(f, "<system type=\"max\" size=\"%zu\"/>\n", max);
  fprintf(f, "<aspace type=\"total\" size=\"%zu\"/>\n", cur);
  fprintf(f, "<aspace type=\"mprotect\" size=\"%zu\"/>\n", cur);
}

EXPORT int allot_malloc_info(int options, FILE *f) {
  if (options != 0 || !f) {
    errno = EINVAL;
    return -1;
  }
  uint64_t me = thread_uid();
  size_t nr = 0, fast_n = 0, fast_b = 0, rest_n = 0, rest_b = 0;
  fputs("<malloc version=\"1\">\n", f);
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    tally_t t; /* gathered under locks; printed with none held */
    memset(&t, 0, sizeof t);
    gather_heap(h, &t, LOAD(h->owner) == me, true);
    if (!t.reserved) continue;
    fprintf(f, "<heap nr=\"%zu\">\n<sizes>\n", nr++);
    size_t hf_n = 0, hf_b = 0;
    for (size_t r = 1; r < NCLASSES; r++) {
      if (!t.free_blocks[r]) continue;
      fprintf(f,
              "  <size from=\"%u\" to=\"%u\" total=\"%zu\" count=\"%zu\"/>\n",
              class_size[r - 1] + 1, class_size[r],
              t.free_blocks[r] * class_size[r], t.free_blocks[r]);
      hf_n += t.free_blocks[r];
      hf_b += t.free_blocks[r] * class_size[r];
    }
    if (t.free_chunks)
      fprintf(
          f,
          "  <unsorted from=\"%u\" to=\"%zu\" total=\"%zu\" count=\"%zu\"/>\n",
          SMALL_MAX + 1, (size_t)MEDIUM_MAX, t.free_medium, t.free_chunks);
    fputs("</sizes>\n", f);
    xml_total(f, "fast", hf_n, hf_b);
    xml_total(f, "rest", t.free_chunks, t.free_medium);
    xml_system(f, t.reserved, t.reserved);
    fputs("</heap>\n", f);
    fast_n += hf_n;
    fast_b += hf_b;
    rest_n += t.free_chunks;
    rest_b += t.free_medium;
  }
  allot_stats_t st;
  allot_stats_get(&st);
  xml_total(f, "fast", fast_n, fast_b);
  xml_total(f, "rest", rest_n, rest_b);
  xml_total(f, "mmap", st.rows[STATS_LARGE].blocks, st.rows[STATS_LARGE].bytes);
  xml_system(f, st.reserved, st.reserved_peak);
  fputs("</malloc>\n", f);
  return 0;
}

/* glibc's parameter numbers (malloc.h), spelled out so the prefixed library
 * does not depend on them being defined. */
enum {
  P_MXFAST = 1,
  P_TRIM_THRESHOLD = -1,
  P_TOP_PAD = -2,
  P_MMAP_THRESHOLD = -3,
  P_MMAP_MAX = -4,
  P_CHECK_ACTION = -5,
  P_PERTURB = -6,
  P_ARENA_TEST = -7,
  P_ARENA_MAX = -8
};

EXPORT int allot_mallopt(int param, int value) {
  switch (param) {
  case P_TRIM_THRESHOLD:
    /* 0 asks for memory back at once: no purge delay. Other thresholds
     * are accepted: allot returns memory by age, not by amount. */
    if (value == 0) allot_option_set(ALLOT_OPTION_PURGE_DELAY, 0);
    return 1;
  case P_MXFAST:
    return value >= 0 && value <= 80 * (int)sizeof(size_t) / 4;
  case P_TOP_PAD:
  case P_MMAP_THRESHOLD: /* fixed: above 1 MiB, blocks get their own mapping */
  case P_MMAP_MAX:
  case P_CHECK_ACTION: /* corruption always aborts */
  case P_PERTURB:      /* see ALLOT_DEBUG, set at start-up */
  case P_ARENA_TEST:
  case P_ARENA_MAX: /* heaps are per thread */
    return 1;
  default:
    return 0;
  }
}

EXPORT int allot_malloc_trim(size_t pad) {
  (void)pad;
  size_t before =
      atomic_load(&os_stats.munmaps) + atomic_load(&os_stats.purges);
  allot_collect();
  return atomic_load(&os_stats.munmaps) + atomic_load(&os_stats.purges) !=
         before;
}

#if ALLOT_OVERRIDE
struct mallinfo2 mallinfo2(void) EXPORT;
struct mallinfo2 mallinfo2(void) {
  struct allot_mallinfo2 a = allot_mallinfo2();
  struct mallinfo2 m;
  _Static_assert(sizeof a == sizeof m, "same fields as glibc's");
  memcpy(&m, &a, sizeof m);
  return m;
}

static int clamp(size_t v) {
  return v > INT_MAX ? INT_MAX : (int)v;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
struct mallinfo mallinfo(void) EXPORT;
struct mallinfo mallinfo(void) {
  struct allot_mallinfo2 a = allot_mallinfo2();
  struct mallinfo m;
  m.arena = clamp(a.arena);
  m.ordblks = clamp(a.ordblks);
  m.smblks = clamp(a.smblks);
  m.hblks = clamp(a.hblks);
  m.hblkhd = clamp(a.hblkhd);
  m.usmblks = clamp(a.usmblks);
  m.fsmblks = clamp(a.fsmblks);
  m.uordblks = clamp(a.uordblks);
  m.fordblks = clamp(a.fordblks);
  m.keepcost = clamp(a.keepcost);
  return m;
}
#pragma GCC diagnostic pop

EXPORT void malloc_stats(void) {
  allot_malloc_stats();
}
EXPORT int malloc_info(int options, FILE *f) {
  return allot_malloc_info(options, f);
}
EXPORT int mallopt(int param, int value) {
  return allot_mallopt(param, value);
}
#endif

/* ---- the walk
 * ------------------------------------------------------------------ Each
 * region is copied under its lock into a snapshot, then shown to the visitor
 * with no lock held. Segments of a heap are taken in address order, one per
 * round, so a visitor that allocates (and so reorders the heap's lists) neither
 * skips nor repeats one. A block's size is what malloc_usable_size says of
 * it: in checked mode the size its caller asked for (read from its trailer
 * into the snapshot, checked_walk_size); its block_size is the bytes the
 * layers gave it, so adding block sizes (and headers) tiles a region in
 * every mode. Zero-size blocks (malloc(0)) are visited one by one, size 0,
 * in their zero segments. */

bool walk_read_word(const void *at, uint64_t *out) {
  struct iovec local = {out, sizeof *out};
  struct iovec remote = {(void *)(uintptr_t)at, sizeof *out};
  return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) ==
         (ssize_t)sizeof *out;
}

typedef struct page_snap {
  uint8_t *start;
  uint32_t bsize, capacity, reserved, used;
  uint8_t cls;
  uint64_t free_bits[PAGE_SIZE / 16 / 64];
  uint16_t size[PAGE_SIZE / 16]; /* checked mode: used blocks' sizes */
} page_snap_t;

typedef struct small_snap {
  segment_t *s;
  uint64_t in_use; /* pages with a snapshot */
  page_snap_t pages[PAGES_PER_SEG];
} small_snap_t;

#define MEDIUM_RECORDS ((SEG_SIZE - PAGE_SIZE) / CHUNK_MIN)
#define SCRATCH_SIZE                                                           \
  ((MEDIUM_RECORDS * 8 > sizeof(small_snap_t) ? MEDIUM_RECORDS * 8             \
                                              : sizeof(small_snap_t)) +        \
   OS_PAGE)

_Static_assert(ZERO_WORDS * 8 <= SCRATCH_SIZE, "a zero bitmap fits scratch");

typedef struct walker {
  allot_walk_fn visit;
  void *arg;
  void *scratch;
} walker_t;

static segment_t *next_in_list(segment_t *list, uintptr_t after) {
  segment_t *best = NULL;
  for (segment_t *s = list; s; s = s->hnext)
    if ((uintptr_t)s > after && (!best || s < best)) best = s;
  return best;
}

static bool block_free_marked(const void *b) {
  return ((const block_t *)b)->mark == free_mark(b);
}

static void snap_small(segment_t *s, small_snap_t *ss) {
  ss->s = s;
  ss->in_use = 0;
  /* pages in use only (gather_heap says why) */
  for (uint64_t m = segment_pages_used_mask(s); m; m &= m - 1) {
    size_t i = (size_t)__builtin_ctzll(m);
    page_t *pg = &s->pages[i];
    page_snap_t *p = &ss->pages[i];
    uint32_t bsize = LOAD(pg->bsize);
    uint8_t cls = LOAD(pg->cls);
    if (!bsize || !cls || cls >= NCLASSES || bsize != class_size[cls]) continue;
    ss->in_use |= (uint64_t)1 << i;
    p->start = page_start(s, pg);
    p->bsize = bsize;
    p->cls = cls;
    p->reserved = LOAD(pg->reserved);
    if (p->reserved > PAGE_SIZE / bsize)
      p->reserved = (uint32_t)(PAGE_SIZE / bsize);
    p->capacity = LOAD(pg->capacity);
    if (p->capacity > p->reserved) p->capacity = p->reserved;
    memset(p->free_bits, 0, sizeof p->free_bits);
    uint32_t used = 0;
    for (uint32_t k = 0; k < p->reserved; k++) {
      uint8_t *b = p->start + (size_t)k * bsize;
      bool free = k >= p->capacity || block_free_marked(b);
      if (free) {
        p->free_bits[k / 64] |= (uint64_t)1 << (k % 64);
      } else {
        used++;
        /* at most PAGED_ALIGNED_MAX, so it fits 16 bits */
        if (g.slow_mode) p->size[k] = (uint16_t)checked_walk_size(b, bsize);
      }
    }
    p->used = used;
  }
}

static int emit(walker_t *w, allot_walk_info_t *info) {
  return w->visit(info, w->arg);
}

static int emit_small(walker_t *w, heap_t *h, small_snap_t *ss) {
  allot_walk_info_t r = {.type = ALLOT_WALK_REGION,
                         .kind = ALLOT_KIND_SMALL,
                         .addr = ss->s,
                         .size = SEG_SIZE,
                         .heap = (allot_heap_t *)h};
  for (size_t i = 1; i < PAGES_PER_SEG; i++) {
    if (!((ss->in_use >> i) & 1)) continue;
    r.blocks += ss->pages[i].reserved;
    r.blocks_used += ss->pages[i].used;
  }
  int rc = emit(w, &r);
  for (size_t i = 1; i < PAGES_PER_SEG && !rc; i++) {
    if (!((ss->in_use >> i) & 1)) continue;
    page_snap_t *p = &ss->pages[i];
    allot_walk_info_t pi = {.type = ALLOT_WALK_PAGE,
                            .kind = ALLOT_KIND_SMALL,
                            .addr = p->start,
                            .size = PAGE_SIZE,
                            .size_class = p->cls,
                            .block_size = p->bsize,
                            .blocks = p->reserved,
                            .blocks_used = p->used,
                            .heap = (allot_heap_t *)h};
    rc = emit(w, &pi);
    for (uint32_t k = 0; k < p->reserved && !rc; k++) {
      allot_walk_info_t b = {.type = ALLOT_WALK_BLOCK,
                             .kind = ALLOT_KIND_SMALL,
                             .addr = p->start + (size_t)k * p->bsize,
                             .size = p->bsize,
                             .in_use =
                                 !((p->free_bits[k / 64] >> (k % 64)) & 1),
                             .size_class = p->cls,
                             .block_size = p->bsize,
                             .heap = (allot_heap_t *)h};
      if (b.in_use && g.slow_mode) b.size = p->size[k];
      rc = emit(w, &b);
    }
  }
  return rc;
}

static int walk_small(walker_t *w, heap_t *h) {
  small_snap_t *ss = w->scratch;
  uintptr_t after = 0;
  for (;;) {
    os_lock(&h->seg_lock);
    segment_t *s = next_in_list(h->segs, after);
    if (s) snap_small(s, ss);
    os_unlock(&h->seg_lock);
    if (!s) return 0;
    after = (uintptr_t)s;
    int rc = emit_small(w, h, ss);
    if (rc) return rc;
  }
}

/* A medium record: the payload's offset / 16 in bits 46..63 and its size /
 * 16 in bits 27..45 (a region is below 4 MiB), the size the walk shows (at
 * most that) in bits 1..26, used in bit 0. */
#define REC_OFF_SHIFT 46
#define REC_RAW_SHIFT 27
_Static_assert(SEG_SIZE <= ((size_t)1 << 22), "medium records' fields");
static size_t rec_offset(uint64_t r) {
  return (size_t)(r >> REC_OFF_SHIFT) << 4;
}
static size_t rec_block_size(uint64_t r) {
  return (size_t)((r >> REC_RAW_SHIFT) &
                  (((uint64_t)1 << (REC_OFF_SHIFT - REC_RAW_SHIFT)) - 1))
         << 4;
}
static size_t rec_size(uint64_t r) {
  return (size_t)(r & (((uint64_t)1 << REC_RAW_SHIFT) - 1)) >> 1;
}
typedef struct medium_snap {
  uint8_t *region;
  size_t count, cap;
  uint64_t *rec;
} medium_snap_t;

static int snap_chunk(void *payload, size_t size, bool used, void *arg) {
  medium_snap_t *m = arg;
  if (m->count == m->cap) return 1;
  /* checked mode: a block waiting in the quarantine is free to the caller */
  if (used && g.slow_mode && block_free_marked(payload)) used = false;
  size_t shown = used && g.slow_mode ? checked_walk_size(payload, size) : size;
  uint64_t off = (uint64_t)((uint8_t *)payload - m->region) >> 4;
  m->rec[m->count++] = off << REC_OFF_SHIFT |
                       (uint64_t)(size >> 4) << REC_RAW_SHIFT |
                       (uint64_t)shown << 1 | used;
  return 0;
}

static int walk_medium(walker_t *w, heap_t *h) {
  medium_snap_t m = {.rec = w->scratch, .cap = MEDIUM_RECORDS};
  uintptr_t after = 0;
  for (;;) {
    os_lock(&h->medium_lock);
    segment_t *s = next_in_list(h->medium_segs, after);
    size_t region_size = 0;
    if (s) {
      m.region = s->region;
      region_size = s->region_size;
      m.count = 0;
      chunk_walk_region(s->region, s->region_size, snap_chunk, &m);
    }
    os_unlock(&h->medium_lock);
    if (!s) return 0;
    after = (uintptr_t)s;
    allot_walk_info_t r = {.type = ALLOT_WALK_REGION,
                           .kind = ALLOT_KIND_MEDIUM,
                           .addr = m.region,
                           .size = region_size,
                           .blocks = m.count,
                           .heap = (allot_heap_t *)h};
    for (size_t i = 0; i < m.count; i++)
      r.blocks_used += m.rec[i] & 1;
    int rc = emit(w, &r);
    for (size_t i = 0; i < m.count && !rc; i++) {
      allot_walk_info_t b = {.type = ALLOT_WALK_BLOCK,
                             .kind = ALLOT_KIND_MEDIUM,
                             .addr = m.region + rec_offset(m.rec[i]),
                             .size = rec_size(m.rec[i]),
                             .block_size = rec_block_size(m.rec[i]),
                             .overhead = CHUNK_HEADER,
                             .in_use = (int)(m.rec[i] & 1),
                             .heap = (allot_heap_t *)h};
      rc = emit(w, &b);
    }
    if (rc) return rc;
  }
}

/* Segments outside the heaps' lists, copied under the segment list lock. */
typedef struct glob_rec {
  segment_t *s;
  size_t map_size, offset, usable, shown; /* shown: the walk's block size */
  heap_t *heap;
  uint8_t kind;
  uint32_t state;
} glob_rec_t;

typedef struct glob_snap {
  glob_rec_t *rec;
  size_t count, cap;
  heap_t *only; /* allot_heap_walk: that heap's large blocks */
} glob_snap_t;

static void snap_global(segment_t *s, void *arg) {
  glob_snap_t *gs = arg;
  if (s->kind == SEG_SMALL || s->kind == SEG_MEDIUM) return;
  heap_t *h = atomic_load_explicit(&s->heap, memory_order_relaxed);
  if (gs->only && (s->kind != SEG_LARGE || h != gs->only)) return;
  if (gs->count++ >= gs->cap) return;
  glob_rec_t *r = &gs->rec[gs->count - 1];
  r->s = s;
  r->kind = s->kind;
  r->map_size = s->map_size;
  r->offset = s->large_offset;
  r->usable = r->shown = s->large_size;
  r->heap = s->kind == SEG_LARGE ? h : NULL;
  r->state = atomic_load_explicit(&s->large_state, memory_order_acquire);
  if (s->kind == SEG_LARGE && r->state == LARGE_LIVE && g.slow_mode)
    r->shown = checked_walk_size((uint8_t *)s + r->offset, r->usable);
}

static int walk_global(walker_t *w, heap_t *only) {
  glob_snap_t gs = {.only = only};
  size_t bytes = 0;
  for (int tries = 0;; tries++) {
    gs.count = 0;
    segments_visit(snap_global, &gs);
    if (gs.count <= gs.cap || tries == 4) break;
    if (gs.rec) os_unmap(gs.rec, bytes);
    gs.cap = gs.count + 64;
    bytes =
        (gs.cap * sizeof(glob_rec_t) + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
    gs.rec = os_map(bytes);
    if (!gs.rec) {
      errno = ENOMEM;
      return -1;
    }
  }
  if (gs.count > gs.cap) gs.count = gs.cap;
  int rc = 0;
  for (size_t i = 0; i < gs.count && !rc; i++) {
    glob_rec_t *r = &gs.rec[i];
    bool large = r->kind == SEG_LARGE &&
                 (r->state == LARGE_LIVE || r->state == LARGE_QUARANTINED);
    bool live = large && r->state == LARGE_LIVE;
    allot_walk_info_t ri = {.type = ALLOT_WALK_REGION,
                            .addr = r->s,
                            .size = r->map_size,
                            .heap = (allot_heap_t *)r->heap};
    ri.kind = r->kind == SEG_ZERO ? ALLOT_KIND_ZERO
              : large             ? ALLOT_KIND_LARGE
                                  : ALLOT_KIND_CACHED;
    if (large) {
      ri.blocks = 1;
      ri.blocks_used = live;
    }
    size_t zeros = 0;
    uint64_t *bits = w->scratch; /* free: the heaps' walks are done */
    if (r->kind == SEG_ZERO)
      ri.blocks = ri.blocks_used = zeros = zero_snapshot(r->s, bits);
    rc = emit(w, &ri);
    /* each malloc(0) block: size 0, in use, nothing before it */
    for (size_t k = 0; k < ZERO_WORDS && zeros && !rc; k++) {
      for (uint64_t m = bits[k]; m && !rc; m &= m - 1, zeros--) {
        allot_walk_info_t b = {
            .type = ALLOT_WALK_BLOCK,
            .kind = ALLOT_KIND_ZERO,
            .addr = zero_block(r->s, k * 64 + (size_t)__builtin_ctzll(m)),
            .in_use = 1};
        rc = emit(w, &b);
      }
    }
    if (large && !rc) { /* a quarantined block (checked mode) is free */
      allot_walk_info_t b = {.type = ALLOT_WALK_BLOCK,
                             .kind = ALLOT_KIND_LARGE,
                             .addr = (uint8_t *)r->s + r->offset,
                             .size = live ? r->shown : r->usable,
                             .block_size = r->usable,
                             .overhead = r->offset,
                             .in_use = live,
                             .heap = (allot_heap_t *)r->heap};
      rc = emit(w, &b);
    }
  }
  if (gs.rec) os_unmap(gs.rec, bytes);
  return rc;
}

static int walk(heap_t *only, allot_walk_fn visit, void *arg) {
  if (!visit) {
    errno = EINVAL;
    return -1;
  }
  allot_process_init();
  walker_t w = {visit, arg, os_map(SCRATCH_SIZE)};
  if (!w.scratch) {
    errno = ENOMEM;
    return -1;
  }
  int rc = 0;
  for (heap_t *h = heaps_first(); h && !rc; h = h->next_all) {
    if (only && h != only) continue;
    rc = walk_small(&w, h);
    if (!rc) rc = walk_medium(&w, h);
  }
  if (!rc && (!only || only->first_class)) rc = walk_global(&w, only);
  os_unmap(w.scratch, SCRATCH_SIZE);
  return rc;
}

EXPORT int allot_walk(allot_walk_fn visit, void *arg) {
  return walk(NULL, visit, arg);
}

EXPORT int allot_heap_walk(allot_heap_t *heap, allot_walk_fn visit, void *arg) {
  if (!heap) {
    errno = EINVAL;
    return -1;
  }
  return walk((heap_t *)heap, visit, arg);
}

/* ---- the check
 * ------------------------------------------------------------------- The
 * calling thread's heaps (its default heap and the first-class heaps it owns)
 * are checked whole: nobody else changes their pages. For other heaps only what
 * their locks guard is checked: segment headers and lists, and the medium chunk
 * heap. Large blocks and the segment list are checked under the list lock. */

typedef struct chk {
  const char *what;
  const void *where;
} chk_t;

static __thread chk_t *chk_cur;

static void fail(chk_t *c, const char *what, const void *where) {
  if (!c->what) {
    c->what = what;
    c->where = where;
  }
}

static void chunk_fault_check(const char *what, const void *addr) {
  fail(chk_cur, what, addr);
}

/* Checked mode may hold freed blocks in a quarantine: marked free, listed
 * nowhere. */
static bool quarantine_possible(void) {
#if defined(__SANITIZE_ADDRESS__) /* gcc */
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) /* clang before 17 */
  return true;
#endif
#endif
  return g.debug || g.secure || g.valgrind;
}

static void check_seg_header(chk_t *c, segment_t *s, int kind, heap_t *h) {
  if (s->cookie != (g.key ^ (uintptr_t)s))
    fail(c, "segment header overwritten (bad cookie)", s);
  else if (s->kind != kind)
    fail(c, "segment of the wrong kind in a heap's list", s);
  else if (atomic_load_explicit(&s->heap, memory_order_relaxed) != h)
    fail(c, "segment listed by a heap that does not own it", s);
  else if (!segmap_has(s))
    fail(c, "segment missing from the segment map", s);
  else if (s->map_size != SEG_SIZE)
    fail(c, "segment has the wrong size", s);
}

/* Walk one free list of a page: every link in the page, on a carved block,
 * every block marked free, no loop. Returns its length. */
static size_t check_list(chk_t *c, page_t *pg, uint8_t *start, block_t *b,
                         const char *bad_link) {
  size_t n = 0;
  const void *from = start;
  while (b && !c->what) {
    if ((uint8_t *)b < start || (uint8_t *)b >= start + PAGE_SIZE ||
        !page_is_block(pg, b)) {
      fail(c, bad_link, from);
      break;
    }
    if (!block_free_marked(b)) {
      fail(c, "block on a free list is not marked free (written after free?)",
           b);
      break;
    }
    if (++n > pg->capacity) {
      fail(c, "free list loops", b);
      break;
    }
    from = b;
    b = link_decode(b->next, b);
  }
  return n;
}

static void check_page(chk_t *c, heap_t *h, segment_t *s, page_t *pg) {
  uint8_t *start = page_start(s, pg);
  size_t cls = pg->cls, bsize = pg->bsize;
  if (cls == 0 || cls >= NCLASSES || bsize != class_size[cls])
    return fail(c, "page descriptor has a bad size class", start);
  if (pg->reserved == 0 || (size_t)pg->reserved * bsize > PAGE_SIZE)
    return fail(c, "page descriptor has a bad block count", start);
  if (pg->divm != UINT64_MAX / bsize + 1)
    return fail(c, "page descriptor has a bad divisor", start);
  if (pg->capacity > pg->reserved)
    return fail(c, "page carved past its end", start);
  if (pg->carved_end != pg->capacity * (uint32_t)bsize)
    return fail(c, "page descriptor's carved bound is not its count's", start);
  if (pg->used > pg->capacity)
    return fail(c, "page counts more blocks in use than it has", start);
  if (atomic_load_explicit(&pg->heap, memory_order_relaxed) != h)
    return fail(c, "page owned by another heap than its segment", start);
  if (pg->queue != Q_AVAIL && pg->queue != Q_FULL)
    return fail(c, "page in use but on no list", start);
  if ((pg->queue == Q_FULL) != (atomic_load(&pg->full) != 0))
    return fail(c, "page's full flag disagrees with its list", start);
  /* NULL as well while the page counts heap profile samples, and until the
   * owner's next free after another thread freed the last (page_set_queue) */
  heap_t *ao = atomic_load_explicit(&pg->avail_owner, memory_order_relaxed);
  if (ao != (pg->queue == Q_AVAIL ? h : NULL) && !(ao == NULL && g.prof))
    return fail(c, "page's available owner disagrees with its list", start);
  bool count_marks = !quarantine_possible();
  size_t nfree = check_list(c, pg, start, pg->free,
                            "free list link leads outside its page");
  if (c->what) return;
  if (nfree + pg->used != pg->capacity)
    return fail(c, "page's used count disagrees with its free list", start);
  /* Other threads free into the page meanwhile (mark the block, then push
   * it): a freer preempted between the two leaves a block marked but on no
   * list for a while, so a mismatch must persist (about a second) before it
   * is reported. */
  for (int tries = 0;; tries++) {
    size_t marked = 0;
    if (count_marks)
      for (size_t k = 0; k < pg->capacity; k++)
        marked += block_free_marked(start + k * bsize);
    uintptr_t xw = atomic_load_explicit(&pg->xfree, memory_order_acquire);
    size_t nx =
        check_list(c, pg, start, xfree_head(xw),
                   "cross-thread free list link leads outside its page");
    if (c->what) return;
    if (nx != xfree_count(xw))
      return fail(c, "cross-thread free list's count disagrees with it", start);
    if (nx > pg->used)
      return fail(c, "more cross-thread frees than blocks in use", start);
    if (!count_marks || marked <= nfree + nx) return;
    if (tries == 1000)
      return fail(c, "block marked free but on no free list", start);
    if (tries < 10) {
      sched_yield();
    } else {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
}

static void check_page_lists(chk_t *c, heap_t *h, size_t pages_in_use,
                             size_t nsegs) {
  size_t listed = 0, bound = nsegs * PAGES_PER_SEG + 1;
  for (size_t cls = 1; cls < NCLASSES && !c->what; cls++) {
    page_list_t *lists[2] = {&h->avail[cls], &h->full[cls]};
    bool current_found = h->current[cls] == &empty_page;
    for (int q = 0; q < 2 && !c->what; q++) {
      page_t *prev = NULL;
      size_t n = 0;
      for (page_t *pg = lists[q]->first; pg; prev = pg, pg = pg->next) {
        segment_t *s = segment_of(pg);
        uintptr_t off = (uintptr_t)pg - (uintptr_t)s->pages;
        if (!segmap_has(s) || s->kind != SEG_SMALL ||
            (uintptr_t)pg < (uintptr_t)&s->pages[1] ||
            (uintptr_t)pg > (uintptr_t)&s->pages[PAGES_PER_SEG - 1] ||
            off % sizeof(page_t))
          return fail(c, "page list holds something that is not a page", pg);
        if (pg->prev != prev)
          return fail(c, "page list back link wrong", page_start(s, pg));
        if (pg->cls != cls || pg->bsize == 0)
          return fail(c, "page on the list of another size class",
                      page_start(s, pg));
        if (pg->queue != (q ? Q_FULL : Q_AVAIL))
          return fail(c, "page on a list its queue field does not name",
                      page_start(s, pg));
        if (++n > bound) return fail(c, "page list loops", pg);
        if (pg == h->current[cls] && q == 0) current_found = true;
      }
      if (lists[q]->last != prev || lists[q]->count != n)
        return fail(c, "page list count or tail wrong", lists[q]);
      listed += n;
    }
    if (!current_found)
      return fail(c, "current page is not on its class's list",
                  h->current[cls]);
  }
  if (!c->what && listed != pages_in_use)
    fail(c, "pages in use and pages on the heap's lists differ", h);
}

static void check_small(chk_t *c, heap_t *h, bool whole) {
  size_t pages_in_use = 0, nsegs = 0, dirty = 0, bound = (size_t)1 << 24;
  /* the purge thread may retire full pages (and take their xfree lists for
   * a moment) meanwhile: not while the pages and lists are compared */
  if (whole) os_lock(&h->page_lock);
  os_lock(&h->seg_lock);
  for (segment_t *s = h->segs; s && !c->what; s = s->hnext) {
    if (++nsegs > bound) {
      fail(c, "segment list loops", s);
      break;
    }
    check_seg_header(c, s, SEG_SMALL, h);
    if (c->what) break;
    if (s->hnext && s->hnext->hprev != s) {
      fail(c, "segment list back link wrong", s->hnext);
      break;
    }
    uint64_t freebits = s->free_pages;
    size_t used_pages = 0, dirty_bytes = 0, carved = 0;
    if (freebits & 1) fail(c, "segment header page marked free", s);
    for (size_t i = 1; i < PAGES_PER_SEG && !c->what; i++) {
      page_t *pg = &s->pages[i];
      bool is_free = (freebits >> i) & 1;
      carved += is_free ? 0 : (size_t)LOAD(pg->capacity) * pg->bsize;
      if (is_free) {
        bool d = segment_page_is_dirty(s, pg);
        dirty += d;
        dirty_bytes += d ? pg->touched : 0;
        if (whole && pg->bsize)
          fail(c, "free page has a size class", page_start(s, pg));
        continue;
      }
      used_pages++;
      if (whole) check_page(c, h, s, pg);
    }
    if (!c->what && used_pages != s->pages_used)
      fail(c, "segment's count of pages in use is wrong", s);
    if (!c->what && dirty_bytes != s->dirty_bytes)
      fail(c, "segment's count of unpurged free bytes is wrong", s);
    if (!c->what && s->dirty_mask & ~freebits)
      fail(c, "segment's bits of unpurged free pages mark a page in use", s);
    /* the owner carves (and counts) without a lock: only its own check */
    if (!c->what && whole &&
        carved != atomic_load_explicit(&s->carved, memory_order_relaxed) -
                      s->uncarved)
      fail(c, "segment's count of carved bytes is wrong", s);
    pages_in_use += used_pages;
  }
  if (!c->what && dirty != h->dirty_pages)
    fail(c, "heap's count of unpurged free pages is wrong", h);
  /* a class's bit stands for its list where a list would be read only to
   * find it empty (segment_page_alloc_locked, segment_move_all) */
  uint64_t bits = atomic_load_explicit(&h->dirty_classes, memory_order_relaxed);
  for (size_t cls = 0; cls < 64 && !c->what; cls++)
    if ((bits >> cls & 1) !=
        (cls && cls < NCLASSES && h->dirty_free[cls].first))
      fail(c, "heap's bits of classes with free pages disagree with its lists",
           h);
  os_unlock(&h->seg_lock);
  if (!c->what && whole) check_page_lists(c, h, pages_in_use, nsegs);
  if (whole) os_unlock(&h->page_lock);
}

static void check_medium(chk_t *c, heap_t *h) {
  void *small_regions[64];
  size_t small_sizes[64];
  void **regions = small_regions;
  size_t *sizes = small_sizes, n = 0, cap = 64, mapped = 0;
  os_lock(&h->medium_lock);
  for (segment_t *s = h->medium_segs; s; s = s->hnext)
    n++;
  if (n > cap) {
    mapped = (n * 2 * sizeof(size_t) + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
    regions = os_map(mapped);
    if (!regions) {
      os_unlock(&h->medium_lock);
      return;
    }
    sizes = (size_t *)(regions + n);
    cap = n;
  }
  size_t k = 0;
  for (segment_t *s = h->medium_segs; s && !c->what; s = s->hnext, k++) {
    check_seg_header(c, s, SEG_MEDIUM, h);
    if (!c->what && (s->region != (uint8_t *)s + PAGE_SIZE ||
                     s->region_size > SEG_SIZE - PAGE_SIZE))
      fail(c, "medium segment's region bounds are wrong", s);
    if (s->hnext && s->hnext->hprev != s)
      fail(c, "medium segment list back link wrong", s->hnext);
    if (k < cap) {
      regions[k] = s->region;
      sizes[k] = s->region_size;
    }
  }
  if (!c->what) {
    chk_cur = c;
    chunk_check(&h->chunks, regions, sizes, n, chunk_fault_check);
  }
  if (!c->what && h->first_class) {
    size_t bound = (size_t)1 << 30;
    for (segment_t *s = h->large_segs; s && !c->what; s = s->hnext) {
      if (!bound--)
        fail(c, "large block list loops", s);
      else if (s->kind != SEG_LARGE || s->cookie != (g.key ^ (uintptr_t)s))
        fail(c, "heap's large block list holds a bad segment", s);
      else if ((atomic_load(&s->large_state) != LARGE_LIVE &&
                atomic_load(&s->large_state) != LARGE_QUARANTINED) ||
               atomic_load(&s->heap) != h)
        fail(c, "heap's large block list holds a block it does not own", s);
    }
  }
  os_unlock(&h->medium_lock);
  if (mapped) os_unmap(regions, mapped);
}

static void check_global(segment_t *s, void *arg) {
  chk_t *c = arg;
  if (c->what) return;
  if (s->cookie != (g.key ^ (uintptr_t)s))
    return fail(c, "segment header overwritten (bad cookie)", s);
  if (s->kind > SEG_ZERO) return fail(c, "segment of no known kind", s);
  if (s->kind != SEG_LARGE) return;
  uint32_t st = atomic_load_explicit(&s->large_state, memory_order_acquire);
  if (st > LARGE_QUARANTINED)
    return fail(c, "large block in an unknown state", s);
  /* A pair of sizes that held together: realloc and the cache change both
   * of a live or cached mapping, the one that keeps the bounds inside the
   * mapping first, and the second with release (large.c); a map_size that
   * reads the same around large_size was not changed in between */
  size_t off = s->large_offset, map, size;
  do {
    map = __atomic_load_n(&s->map_size, __ATOMIC_ACQUIRE);
    size = __atomic_load_n(&s->large_size, __ATOMIC_ACQUIRE);
  } while (map != __atomic_load_n(&s->map_size, __ATOMIC_RELAXED));
  if (st && (off < LARGE_OFFSET || off > SEG_SIZE || (off & (off - 1)) ||
             off + size > map))
    return fail(c, "large block header has bad bounds", s);
  if ((st == LARGE_LIVE || st == LARGE_QUARANTINED) && !segmap_has(s))
    return fail(c, "live large block missing from the segment map", s);
  heap_t *h = atomic_load_explicit(&s->heap, memory_order_relaxed);
  if (h && !h->first_class)
    return fail(c, "large block claims an owner that is not a heap", s);
}

/* checked.c: canaries, trailers and quarantined blocks (checked mode) */
INTERNAL const char *checked_verify(const void **where);

static int check(char *buf, size_t len, bool to_stderr) {
  allot_process_init();
  chk_t c = {NULL, NULL};
  uint64_t me = thread_uid();
  for (heap_t *h = heaps_first(); h && !c.what; h = h->next_all) {
    /* the caller's heaps: only its own thread changes their pages */
    check_small(&c, h, LOAD(h->owner) == me);
    if (!c.what) check_medium(&c, h);
  }
  if (!c.what) segments_visit(check_global, &c);
  if (!c.what && g.slow_mode) c.what = checked_verify(&c.where);
  if (!c.what) {
    if (buf && len) buf[0] = 0;
    return 0;
  }
  char line[256];
  out_t o = {line, sizeof line, 0};
  put(&o, "allot: check: ");
  put(&o, c.what);
  put(&o, " at ");
  put_hex(&o, (uintptr_t)c.where);
  put(&o, "\n");
  put_end(&o);
  if (to_stderr) os_write_err(line);
  if (buf && len) {
    out_t b = {buf, len, 0};
    line[strlen(line) - 1] = 0; /* no newline in the buffer */
    put(&b, line);
    put_end(&b);
  }
  return 1;
}

EXPORT int allot_check(void) {
  return check(NULL, 0, true);
}

EXPORT int allot_check_report(char *buf, size_t len) {
  return check(buf, len, false);
}
