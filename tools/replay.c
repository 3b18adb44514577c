/* replay.c: allot-replay, the engine of `allot record` and `allot replay`.
 * It owns turning a raw recording into a trace (trace.h) and replaying a
 * trace in-process, with one thread per recorded thread, under whatever
 * allocator is preloaded.
 *
 *   allot-replay convert RAW TRACE [COMMAND]   raw recording -> trace
 *   allot-replay info TRACE                    the trace's header
 *   allot-replay run TRACE [none|page|all] [strict|loose]
 *                                              replay it (touching blocks;
 *                                              strict: in the recorded
 *                                              order across threads too;
 *                                              loose: without the coarse
 *                                              order, see trace.h)
 *
 * `run` calls nothing but the trace's allocation calls through the
 * allocator under test: its own tables and buffers come from mmap, and it
 * prints only when the replay is over. Results are printed as "key value"
 * lines for the allot command to read (docs/tools.md).
 *
 * Order: each thread replays its own calls in their recorded order; a call
 * on a block another thread made (or last touched) first waits until that
 * thread's call on it has been replayed, so no block is ever freed before
 * it exists. A one-thread trace replays exactly; with threads, the
 * interleaving across them is the replay's own. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "procstatus.h"
#include "trace.h"

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("allot-replay: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Which fields an op carries (after its op byte). */
enum { F_SLOT = 1, F_SIZE = 2, F_COUNT = 4, F_ALIGN = 8 };

static int op_fields(int op) {
  switch (op) {
  case OP_MALLOC:
  case OP_VALLOC:
  case OP_PVALLOC:
  case OP_NEW:
  case OP_NEW_ARRAY:
  case OP_NEW_NOTHROW:
  case OP_NEW_ARRAY_NOTHROW:
  case OP_REALLOC_NEW:
  case OP_REALLOC:
  case OP_FREE_SIZED:
  case OP_DELETE_SIZED:
  case OP_DELETE_ARRAY_SIZED:
    return F_SLOT | F_SIZE;
  case OP_CALLOC:
  case OP_REALLOCARRAY_NEW:
  case OP_REALLOCARRAY:
    return F_SLOT | F_SIZE | F_COUNT;
  case OP_ALIGNED_ALLOC:
  case OP_POSIX_MEMALIGN:
  case OP_MEMALIGN:
  case OP_NEW_ALIGNED:
  case OP_NEW_ARRAY_ALIGNED:
  case OP_NEW_ALIGNED_NOTHROW:
  case OP_NEW_ARRAY_ALIGNED_NOTHROW:
  case OP_FREE_ALIGNED_SIZED:
  case OP_DELETE_SIZED_ALIGNED:
  case OP_DELETE_ARRAY_SIZED_ALIGNED:
    return F_SLOT | F_SIZE | F_ALIGN;
  case OP_DELETE_ALIGNED:
  case OP_DELETE_ARRAY_ALIGNED:
    return F_SLOT | F_ALIGN;
  case OP_FREE:
  case OP_DELETE:
  case OP_DELETE_ARRAY:
  case OP_USABLE_SIZE:
    return F_SLOT;
  case OP_FREE_NULL:
    return 0;
  default:
    return -1;
  }
}

static bool op_allocates(int op) {
  switch (op) {
  case OP_MALLOC:
  case OP_CALLOC:
  case OP_ALIGNED_ALLOC:
  case OP_POSIX_MEMALIGN:
  case OP_MEMALIGN:
  case OP_VALLOC:
  case OP_PVALLOC:
  case OP_NEW:
  case OP_NEW_ARRAY:
  case OP_NEW_ALIGNED:
  case OP_NEW_ARRAY_ALIGNED:
  case OP_NEW_NOTHROW:
  case OP_NEW_ARRAY_NOTHROW:
  case OP_NEW_ALIGNED_NOTHROW:
  case OP_NEW_ARRAY_ALIGNED_NOTHROW:
  case OP_REALLOC_NEW:
  case OP_REALLOCARRAY_NEW:
    return true;
  default:
    return false;
  }
}

static bool op_frees(int op) {
  switch (op) {
  case OP_FREE:
  case OP_FREE_SIZED:
  case OP_FREE_ALIGNED_SIZED:
  case OP_DELETE:
  case OP_DELETE_ARRAY:
  case OP_DELETE_SIZED:
  case OP_DELETE_ARRAY_SIZED:
  case OP_DELETE_ALIGNED:
  case OP_DELETE_ARRAY_ALIGNED:
  case OP_DELETE_SIZED_ALIGNED:
  case OP_DELETE_ARRAY_SIZED_ALIGNED:
    return true;
  default:
    return false;
  }
}

static const char *op_names[OP_COUNT] = {
    [OP_MALLOC] = "malloc",
    [OP_CALLOC] = "calloc",
    [OP_REALLOC] = "realloc",
    [OP_REALLOCARRAY] = "reallocarray",
    [OP_FREE] = "free",
    [OP_ALIGNED_ALLOC] = "aligned_alloc",
    [OP_POSIX_MEMALIGN] = "posix_memalign",
    [OP_MEMALIGN] = "memalign",
    [OP_VALLOC] = "valloc",
    [OP_PVALLOC] = "pvalloc",
    [OP_USABLE_SIZE] = "malloc_usable_size",
    [OP_FREE_SIZED] = "free_sized",
    [OP_FREE_ALIGNED_SIZED] = "free_aligned_sized",
    [OP_NEW] = "new",
    [OP_NEW_ARRAY] = "new[]",
    [OP_NEW_ALIGNED] = "new_aligned",
    [OP_NEW_ARRAY_ALIGNED] = "new[]_aligned",
    [OP_NEW_NOTHROW] = "new_nothrow",
    [OP_NEW_ARRAY_NOTHROW] = "new[]_nothrow",
    [OP_NEW_ALIGNED_NOTHROW] = "new_aligned_nothrow",
    [OP_NEW_ARRAY_ALIGNED_NOTHROW] = "new[]_aligned_nothrow",
    [OP_DELETE] = "delete",
    [OP_DELETE_ARRAY] = "delete[]",
    [OP_DELETE_SIZED] = "delete_sized",
    [OP_DELETE_ARRAY_SIZED] = "delete[]_sized",
    [OP_DELETE_ALIGNED] = "delete_aligned",
    [OP_DELETE_ARRAY_ALIGNED] = "delete[]_aligned",
    [OP_DELETE_SIZED_ALIGNED] = "delete_sized_aligned",
    [OP_DELETE_ARRAY_SIZED_ALIGNED] = "delete[]_sized_aligned",
    [OP_FREE_NULL] = "free_null",
    [OP_REALLOC_NEW] = "realloc_null",
    [OP_REALLOCARRAY_NEW] = "reallocarray_null",
    [OP_SYNC] = "sync",
};

/* ---- growable byte buffers (convert only: it runs on the system malloc) -- */

typedef struct bytes {
  uint8_t *p;
  size_t len, cap;
} bytes_t;

static void put_byte(bytes_t *b, uint8_t v) {
  if (b->len == b->cap) {
    b->cap = b->cap ? b->cap * 2 : 4096;
    b->p = realloc(b->p, b->cap);
    if (!b->p) die("out of memory");
  }
  b->p[b->len++] = v;
}

static void put_num(bytes_t *b, uint64_t v) {
  while (v >= 0x80) {
    put_byte(b, (uint8_t)(v | 0x80));
    v >>= 7;
  }
  put_byte(b, (uint8_t)v);
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) die("out of memory");
  return p;
}

static void *xrealloc(void *p, size_t size) {
  p = realloc(p, size ? size : 1);
  if (!p) die("out of memory");
  return p;
}

/* ---- convert ----------------------------------------------------------- */

typedef struct cthread {
  const raw_chunk_t **chunks; /* its chunks, in file order */
  size_t nchunks, capchunks;
  /* merge cursor: the next event, decoded, and where the one after is */
  size_t chunk;
  const uint8_t *pos;
  uint32_t left; /* events left in the chunk after `head` */
  bool has_head;
  raw_event_t head;
  uint64_t d_seq, d_ticks, d_addr; /* decoding state within the chunk */
  uint32_t os_tid;
  uint64_t events, last_time, first_seq, last_seq;
  uint64_t final_seq;    /* of its last raw event */
  uint64_t since_coarse; /* events since its last coarse sync */
  size_t live_pos;       /* in conv_t.live while it lives */
  bytes_t out;
  uint32_t *free_slots; /* slots this thread freed: reused by it first */
  size_t nfree, capfree;
  /* a realloc between its two raw events */
  int pending_op;
  uint32_t pending_slot;
  int pending_from_null;
  uint64_t pending_addr;
  uint64_t pending_size, pending_count, pending_wait, pending_time;
  bool pending_waits;
} cthread_t;

typedef struct conv {
  cthread_t *threads;
  size_t nthreads;
  /* address -> slot + 1 (0: empty), open addressing */
  uint64_t *keys;
  uint32_t *vals;
  size_t hcap, hcount;
  /* per slot */
  uint64_t *gen;     /* operations on the slot so far */
  uint32_t *last;    /* thread of the last operation */
  uint64_t *reqsize; /* bytes requested for the block in it */
  size_t nslots, capslots;
  trace_header_t h;
  uint64_t live_bytes, live_blocks;
  int64_t prev_thread; /* thread of the previous raw event, -1 at first */
  uint64_t prev_seq;
  uint32_t *live; /* threads between their first and last event */
  size_t nlive;
} conv_t;

/* Every this many calls of a thread, a coarse sync to every other thread
 * alive: no thread runs further ahead of the others than this, so a
 * producer bounded by its consumer when recorded stays about as bounded. */
#define COARSE_EVERY 512

static size_t hash_addr(uint64_t a, size_t cap) {
  a ^= a >> 29;
  a *= 0xbf58476d1ce4e5b9ull;
  a ^= a >> 32;
  return (size_t)a & (cap - 1);
}

static void map_grow(conv_t *c);

static void map_put(conv_t *c, uint64_t addr, uint32_t slot) {
  if ((c->hcount + 1) * 2 > c->hcap) map_grow(c);
  size_t i = hash_addr(addr, c->hcap);
  while (c->vals[i] && c->keys[i] != addr)
    i = (i + 1) & (c->hcap - 1);
  if (!c->vals[i]) c->hcount++;
  c->keys[i] = addr;
  c->vals[i] = slot + 1;
}

static void map_grow(conv_t *c) {
  size_t old = c->hcap;
  uint64_t *ok = c->keys;
  uint32_t *ov = c->vals;
  c->hcap = old ? old * 2 : 1 << 16;
  c->keys = xcalloc(c->hcap, sizeof *c->keys);
  c->vals = xcalloc(c->hcap, sizeof *c->vals);
  c->hcount = 0;
  for (size_t i = 0; i < old; i++)
    if (ov[i]) map_put(c, ok[i], ov[i] - 1);
  free(ok);
  free(ov);
}

/* slot of a live block at addr, or -1 */
static int64_t map_get(conv_t *c, uint64_t addr) {
  if (!c->hcap) return -1;
  size_t i = hash_addr(addr, c->hcap);
  while (c->vals[i]) {
    if (c->keys[i] == addr) return c->vals[i] - 1;
    i = (i + 1) & (c->hcap - 1);
  }
  return -1;
}

static void map_del(conv_t *c, uint64_t addr) {
  size_t i = hash_addr(addr, c->hcap);
  while (c->vals[i] && c->keys[i] != addr)
    i = (i + 1) & (c->hcap - 1);
  if (!c->vals[i]) return;
  c->vals[i] = 0;
  c->hcount--;
  /* backward-shift the cluster after it */
  size_t j = i;
  for (;;) {
    j = (j + 1) & (c->hcap - 1);
    if (!c->vals[j]) break;
    size_t home = hash_addr(c->keys[j], c->hcap);
    bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (between) continue;
    c->keys[i] = c->keys[j];
    c->vals[i] = c->vals[j];
    c->vals[j] = 0;
    i = j;
  }
}

static uint32_t slot_take(conv_t *c, cthread_t *t) {
  if (t->nfree) return t->free_slots[--t->nfree];
  if (c->nslots == c->capslots) {
    c->capslots = c->capslots ? c->capslots * 2 : 1 << 12;
    c->gen = xrealloc(c->gen, c->capslots * sizeof *c->gen);
    c->last = xrealloc(c->last, c->capslots * sizeof *c->last);
    c->reqsize = xrealloc(c->reqsize, c->capslots * sizeof *c->reqsize);
  }
  uint32_t s = (uint32_t)c->nslots++;
  c->gen[s] = 0;
  c->last[s] = UINT32_MAX;
  c->reqsize[s] = 0;
  return s;
}

static void slot_release(cthread_t *t, uint32_t s) {
  if (t->nfree == t->capfree) {
    t->capfree = t->capfree ? t->capfree * 2 : 256;
    t->free_slots = xrealloc(t->free_slots, t->capfree * sizeof(uint32_t));
  }
  t->free_slots[t->nfree++] = s;
}

/* The wait an operation on slot s by thread ti needs: the slot's operation
 * count, when another thread did the last one. */
static bool slot_touch(conv_t *c, uint32_t s, uint32_t ti, uint64_t *wait) {
  bool w = c->last[s] != UINT32_MAX && c->last[s] != ti;
  *wait = c->gen[s];
  c->gen[s]++;
  c->last[s] = ti;
  return w;
}

static void live_add(conv_t *c, uint64_t bytes) {
  c->live_bytes += bytes;
  c->live_blocks++;
  c->h.total_bytes += bytes;
  c->h.allocations++;
  if (c->live_bytes > c->h.peak_live_bytes)
    c->h.peak_live_bytes = c->live_bytes;
  if (c->live_blocks > c->h.peak_live_blocks)
    c->h.peak_live_blocks = c->live_blocks;
}

static void live_sub(conv_t *c, uint64_t bytes) {
  c->live_bytes -= bytes;
  c->live_blocks--;
  c->h.frees++;
}

static void emit(conv_t *c, cthread_t *t, int op, bool failed, bool waits,
                 uint64_t slot, uint64_t size, uint64_t count, uint64_t align,
                 uint64_t wait, uint64_t time) {
  int f = op_fields(op);
  put_byte(&t->out,
           (uint8_t)(op | (waits ? TR_WAIT : 0) | (failed ? TR_FAILED : 0)));
  if ((f & F_SLOT) && !(failed && op_allocates(op))) put_num(&t->out, slot);
  if (f & F_SIZE) put_num(&t->out, size);
  if (f & F_COUNT) put_num(&t->out, count);
  if (f & F_ALIGN) put_num(&t->out, align);
  if (waits) put_num(&t->out, wait);
  put_num(&t->out, time >= t->last_time ? time - t->last_time : 0);
  if (time > t->last_time) t->last_time = time;
  t->events++;
  c->h.events++;
  c->h.op_counts[op]++;
  if (failed) c->h.failed++;
}

/* A block at addr that the recording never saw freed (freed by a path the
 * recorder does not see): freed here, by this thread, before the address is
 * given to a new block. */
static void drop_stale(conv_t *c, cthread_t *t, uint32_t ti, uint64_t addr,
                       uint64_t time) {
  int64_t old = map_get(c, addr);
  if (old < 0) return;
  uint64_t wait;
  bool w = slot_touch(c, (uint32_t)old, ti, &wait);
  emit(c, t, OP_FREE, false, w, (uint64_t)old, 0, 0, 0, wait, time);
  live_sub(c, c->reqsize[old]);
  map_del(c, addr);
  slot_release(t, (uint32_t)old);
  c->h.foreign_frees++; /* counted with the frees the trace lacks */
}

static void conv_event(conv_t *c, uint32_t ti, const raw_event_t *e) {
  cthread_t *t = &c->threads[ti];
  int op = (int)(e->seq_op & 0xff);
  uint64_t addr = e->addr, time = e->time_ns;
  if (op == OP_REALLOC_RESULT) {
    if (!t->pending_op) return; /* its first half was not recorded */
    int pop = t->pending_op;
    t->pending_op = 0;
    uint64_t bytes =
        t->pending_size * (t->pending_count ? t->pending_count : 1);
    if (t->pending_from_null) {
      if (!addr) {
        emit(c, t, pop, true, false, 0, t->pending_size, t->pending_count, 0, 0,
             t->pending_time);
        return;
      }
      drop_stale(c, t, ti, addr, t->pending_time);
      uint32_t s = slot_take(c, t);
      uint64_t wait;
      bool w = slot_touch(c, s, ti, &wait);
      emit(c, t, pop, false, w, s, t->pending_size, t->pending_count, 0, wait,
           t->pending_time);
      c->reqsize[s] = bytes;
      map_put(c, addr, s);
      live_add(c, bytes);
      return;
    }
    uint32_t s = t->pending_slot;
    if (!addr) {
      /* realloc(p, 0) that freed p, or a failure that kept p */
      emit(c, t, pop, true, t->pending_waits, s, t->pending_size,
           t->pending_count, 0, t->pending_wait, t->pending_time);
      if (bytes == 0) {
        slot_release(t, s);
        c->h.frees++;
      } else {
        map_put(c, t->pending_addr, s);
        c->live_bytes += c->reqsize[s];
        c->live_blocks++;
      }
      return;
    }
    /* the new address may have been a block the recording never saw freed:
     * that free comes first */
    drop_stale(c, t, ti, addr, t->pending_time);
    emit(c, t, pop, false, t->pending_waits, s, t->pending_size,
         t->pending_count, 0, t->pending_wait, t->pending_time);
    c->reqsize[s] = bytes;
    map_put(c, addr, s);
    c->live_bytes += bytes;
    c->live_blocks++;
    c->h.total_bytes += bytes;
    if (c->live_bytes > c->h.peak_live_bytes)
      c->h.peak_live_bytes = c->live_bytes;
    if (c->live_blocks > c->h.peak_live_blocks)
      c->h.peak_live_blocks = c->live_blocks;
    return;
  }
  if (op == OP_REALLOC || op == OP_REALLOCARRAY || op == OP_REALLOC_NEW ||
      op == OP_REALLOCARRAY_NEW) {
    t->pending_time = time;
    t->pending_size = e->size;
    t->pending_count =
        (op == OP_REALLOCARRAY || op == OP_REALLOCARRAY_NEW) ? e->aux : 0;
    t->pending_from_null = addr == 0;
    t->pending_addr = addr;
    if (addr) {
      int64_t s = map_get(c, addr);
      if (s < 0) {
        /* a block the recording did not see made: replayed as made here */
        c->h.foreign_frees++;
        t->pending_from_null = 1;
        op = op == OP_REALLOC ? OP_REALLOC_NEW : OP_REALLOCARRAY_NEW;
      } else {
        t->pending_slot = (uint32_t)s;
        t->pending_waits = slot_touch(c, (uint32_t)s, ti, &t->pending_wait);
        live_sub(c, c->reqsize[s]);
        c->h.frees--; /* a realloc is not a free */
        map_del(c, addr);
      }
    }
    t->pending_op = op;
    return;
  }
  int f = op_fields(op);
  if (f < 0) return;
  if (op == OP_FREE_NULL) {
    emit(c, t, op, false, false, 0, 0, 0, 0, 0, time);
    return;
  }
  uint64_t size = e->size, count = 0, align = 0;
  if (f & F_ALIGN) align = e->aux;
  if (f & F_COUNT) count = e->aux;
  if (op_allocates(op)) {
    if (!addr) {
      emit(c, t, op, true, false, 0, size, count, align, 0, time);
      return;
    }
    drop_stale(c, t, ti, addr, time);
    uint32_t s = slot_take(c, t);
    uint64_t wait;
    bool w = slot_touch(c, s, ti, &wait);
    emit(c, t, op, false, w, s, size, count, align, wait, time);
    uint64_t bytes = count ? size * count : size;
    c->reqsize[s] = bytes;
    map_put(c, addr, s);
    live_add(c, bytes);
    return;
  }
  int64_t s = map_get(c, addr);
  if (s < 0) {
    if (op_frees(op)) c->h.foreign_frees++;
    return;
  }
  uint64_t wait;
  bool w = slot_touch(c, (uint32_t)s, ti, &wait);
  emit(c, t, op, false, w, (uint64_t)s, size, count, align, wait, time);
  if (op_frees(op)) {
    live_sub(c, c->reqsize[s]);
    map_del(c, addr);
    slot_release(t, (uint32_t)s);
  }
}

static void emit_sync(conv_t *c, cthread_t *t, uint32_t other, int flags) {
  cthread_t *o = &c->threads[other];
  if (!o->events) return;
  put_byte(&t->out, (uint8_t)(OP_SYNC | flags));
  put_num(&t->out, other);
  put_num(&t->out, o->events);
  t->events++;
  c->h.op_counts[OP_SYNC]++;
}

/* Thread lifetimes: before a thread's first call, and before the call that
 * followed another thread's last one, wait for the thread of the previous
 * call; at every other change of thread, a sync only a strict replay
 * honours (trace.h). */
static void order_sync(conv_t *c, uint32_t ti, uint64_t seq) {
  cthread_t *t = &c->threads[ti];
  if (t->first_seq == seq) { /* it starts */
    t->live_pos = c->nlive;
    c->live[c->nlive++] = ti;
  }
  if (c->prev_thread >= 0 && (uint32_t)c->prev_thread != ti) {
    cthread_t *p = &c->threads[c->prev_thread];
    bool life = t->first_seq == seq || p->final_seq == c->prev_seq;
    emit_sync(c, t, (uint32_t)c->prev_thread, life ? 0 : SYNC_STRICT);
  }
  if (++t->since_coarse >= COARSE_EVERY) {
    t->since_coarse = 0;
    for (size_t k = 0; k < c->nlive; k++)
      if (c->live[k] != ti) emit_sync(c, t, c->live[k], SYNC_COARSE);
  }
  if (t->final_seq == seq) { /* it ends */
    uint32_t last = c->live[--c->nlive];
    c->live[t->live_pos] = last;
    c->threads[last].live_pos = t->live_pos;
  }
  c->prev_thread = ti;
  c->prev_seq = seq;
}

static uint64_t get_raw_num(const uint8_t **p, const uint8_t *end) {
  uint64_t v = 0;
  for (int shift = 0; *p < end && shift < 64; shift += 7) {
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) break;
  }
  return v;
}

/* Ticks to ns since the start: a line through the first and the last
 * (ticks, ns) pairs of the recording. */
static uint64_t start_ticks_g;
static double ns_per_tick = 1.0;

/* Decode the next event of thread t into t->head; false when none is left. */
/* The merge's binary heap of thread indexes, keyed by each thread's next
 * sequence number: restore its order below position i. */
static void sift_down(size_t *heap, size_t n, size_t i,
                      const cthread_t *threads) {
#define KEY(k) (threads[heap[k]].head.seq_op >> 8)
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && KEY(l) < KEY(m)) m = l;
    if (r < n && KEY(r) < KEY(m)) m = r;
    if (m == i) return;
    size_t tmp = heap[i];
    heap[i] = heap[m];
    heap[m] = tmp;
    i = m;
  }
#undef KEY
}

static bool next_event(cthread_t *t) {
  while (!t->left) {
    if (t->has_head) t->chunk++;
    if (t->chunk >= t->nchunks) {
      t->has_head = false;
      return false;
    }
    const raw_chunk_t *ch = t->chunks[t->chunk];
    t->pos = (const uint8_t *)(ch + 1);
    t->left = ch->count;
    t->d_seq = t->d_ticks = t->d_addr = 0;
    t->has_head = true;
    if (!t->left) t->chunk++, t->has_head = false;
  }
  const raw_chunk_t *ch = t->chunks[t->chunk];
  const uint8_t *end = (const uint8_t *)(ch + 1) + ch->bytes;
  const uint8_t *p = t->pos;
  uint8_t ob = p < end ? *p++ : 0;
  t->d_seq += get_raw_num(&p, end);
  t->d_ticks += get_raw_num(&p, end);
  uint64_t z = get_raw_num(&p, end);
  t->d_addr += (z >> 1) ^ (uint64_t) - (int64_t)(z & 1);
  raw_event_t *e = &t->head;
  e->seq_op = t->d_seq << 8 | (ob & TR_OP_MASK);
  int64_t dt = (int64_t)(t->d_ticks - start_ticks_g);
  e->time_ns = dt > 0 ? (uint64_t)((double)dt * ns_per_tick) : 0;
  e->addr = t->d_addr;
  e->size = (ob & RAW_SIZE) ? get_raw_num(&p, end) : 0;
  e->aux = (ob & RAW_AUX) ? get_raw_num(&p, end) : 0;
  t->pos = p;
  t->left--;
  t->has_head = true;
  return true;
}

static int convert(const char *raw_path, const char *out_path,
                   const char *command) {
  int fd = open(raw_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("%s: %s", raw_path, strerror(errno));
  struct stat st;
  fstat(fd, &st);
  size_t len = (size_t)st.st_size;
  if (len < sizeof(raw_header_t)) die("%s: not a raw recording", raw_path);
  const uint8_t *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) die("%s: %s", raw_path, strerror(errno));
  const raw_header_t *rh = (const raw_header_t *)m;
  if (memcmp(rh->magic, RAW_MAGIC, 8) || rh->version != RAW_VERSION)
    die("%s: not a raw recording of this version", raw_path);

  conv_t c;
  memset(&c, 0, sizeof c);
  c.prev_thread = -1;
  memcpy(c.h.magic, TRACE_MAGIC, 8);
  c.h.version = TRACE_VERSION;
  c.h.pid = rh->pid;
  if (command) snprintf(c.h.command, sizeof c.h.command, "%s", command);

  /* index the chunks by thread */
  size_t off = sizeof(raw_header_t), cap_threads = 0;
  uint64_t last_ticks = rh->start_ticks, last_ns = rh->start_ns;
  start_ticks_g = rh->start_ticks;
  while (off + sizeof(raw_chunk_t) <= len) {
    const raw_chunk_t *ch = (const raw_chunk_t *)(m + off);
    off += sizeof *ch;
    if (ch->bytes > len - off) break; /* cut short: the process was killed */
    if (ch->ticks > last_ticks && ch->ns > last_ns) {
      last_ticks = ch->ticks;
      last_ns = ch->ns;
    }
    if (ch->magic == CHUNK_TAIL) {
      if (ch->bytes >= sizeof(raw_tail_t)) {
        memcpy(&c.h.recorded, m + off, sizeof(raw_tail_t));
        c.h.complete = 1;
      }
      off += ch->bytes;
      continue;
    }
    if (ch->magic != CHUNK_EVENTS) break;
    size_t bytes = ch->bytes;
    uint32_t ti = ch->thread;
    if (ti >= cap_threads) {
      size_t ncap = cap_threads ? cap_threads : 16;
      while (ncap <= ti)
        ncap *= 2;
      c.threads = xrealloc(c.threads, ncap * sizeof *c.threads);
      memset(c.threads + cap_threads, 0,
             (ncap - cap_threads) * sizeof *c.threads);
      cap_threads = ncap;
    }
    if (ti >= c.nthreads) c.nthreads = ti + 1;
    cthread_t *t = &c.threads[ti];
    if (t->nchunks == t->capchunks) {
      t->capchunks = t->capchunks ? t->capchunks * 2 : 8;
      t->chunks = xrealloc(t->chunks, t->capchunks * sizeof *t->chunks);
    }
    t->chunks[t->nchunks++] = ch;
    t->os_tid = ch->os_tid;
    off += bytes;
  }
  if (last_ticks > rh->start_ticks && last_ns > rh->start_ns)
    ns_per_tick = (double)(last_ns - rh->start_ns) /
                  (double)(last_ticks - rh->start_ticks);

  /* each thread's last sequence number: decode its last chunk */
  for (size_t i = 0; i < c.nthreads; i++) {
    cthread_t *t = &c.threads[i];
    if (!t->nchunks) continue;
    cthread_t probe;
    memset(&probe, 0, sizeof probe);
    probe.chunks = t->chunks + t->nchunks - 1;
    probe.nchunks = 1;
    while (next_event(&probe))
      t->final_seq = probe.head.seq_op >> 8;
  }

  /* merge the threads' streams by sequence number: a binary heap */
  c.live = xcalloc(c.nthreads, sizeof *c.live);
  size_t *heap = xcalloc(c.nthreads, sizeof *heap), n = 0;
  for (size_t i = 0; i < c.nthreads; i++)
    if (next_event(&c.threads[i])) heap[n++] = i;
  for (size_t k = n / 2; k-- > 0;)
    sift_down(heap, n, k, c.threads);
  uint64_t first_time = UINT64_MAX, last_time = 0;
  while (n) {
    size_t ti = heap[0];
    cthread_t *t = &c.threads[ti];
    raw_event_t ev = t->head, *e = &ev;
    uint64_t s = e->seq_op >> 8;
    if (!t->first_seq) t->first_seq = s;
    t->last_seq = s;
    if (e->time_ns < first_time) first_time = e->time_ns;
    if (e->time_ns > last_time) last_time = e->time_ns;
    order_sync(&c, (uint32_t)ti, s);
    conv_event(&c, (uint32_t)ti, e);
    if (!next_event(t)) heap[0] = heap[--n];
    sift_down(heap, n, 0, c.threads);
  }
  c.h.slots = c.nslots;
  c.h.end_live_bytes = c.live_bytes;
  c.h.end_live_blocks = c.live_blocks;
  c.h.duration_ns = last_time >= first_time ? last_time - first_time : 0;

  /* write: header, thread table, streams */
  size_t used = 0;
  for (size_t i = 0; i < c.nthreads; i++)
    used += c.threads[i].events > 0;
  c.h.threads = (uint32_t)used;
  c.h.events = 0; /* calls, not counting the syncs */
  for (int op = 1; op < OP_COUNT; op++)
    if (op != OP_SYNC) c.h.events += c.h.op_counts[op];
  trace_thread_t *tt = xcalloc(used, sizeof *tt);
  uint64_t at = sizeof c.h + used * sizeof *tt;
  size_t k = 0;
  for (size_t i = 0; i < c.nthreads; i++) {
    cthread_t *t = &c.threads[i];
    if (!t->events) continue;
    tt[k].index = (uint32_t)i;
    tt[k].os_tid = t->os_tid;
    tt[k].events = t->events;
    tt[k].offset = at;
    tt[k].bytes = t->out.len;
    tt[k].first_seq = t->first_seq;
    tt[k].last_seq = t->last_seq;
    at += t->out.len;
    k++;
  }
  FILE *out = fopen(out_path, "wb");
  if (!out) die("%s: %s", out_path, strerror(errno));
  fwrite(&c.h, sizeof c.h, 1, out);
  fwrite(tt, sizeof *tt, used, out);
  for (size_t i = 0; i < c.nthreads; i++)
    if (c.threads[i].events)
      fwrite(c.threads[i].out.p, 1, c.threads[i].out.len, out);
  if (fclose(out) != 0) die("%s: write failed", out_path);
  munmap((void *)m, len);
  close(fd);
  return 0;
}

/* ---- reading a trace -------------------------------------------------------
 */

static void read_header(int fd, const char *path, trace_header_t *h) {
  if (pread(fd, h, sizeof *h, 0) != (ssize_t)sizeof *h ||
      memcmp(h->magic, TRACE_MAGIC, 8) != 0)
    die("%s: not an allot trace", path);
  if (h->version != TRACE_VERSION)
    die("%s: trace version %u, this replayer reads %u", path, h->version,
        TRACE_VERSION);
}

static int info(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("%s: %s", path, strerror(errno));
  trace_header_t h;
  read_header(fd, path, &h);
  struct stat st;
  fstat(fd, &st);
  printf("file_bytes %lld\n", (long long)st.st_size);
  printf("command %s\n", h.command);
  printf("pid %u\n", h.pid);
  printf("complete %u\n", h.complete);
  printf("threads %u\n", h.threads);
  printf("events %llu\n", (unsigned long long)h.events);
  printf("slots %llu\n", (unsigned long long)h.slots);
  printf("duration_ns %llu\n", (unsigned long long)h.duration_ns);
  printf("allocations %llu\n", (unsigned long long)h.allocations);
  printf("frees %llu\n", (unsigned long long)h.frees);
  printf("total_bytes %llu\n", (unsigned long long)h.total_bytes);
  printf("peak_live_bytes %llu\n", (unsigned long long)h.peak_live_bytes);
  printf("peak_live_blocks %llu\n", (unsigned long long)h.peak_live_blocks);
  printf("end_live_bytes %llu\n", (unsigned long long)h.end_live_bytes);
  printf("end_live_blocks %llu\n", (unsigned long long)h.end_live_blocks);
  printf("foreign_frees %llu\n", (unsigned long long)h.foreign_frees);
  printf("failed %llu\n", (unsigned long long)h.failed);
  printf("recorded_ns %llu\n", (unsigned long long)h.recorded.end_ns);
  printf("recorded_hwm_kib %lld\n", (long long)h.recorded.vm_hwm_kib);
  printf("recorded_lost %llu\n", (unsigned long long)h.recorded.lost);
  printf("recorded_allot %u\n", h.recorded.has_allot);
  printf("recorded_allot_stats_mode %u\n", h.recorded.allot_stats_mode);
  printf("recorded_allot_in_use_peak %llu\n",
         (unsigned long long)h.recorded.allot_in_use_peak);
  printf("recorded_allot_in_use %llu\n",
         (unsigned long long)h.recorded.allot_in_use);
  for (int op = 1; op < OP_COUNT; op++)
    if (h.op_counts[op])
      printf("op %s %llu\n", op_names[op], (unsigned long long)h.op_counts[op]);
  close(fd);
  return 0;
}

/* ---- replay
 * ------------------------------------------------------------------- */

typedef struct rslot {
  void *p;
  size_t size;
  _Atomic uint64_t gen;
} rslot_t;

static char **argv_g; /* for the exec of allot-replay-cxx */
static rslot_t *slots;
static int trace_fd;
static int touch_mode = 1; /* 0 none, 1 one byte per page, 2 every byte */
static bool strict;        /* every call in the recorded order */
static bool loose;         /* no coarse syncs: threads run ahead freely */
static _Atomic uint64_t failed_now, bad_trace;
/* a damaged trace: every thread stops, rather than wait for calls that
 * will never come */
static _Atomic int stop_all;

static void trace_damaged(void) {
  atomic_fetch_add(&bad_trace, 1);
  atomic_store(&stop_all, 1);
}

static uint64_t progress_sum(void);

/* A thread waiting for another's call. If no thread has made progress for
 * 10 s, every thread is waiting (or has ended, or is not started yet): a
 * damaged trace whose awaited calls will never come, so stop, rather than
 * hang. */
static bool keep_waiting(int spins) {
  static __thread uint64_t seen, since;
  if (atomic_load_explicit(&stop_all, memory_order_relaxed)) return false;
  if (spins < 200) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  } else {
    sched_yield();
    if ((spins & 1023) == 0) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
      uint64_t sum = progress_sum();
      if (spins == 1024 || sum != seen) {
        seen = sum;
        since = now;
      } else if (now - since > 10000000000u) {
        trace_damaged();
        return false;
      }
    }
  }
  return true;
}

/* C++ operators, from whichever library defines them (the allocator under
 * test, or libstdc++, which this program links so they always exist) */
static void *(*op_new[8])(size_t, ...);
static void (*op_delete[8])(void *, ...);

static void *map_anon(size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) die("cannot map %zu bytes for the replayer", len);
  return p;
}

#define READ_BUF (256 * 1024)

typedef struct reader {
  uint64_t off, end;
  uint8_t *buf;
  size_t len, pos;
} reader_t;

static void refill(reader_t *r) {
  size_t keep = r->len - r->pos;
  memmove(r->buf, r->buf + r->pos, keep);
  r->len = keep;
  r->pos = 0;
  while (r->len < READ_BUF && r->off < r->end) {
    size_t want = READ_BUF - r->len;
    if (want > r->end - r->off) want = (size_t)(r->end - r->off);
    ssize_t n = pread(trace_fd, r->buf + r->len, want, (off_t)r->off);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      r->off = r->end;
      break;
    }
    r->len += (size_t)n;
    r->off += (uint64_t)n;
  }
}

static uint64_t get_num(reader_t *r) {
  uint64_t v = 0;
  for (int shift = 0; r->pos < r->len && shift < 64; shift += 7) {
    uint8_t b = r->buf[r->pos++];
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  return v;
}

static void touch(void *p, size_t from, size_t to) {
  if (!p || touch_mode == 0 || to <= from) return;
  volatile uint8_t *b = p;
  if (touch_mode == 2) {
    memset((uint8_t *)p + from, 0x5a, to - from);
    return;
  }
  b[from] = 1;
  for (size_t i = (from + 4096) & ~(size_t)4095; i < to; i += 4096)
    b[i] = 1;
}

static bool wait_for(rslot_t *s, uint64_t gen) {
  for (int spins = 0;
       atomic_load_explicit(&s->gen, memory_order_acquire) != gen; spins++)
    if (!keep_waiting(spins)) return false;
  return true;
}

static void done(rslot_t *s) {
  atomic_store_explicit(&s->gen,
                        atomic_load_explicit(&s->gen, memory_order_relaxed) + 1,
                        memory_order_release);
}

static void *do_alloc(int op, bool failed, size_t size, size_t count,
                      size_t align) {
  void *p = NULL;
  switch (op) {
  case OP_MALLOC:
    p = malloc(size);
    break;
  case OP_CALLOC:
    p = calloc(count, size);
    break;
  case OP_ALIGNED_ALLOC:
    p = aligned_alloc(align, size);
    break;
  case OP_POSIX_MEMALIGN:
    if (posix_memalign(&p, align, size) != 0) p = NULL;
    break;
  case OP_MEMALIGN:
    p = memalign(align, size);
    break;
  case OP_VALLOC:
    p = valloc(size);
    break;
  case OP_PVALLOC:
    p = pvalloc(size);
    break;
  case OP_REALLOC_NEW:
    p = realloc(NULL, size);
    break;
  case OP_REALLOCARRAY_NEW:
    p = reallocarray(NULL, count, size);
    break;
  default: {
    /* C++: a new that threw when recorded is replayed in its nothrow form,
     * so no exception crosses this C code */
    int form = op - OP_NEW;
    if (failed && form < 4) form += 4;
    void *(*f)(size_t, ...) = op_new[form];
    static const char nothrow_tag = 0; /* std::nothrow is an empty struct */
    switch (form) {
    case 0:
    case 1:
      p = ((void *(*)(size_t))f)(size);
      break;
    case 2:
    case 3:
      p = ((void *(*)(size_t, size_t))f)(size, align);
      break;
    case 4:
    case 5:
      p = ((void *(*)(size_t, const void *))f)(size, &nothrow_tag);
      break;
    default:
      p = ((void *(*)(size_t, size_t, const void *))f)(size, align,
                                                       &nothrow_tag);
      break;
    }
  }
  }
  return p;
}

static void do_free(int op, void *p, size_t size, size_t align) {
  switch (op) {
  case OP_FREE:
    free(p);
    break;
  case OP_FREE_SIZED:
  case OP_FREE_ALIGNED_SIZED:
    free(p);
    break; /* glibc has neither */
  default: {
    int form = op - OP_DELETE;
    void (*f)(void *, ...) = op_delete[form];
    switch (form) {
    case 0:
    case 1:
      ((void (*)(void *))f)(p);
      break;
    case 2:
    case 3:
      ((void (*)(void *, size_t))f)(p, size);
      break;
    case 4:
    case 5:
      ((void (*)(void *, size_t))f)(p, align);
      break;
    default:
      ((void (*)(void *, size_t, size_t))f)(p, size, align);
      break;
    }
  }
  }
}

typedef struct rthread {
  trace_thread_t info;
  pthread_t tid;
  _Alignas(64) _Atomic uint64_t progress; /* items replayed (OP_SYNC) */
  char pad[56];
} rthread_t;

static uint64_t nslots_total;
static rthread_t **by_index; /* raw thread index -> thread */
static uint32_t nindex;

static rthread_t *all_threads; /* for the watchdog in keep_waiting */
static uint32_t all_count;

static uint64_t progress_sum(void) {
  uint64_t sum = 0;
  for (uint32_t i = 0; i < all_count; i++)
    sum += atomic_load_explicit(&all_threads[i].progress, memory_order_relaxed);
  return sum;
}

static void *replay_thread(void *arg) {
  rthread_t *rt = arg;
  reader_t r = {rt->info.offset, rt->info.offset + rt->info.bytes,
                map_anon(READ_BUF), 0, 0};
  for (uint64_t i = 0; i < rt->info.events; i++) {
    if (r.len - r.pos < 80) refill(&r);
    if (r.pos >= r.len) {
      trace_damaged();
      break;
    }
    uint8_t ob = r.buf[r.pos++];
    int op = ob & TR_OP_MASK, f = op_fields(op);
    if (op == OP_SYNC) {
      uint64_t other = get_num(&r), count = get_num(&r);
      if (((ob & SYNC_STRICT) && !strict) || ((ob & SYNC_COARSE) && loose)) {
        atomic_store_explicit(&rt->progress, i + 1, memory_order_release);
        continue;
      }
      rthread_t *o = other < nindex ? by_index[other] : NULL;
      if (!o) {
        atomic_fetch_add(&bad_trace, 1);
        break;
      }
      bool ok = true;
      for (int spins = 0; ok && atomic_load_explicit(
                                    &o->progress, memory_order_acquire) < count;
           spins++)
        ok = keep_waiting(spins);
      if (!ok) break;
      atomic_store_explicit(&rt->progress, i + 1, memory_order_release);
      continue;
    }
    bool failed = ob & TR_FAILED;
    if (f < 0) {
      trace_damaged();
      break;
    }
    uint64_t slot = 0, size = 0, count = 0, align = 0, wait = 0;
    bool has_slot = (f & F_SLOT) && !(failed && op_allocates(op));
    if (has_slot) slot = get_num(&r);
    if (f & F_SIZE) size = get_num(&r);
    if (f & F_COUNT) count = get_num(&r);
    if (f & F_ALIGN) align = get_num(&r);
    if (ob & TR_WAIT) wait = get_num(&r);
    (void)get_num(&r); /* time: not replayed, calls follow at full speed */
    if (has_slot && slot >= nslots_total) {
      trace_damaged();
      break;
    }
    rslot_t *s = has_slot ? &slots[slot] : NULL;
    if (s && (ob & TR_WAIT) && !wait_for(s, wait)) break;
    if (op == OP_FREE_NULL) {
      free(NULL);
    } else if (op_allocates(op)) {
      void *p =
          do_alloc(op, failed, (size_t)size, (size_t)count, (size_t)align);
      if (failed) {
        free(p); /* failed when recorded: the program never had it */
      } else {
        size_t bytes = (size_t)(count ? size * count : size);
        if (!p && bytes) atomic_fetch_add(&failed_now, 1);
        if (op != OP_CALLOC) touch(p, 0, bytes);
        s->p = p;
        s->size = bytes;
        done(s);
      }
    } else if (op == OP_REALLOC || op == OP_REALLOCARRAY) {
      size_t bytes = (size_t)(count ? size * count : size);
      void *q = op == OP_REALLOC
                    ? realloc(s->p, (size_t)size)
                    : reallocarray(s->p, (size_t)count, (size_t)size);
      if (failed && bytes == 0) {
        free(q); /* realloc(p, 0) freed p when recorded */
        s->p = NULL;
      } else if (q) {
        touch(q, s->size, bytes);
        s->p = q;
        s->size = bytes;
      } else if (!failed) {
        atomic_fetch_add(&failed_now, 1);
      }
      done(s);
    } else if (op == OP_USABLE_SIZE) {
      volatile size_t u = malloc_usable_size(s->p);
      (void)u;
      done(s);
    } else {
      do_free(op, s->p, (size_t)size, (size_t)align);
      s->p = NULL;
      done(s);
    }
    atomic_store_explicit(&rt->progress, i + 1, memory_order_release);
  }
  munmap(r.buf, READ_BUF);
  return NULL;
}

/* Insertion sorts: qsort may allocate, and the replayer's own allocations
 * must not mix with the trace's. */
static void sort_by_first(rthread_t *t, size_t n) {
  for (size_t i = 1; i < n; i++) {
    rthread_t x = t[i];
    size_t j = i;
    for (; j > 0 && t[j - 1].info.first_seq > x.info.first_seq; j--)
      t[j] = t[j - 1];
    t[j] = x;
  }
}

static int run(const char *path) {
  static const char *new_names[8] = {"_Znwm",
                                     "_Znam",
                                     "_ZnwmSt11align_val_t",
                                     "_ZnamSt11align_val_t",
                                     "_ZnwmRKSt9nothrow_t",
                                     "_ZnamRKSt9nothrow_t",
                                     "_ZnwmSt11align_val_tRKSt9nothrow_t",
                                     "_ZnamSt11align_val_tRKSt9nothrow_t"};
  static const char *delete_names[8] = {"_ZdlPv",
                                        "_ZdaPv",
                                        "_ZdlPvm",
                                        "_ZdaPvm",
                                        "_ZdlPvSt11align_val_t",
                                        "_ZdaPvSt11align_val_t",
                                        "_ZdlPvmSt11align_val_t",
                                        "_ZdaPvmSt11align_val_t"};
  trace_fd = open(path, O_RDONLY | O_CLOEXEC);
  if (trace_fd < 0) die("%s: %s", path, strerror(errno));
  trace_header_t h;
  read_header(trace_fd, path, &h);
  /* A C++ trace goes to allot-replay-cxx, this program linked with
   * libstdc++: the recorded program had libstdc++ loaded at start-up, which
   * allocates (its exception pool), and so must the replay, for the peaks
   * to count the same blocks; a C trace replays without it. Loading it with
   * dlopen here instead would allocate more (the loader's own records). */
  bool cxx = false;
  for (int op = OP_NEW; op <= OP_DELETE_ARRAY_SIZED_ALIGNED; op++)
    cxx |= h.op_counts[op] != 0;
#ifndef REPLAY_CXX
  if (cxx) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 16);
    if (n <= 0) die("cannot find allot-replay-cxx");
    self[n] = 0;
    strcat(self, "-cxx");
    execv(self, argv_g);
    die("%s: %s", self, strerror(errno));
  }
#endif
  for (int i = 0; cxx && i < 8; i++) {
    op_new[i] = (void *(*)(size_t, ...))dlsym(RTLD_DEFAULT, new_names[i]);
    op_delete[i] = (void (*)(void *, ...))dlsym(RTLD_DEFAULT, delete_names[i]);
    if (!op_new[i] || !op_delete[i])
      die("operator %s not found", !op_new[i] ? new_names[i] : delete_names[i]);
  }
  size_t tt_bytes = h.threads * sizeof(rthread_t);
  rthread_t *th = map_anon(tt_bytes + 1);
  all_threads = th;
  all_count = h.threads;
  for (uint32_t i = 0; i < h.threads; i++)
    if (pread(trace_fd, &th[i].info, sizeof th[i].info,
              (off_t)(sizeof h + i * sizeof(trace_thread_t))) !=
        sizeof th[i].info)
      die("%s: truncated thread table", path);
  for (uint32_t i = 0; i < h.threads; i++)
    if (th[i].info.index >= nindex) nindex = th[i].info.index + 1;
  by_index = map_anon(nindex * sizeof *by_index + 1);
  sort_by_first(th, h.threads);
  for (uint32_t i = 0; i < h.threads; i++)
    by_index[th[i].info.index] = &th[i];
  rthread_t **running = map_anon(h.threads * sizeof(rthread_t *) + 1);
  size_t nrunning = 0;
  nslots_total = h.slots;
  size_t table = (size_t)h.slots * sizeof(rslot_t);
  slots = map_anon(table + 1);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);

  long base_kib = proc_status_kib("VmRSS");
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  uint64_t t0 = now_ns();
  for (uint32_t i = 0; i < h.threads; i++) {
    /* threads whose recorded life ended before this one began are joined
     * first, so as many run at once as did when recorded */
    size_t keep = 0;
    for (size_t j = 0; j < nrunning; j++) {
      if (running[j]->info.last_seq < th[i].info.first_seq)
        pthread_join(running[j]->tid, NULL);
      else
        running[keep++] = running[j];
    }
    nrunning = keep;
    if (pthread_create(&th[i].tid, &attr, replay_thread, &th[i]) != 0)
      die("cannot create a thread");
    running[nrunning++] = &th[i];
  }
  for (size_t j = 0; j < nrunning; j++)
    pthread_join(running[j]->tid, NULL);
  uint64_t t1 = now_ns();
  getrusage(RUSAGE_SELF, &ru1);
  long hwm_kib = proc_status_kib("VmHWM");
  long rss_kib = proc_status_kib("VmRSS");
  char json[1 << 14];
  json[0] = 0;
  size_t (*stats_json)(char *, size_t) =
      (size_t(*)(char *, size_t))dlsym(RTLD_DEFAULT, "allot_stats_json");
  if (stats_json && stats_json(json, sizeof json) >= sizeof json) json[0] = 0;

  /* from here on the replayer may allocate */
  double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
               (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
               ((double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) +
                (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec)) /
                   1e6;
  printf("events %llu\n", (unsigned long long)h.events);
  printf("threads %u\n", h.threads);
  printf("wall_s %.6f\n", (double)(t1 - t0) / 1e9);
  printf("cpu_s %.6f\n", cpu);
  printf("hwm_kib %ld\n", hwm_kib);
  printf("rss_end_kib %ld\n", rss_kib);
  printf("base_kib %ld\n", base_kib);
  printf("table_kib %zu\n", (table + 1023) / 1024);
  printf("minflt %ld\n", ru1.ru_minflt - ru0.ru_minflt);
  printf("failed_now %llu\n", (unsigned long long)atomic_load(&failed_now));
  printf("bad_trace %llu\n", (unsigned long long)atomic_load(&bad_trace));
  if (json[0]) {
    const char *p = strstr(json, "\"in_use_peak\":");
    printf("allot 1\n");
    printf("allot_stats_mode %d\n", strstr(json, "\"stats_mode\":true") != 0);
    if (p) printf("allot_in_use_peak %llu\n", strtoull(p + 14, NULL, 10));
  }
  return atomic_load(&bad_trace) ? 1 : 0;
}

int main(int argc, char **argv) {
  argv_g = argv;
  if (argc >= 4 && !strcmp(argv[1], "convert"))
    return convert(argv[2], argv[3], argc > 4 ? argv[4] : NULL);
  if (argc == 3 && !strcmp(argv[1], "info")) return info(argv[2]);
  if (argc >= 3 && !strcmp(argv[1], "run")) {
    for (int i = 3; i < argc; i++) {
      if (!strcmp(argv[i], "none"))
        touch_mode = 0;
      else if (!strcmp(argv[i], "page"))
        touch_mode = 1;
      else if (!strcmp(argv[i], "all"))
        touch_mode = 2;
      else if (!strcmp(argv[i], "strict"))
        strict = true;
      else if (!strcmp(argv[i], "loose"))
        loose = true;
      else
        die("run options: none, page or all (touch), strict, loose");
    }
    return run(argv[2]);
  }
  fprintf(stderr, "usage: allot-replay convert RAW TRACE [COMMAND]\n"
                  "       allot-replay info TRACE\n"
                  "       allot-replay run TRACE [none|page|all] "
                  "[strict|loose]\n");
  return 2;
}
