/* checked.c: malloc and free in checked mode — debug mode, secure mode, and
 * the tool annotations (valgrind client requests, AddressSanitizer poisoning).
 *
 * When any of them is on, g.slow_mode routes every small malloc here (no page
 * is ever made current, so the fast path always misses), every big, aligned
 * and realloc call through checked_alloc / checked_realloc, and every free
 * through checked_free (one predictable test in free). The default mode never
 * runs this code, so its checks cost nothing there.
 *
 * A checked block asks the layers below for more than the caller did and
 * keeps a trailer at the end of the usable space the block really has:
 *
 *   p                p+size                       p+U-T          p+U
 *   | caller's bytes | canary (>= 1 byte, keyed)   | frames | size |
 *
 * The size word holds the requested size and a keyed tag of it and of the
 * address; the canary bytes are a keyed function of the address. free checks
 * both, so a 1-byte overflow is caught. Debug mode adds the allocation's
 * return addresses (leak report). Freed blocks wait in a quarantine, bounded
 * per heap, zeroed (secure) or filled with 0xDD (debug), with the free mark
 * in their second word so a second free is caught; when a block leaves the
 * quarantine the fill is checked again, which catches writes after free.
 * Large blocks in quarantine are made inaccessible instead.
 *
 * Debug mode (ALLOT_DEBUG=1) also fills new blocks with 0xA5, checks the
 * heap at exit and reports the blocks still allocated with their sites. */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unwind.h>

#if ALLOT_VALGRIND
#include <valgrind/memcheck.h>
#define VG(x)                                                                  \
  do {                                                                         \
    if (g.valgrind) {                                                          \
      x;                                                                       \
    }                                                                          \
  } while (0)
#else
#define VG(x)                                                                  \
  do {                                                                         \
  } while (0)
#endif

#if defined(__SANITIZE_ADDRESS__)
#define ALLOT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ALLOT_ASAN 1
#endif
#endif
#if ALLOT_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define FILL_NEW 0xA5
#define FILL_FREED 0xDD
#define NFRAMES 5 /* return addresses kept per block (debug) */
#define CANARY_MAX                                                             \
  16                   /* canary bytes past the end (a linear overflow         \
                          crosses them first) */
#define LEAD_CANARY 64 /* before a large block, in its header page */
#define FIELD48 (((uint64_t)1 << 48) - 1)
#define QCAP 256                 /* quarantine: blocks per heap */
#define QBYTES ((size_t)4 << 20) /* quarantine: bytes per heap */
#define LQCAP 16                 /* quarantine: large blocks per heap */
/* secure mode: freed blocks from this size up are zeroed by giving their
 * pages back (no memory held in the quarantine); smaller ones by memset,
 * which costs less than faulting the pages in again */
#define SCRUB_PURGE ((size_t)256 << 10)

/* What checked mode does, fixed by checked_configure. */
static struct {
  bool trailer;    /* blocks carry a size word and canary */
  bool frames;     /* ... and their allocation site */
  bool quarantine; /* frees are delayed */
  bool random;     /* allocation order within a page is random */
  bool zero;       /* new and freed memory zeroed (else debug fills) */
  bool fill;       /* debug fill patterns */
  size_t tsize;    /* trailer bytes */
  uint64_t ckey;   /* canary and tag secret */
} cf;

void checked_configure(void) {
  int valgrind = 0, asan = 0;
#if ALLOT_VALGRIND
  valgrind = RUNNING_ON_VALGRIND ? 1 : 0;
#endif
#if ALLOT_ASAN
  asan = 1;
#endif
  g.valgrind = valgrind;
  bool meta = g.debug || g.secure || valgrind || asan;
  g.slow_mode = g.slow_mode || meta;
  cf.trailer = meta;
  cf.frames = g.debug;
  cf.quarantine = meta;
  cf.random = g.secure;
  cf.zero = g.secure;
  cf.fill = g.debug && !g.secure;
  cf.tsize = 8 + (cf.frames ? NFRAMES * 8 : 0);
  cf.ckey = (g.key * 0x9E3779B97F4A7C15ull) ^ (g.mark_key >> 3) ^ 0x5bd1e995u;
}

/* ---- block metadata ------------------------------------------------------ */

static ALWAYS_INLINE uint64_t mix(uint64_t x) {
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 32);
}
/* The size word: the size, and a keyed tag of it and of the address in the
 * top 16 bits. The top byte is the block's last byte, the one an underflow
 * of the block above hits first: like canary bytes it is kept in 0x80..0xfe
 * so that text, NULs and small integers always change it. */
static uint64_t size_word(const void *p, size_t size) {
  uint64_t tag = mix((uintptr_t)p ^ cf.ckey ^ ((uint64_t)size << 17)) >> 48;
  tag |= 0x8000;
  if ((tag >> 8) == 0xff) tag ^= 0x100;
  return (uint64_t)size | tag << 48;
}
static uint64_t canary_of(const void *p) {
  return mix((uintptr_t)p * 0x9E3779B97F4A7C15ull ^ cf.ckey);
}
/* The canary byte at an address: keyed, but always 0x80..0xfe, so that the
 * commonest overflows (a string's NUL, text, small integers, -1) can never
 * write the very byte that was there and go unnoticed. */
static uint8_t canary_byte(const uint8_t *at, uint64_t c) {
  uint8_t b = (uint8_t)(0x80 | (c >> (((uintptr_t)at & 7) * 8)));
  return b == 0xff ? 0xfe : b;
}
static void canary_fill(uint8_t *at, size_t n, uint64_t c) {
  for (size_t i = 0; i < n; i++)
    at[i] = canary_byte(&at[i], c);
}
static bool canary_ok(const uint8_t *at, size_t n, uint64_t c) {
  uint8_t bad = 0;
  for (size_t i = 0; i < n; i++)
    bad |= at[i] ^ canary_byte(&at[i], c);
  return bad == 0;
}
static size_t canary_len(size_t size, size_t u) {
  size_t room = u - cf.tsize - size;
  return room < CANARY_MAX ? room : CANARY_MAX;
}
static uint64_t *trailer_word(void *p, size_t u) {
  return (uint64_t *)((uint8_t *)p + u - 8);
}
static uintptr_t *trailer_frames(void *p, size_t u) {
  return (uintptr_t *)((uint8_t *)p + u - cf.tsize);
}

/* Poison the bytes of a live block past its requested size (the layers use
 * the first 16 bytes of every block, so those stay addressable). */
static void poison_slack(void *p, size_t size, size_t u) {
  size_t from = size < 16 ? 16 : size;
  if (u > from) POISON((uint8_t *)p + from, u - from);
  (void)p;
}

/* Requested size of live block p (usable u), or SIZE_MAX if its trailer was
 * overwritten. */
static size_t requested(void *p, size_t u) {
  if (u < cf.tsize + 1) return SIZE_MAX;
  uint64_t w = *trailer_word(p, u);
  size_t size = (size_t)(w & FIELD48);
  if (size > u - cf.tsize - 1 || w != size_word(p, size)) return SIZE_MAX;
  return size;
}

static bool is_large(const void *p) {
  segment_t *s = segment_of(p);
  return s->kind == SEG_LARGE;
}
static uint8_t *lead_canary(void *p) {
  segment_t *s = segment_of(p);
  if (s->large_offset < OS_PAGE) return NULL;
  return (uint8_t *)p - LEAD_CANARY;
}

/* ---- allocation sites (debug) -------------------------------------------- */

static uintptr_t self_lo, self_hi; /* allot's own code: frames to skip */
static _Atomic int self_known;
static __thread int in_unwind;
/* Set once the C library is up (constructors run): in a static program the
 * unwinder cannot run during the C library's own start-up mallocs. */
static _Atomic int unwind_ready;
static __attribute__((constructor)) void checked_ready(void) {
  atomic_store_explicit(&unwind_ready, 1, memory_order_release);
}

static int find_self(struct dl_phdr_info *info, size_t size, void *arg) {
  uintptr_t me = (uintptr_t)arg;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (me >= lo && me < lo + ph->p_memsz) {
      self_lo = lo;
      self_hi = lo + ph->p_memsz;
      return 1;
    }
  }
  (void)size;
  return 0;
}

typedef struct unwind_buf {
  uintptr_t ip[24];
  int n, outside; /* frames, and how many of them are not allot's */
} unwind_buf_t;

/* Each frame costs the unwinder a table search: stop as soon as enough of
 * the caller's frames are in. */
static _Unwind_Reason_Code unwind_step(struct _Unwind_Context *ctx, void *arg) {
  unwind_buf_t *b = arg;
  uintptr_t ip = _Unwind_GetIP(ctx);
  if (!ip || b->n == 24) return _URC_END_OF_STACK;
  b->ip[b->n++] = ip;
  if (!(ip >= self_lo && ip < self_hi) && ++b->outside == NFRAMES)
    return _URC_END_OF_STACK;
  return _URC_NO_REASON;
}

/* The caller's return addresses, allot's own frames left out. */
static NOINLINE void capture_frames(uintptr_t *out) {
  memset(out, 0, NFRAMES * sizeof *out);
  if (in_unwind || !atomic_load_explicit(&unwind_ready, memory_order_acquire))
    return; /* the unwinder allocated, or cannot run yet: no site */
  in_unwind = 1;
  if (!atomic_load_explicit(&self_known, memory_order_acquire)) {
    dl_iterate_phdr(find_self, (void *)(uintptr_t)&capture_frames);
    atomic_store_explicit(&self_known, 1, memory_order_release);
  }
  unwind_buf_t b;
  b.n = b.outside = 0;
  _Unwind_Backtrace(unwind_step, &b);
  int i = 0;
  while (i < b.n && b.ip[i] >= self_lo && b.ip[i] < self_hi)
    i++;
  if (i == b.n) i = b.n > 3 ? 3 : 0; /* allot linked into the program */
  for (int k = 0; k < NFRAMES && i + k < b.n; k++)
    out[k] = b.ip[i + k];
  in_unwind = 0;
}

/* ---- the layers below ------------------------------------------------------
 */

/* The thread's heap (frees go to its quarantine). */
static heap_t *my_heap(void) {
  heap_t *h = tls_heap;
  if (unlikely(h == &empty_heap)) h = heap_init_thread();
  return h;
}

/* The heap to allocate from: a first-class heap's (heapapi.c) or the
 * thread's. */
static heap_t *alloc_heap(void) {
  heap_t *h = checked_heap;
  return h ? h : my_heap();
}

/* A small class for need bytes whose blocks are all align-aligned (pages
 * are 64 KiB-aligned), or 0. */
static size_t small_class_for(size_t need, size_t align) {
  if (need > SMALL_MAX || align > SMALL_MAX) return 0;
  for (size_t cls = size_class(need ? need : 1); cls < NCLASSES; cls++)
    if ((class_size[cls] & (align - 1)) == 0) return cls;
  return 0;
}

/* A block of at least need bytes from the layers; *u its usable size. */
static void *raw_alloc(heap_t *h, size_t need, size_t align, bool zero,
                       size_t *u) {
  if (!h) return NULL;
  size_t cls = small_class_for(need, align);
  if (cls) {
    void *p = page_alloc_block(h, cls);
    if (p && cf.random) p = secure_pick(p);
    *u = class_size[cls];
    return p;
  }
  void *p;
  if (need <= MEDIUM_MAX && align <= MEDIUM_MAX / 4) {
    p = medium_malloc(h, need, align);
    if (p) *u = chunk_usable_size(p);
  } else {
    p = large_malloc(need, align, zero);
    if (p) *u = segment_of(p)->large_size;
  }
  return p;
}

/* Turn a raw block into a checked one holding size bytes. */
/* Secure mode keeps every free small block zero past its first 16 bytes
 * (carved zeroed, scrubbed on free, checked on leaving the quarantine), so
 * anything else there was written after free, or by an underflow. */
static bool zero_from(const void *p, size_t from, size_t u) {
  const uint64_t *w = p;
  uint64_t bad = 0;
  for (size_t i = from / 8; i < u / 8; i++)
    bad |= w[i];
  return bad == 0;
}

static void *prepare(void *p, size_t size, size_t u, bool zero) {
  uint8_t *b = p;
  bool large = is_large(p);
  if (cf.zero && segment_of(p)->kind == SEG_SMALL) {
    if (!zero_from(p, 16, u))
      fault("malloc", "write after free (a free block was changed)", p);
    memset(b, 0, 16);
  } else if (zero || cf.zero) {
    if (!large) memset(b, 0, size); /* large: zeroed by large_malloc */
  } else if (cf.fill) {
    memset(b, FILL_NEW, size);
  }
  if (cf.trailer) {
    uint64_t c = canary_of(p);
    canary_fill(b + size, canary_len(size, u), c);
    if (cf.frames) capture_frames(trailer_frames(p, u));
    *trailer_word(p, u) = size_word(p, size);
    if (large) {
      uint8_t *lc = lead_canary(p);
      if (lc) canary_fill(lc, LEAD_CANARY, c);
    }
  }
  VG(VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, zero || cf.zero));
  VG(VALGRIND_MAKE_MEM_NOACCESS(b + size, u - size));
  poison_slack(p, size, u);
  return p;
}

static bool quarantine_flush(void);
static void mark_preparing(void *p);

/* A block for size bytes, with room for `room` more (realloc's growth). */
static void *alloc_in(heap_t *h, size_t size, size_t room, size_t align,
                      bool zero) {
  size_t extra = (cf.trailer ? cf.tsize + 1 : 0) + room;
  if (size > PTRDIFF_MAX - extra - SEG_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  if (align < 16) align = 16;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  size_t u = 0;
  void *p = raw_alloc(h, size + extra, align, zero || cf.zero, &u);
  if (!p && cf.quarantine && quarantine_flush())
    p = raw_alloc(h, size + extra, align, zero || cf.zero, &u);
  if (p) {
    mark_preparing(p);
    p = prepare(p, size, u, zero);
    mark_preparing(NULL);
  }
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (!p) {
    errno = ENOMEM;
    return NULL;
  }
  if (g.stats) stats_alloc(p, size);
  return p;
}

void *checked_alloc(size_t size, size_t align, bool zero) {
  return alloc_in(alloc_heap(), size, 0, align, zero);
}

void *checked_malloc(heap_t *h, size_t cls, size_t size) {
  (void)cls;
  return alloc_in(h, size, 0, 16, false);
}

/* ---- quarantine ------------------------------------------------------------
 */

typedef struct quarantine {
  size_t head, count, bytes; /* small and medium blocks */
  void *block[QCAP];
  uint32_t usable[QCAP];
  size_t lhead, lcount; /* large blocks: inaccessible, they cost address
                           space only */
  void *large[LQCAP];
  bool orphan;     /* another thread's heap when the process forked: its blocks
                      may be half made, the heap check leaves them alone */
  void *preparing; /* the block this heap's thread is making (see orphan) */
} quarantine_t;

static __thread bool thread_exiting; /* its heap was given up */

/* The quarantine of the thread's heap (owner-only, so no lock). A thread
 * that only ever freed gets a heap for it; one whose heap was given up at
 * exit (later destructors free too) frees at once. */
static quarantine_t *my_quarantine(void) {
  if (thread_exiting && tls_heap == &empty_heap) return NULL;
  heap_t *h = my_heap();
  if (!h) return NULL;
  if (!h->checked) h->checked = os_map(sizeof(quarantine_t));
  return h->checked;
}

/* A fork can catch another thread half way through making a block (a
 * large block's debug fill takes a while); the child's heap check must not
 * take that for damage, so each thread says which block it is making. */
static void mark_preparing(void *p) {
  if (!cf.frames) return; /* only debug mode checks the heap at exit */
  quarantine_t *q = my_quarantine();
  if (q) q->preparing = p;
}

static bool large_quarantined(const void *p) {
  segment_t *s = segment_of(p);
  return p == (uint8_t *)s + s->large_offset &&
         atomic_load_explicit(&s->large_state, memory_order_acquire) ==
             LARGE_QUARANTINED;
}

static uint64_t fill_word(void) {
  return cf.zero ? 0 : 0x0101010101010101ull * FILL_FREED;
}

/* Fill a freed block and mark it free (word 1), as the layers would. In
 * secure mode the whole pages inside a big block are given back instead of
 * zeroed: they read as zero, and a quarantine of big blocks costs no
 * memory. */
static void scrub(void *p, size_t u) {
  uint8_t *b = p;
  if (cf.zero && u >= SCRUB_PURGE) {
    uint8_t *lo =
        (uint8_t *)(((uintptr_t)b + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1));
    uint8_t *hi = (uint8_t *)(((uintptr_t)b + u) & ~(uintptr_t)(OS_PAGE - 1));
    memset(b, 0, (size_t)(lo - b));
    memset(hi, 0, (size_t)(b + u - hi));
    os_purge(lo, (size_t)(hi - lo));
  } else {
    memset(b, cf.zero ? 0 : FILL_FREED, u);
  }
  ((block_t *)p)->mark = free_mark(p);
}

/* A block leaving the quarantine: still as scrub() left it? */
static bool scrub_intact(void *p, size_t u) {
  const uint64_t *w = p;
  uint64_t f = fill_word(), bad = (w[0] ^ f) | (w[1] ^ free_mark(p));
  for (size_t i = 2; i < u / 8; i++)
    bad |= w[i] ^ f;
  return bad == 0;
}

/* Secure mode, at the free of small block p: the block just below it in
 * its page, if free, must still be zero at its end, or p was written below
 * its start. Only the page's owner looks: no other thread allocates from
 * the page, so a free block stays free while we read it. A live block below
 * is checked at its own free (its trailer). */
static void check_below(void *p, const char *fn) {
  segment_t *s = segment_of(p);
  page_t *pg = page_of(s, p);
  size_t u = pg->bsize;
  if (atomic_load_explicit(&pg->heap, memory_order_relaxed) != tls_heap ||
      ((uintptr_t)p & (PAGE_SIZE - 1)) < u || u < 32)
    return;
  block_t *q = (block_t *)((uint8_t *)p - u);
  if (q->mark != free_mark(q)) return;
  size_t from = u - 16 > 64 ? u - 64 : 16;
  if (!zero_from(q, from, u))
    fault(fn, "heap buffer underflow (the free block below was overwritten)",
          p);
}

static void release(void *p, size_t u) {
  UNPOISON(p, u);
  if (!scrub_intact(p, u))
    fault("free", "write after free (block changed in quarantine)", p);
  ((block_t *)p)->mark = 0; /* live again for the layers' own checks */
  /* the layers' memory again: their links and headers go in there */
  VG(VALGRIND_MAKE_MEM_DEFINED(p, u));
  free_unchecked(p, "free");
}

static void release_large(void *p) {
  segment_t *s = segment_of(p);
  /* it was made inaccessible (or stayed accessible if that failed) */
  mprotect(p, s->large_size, PROT_READ | PROT_WRITE);
  atomic_store_explicit(&s->large_state, LARGE_LIVE, memory_order_release);
  VG(VALGRIND_MAKE_MEM_DEFINED(p, s->large_size));
  free_unchecked(p, "free");
}

static void quarantine_put(void *p, size_t u) {
  quarantine_t *q = my_quarantine();
  UNPOISON(p, u);
  scrub(p, u);
  if (!q) { /* no memory for a quarantine: free at once */
    ((block_t *)p)->mark = 0;
    free_unchecked(p, "free");
    return;
  }
  if (u > 16) POISON((uint8_t *)p + 16, u - 16);
  size_t tail = (q->head + q->count) % QCAP;
  q->block[tail] = p;
  q->usable[tail] = (uint32_t)u;
  q->count++;
  q->bytes += u;
  while (q->count > QCAP - 1 || (q->bytes > QBYTES && q->count > 1)) {
    void *old = q->block[q->head];
    size_t ou = q->usable[q->head];
    q->head = (q->head + 1) % QCAP;
    q->count--;
    q->bytes -= ou;
    release(old, ou);
  }
}

/* A large block waits with its pages given back and inaccessible; its state
 * says so, which is how a second free (from any thread) is recognised. */
static void large_quarantine_put(void *p, size_t u, const char *fn) {
  segment_t *s = segment_of(p);
  uint32_t live = LARGE_LIVE;
  if (!atomic_compare_exchange_strong(&s->large_state, &live,
                                      LARGE_QUARANTINED))
    fault(fn, "double free", p);
  quarantine_t *q = my_quarantine();
  if (!q) {
    atomic_store(&s->large_state, LARGE_LIVE);
    free_unchecked(p, fn);
    return;
  }
  os_purge(p, u); /* zero, and no longer resident */
  /* best effort: mappings can run out; memcheck reports the access itself */
  if (!g.valgrind) os_protect_none(p, u);
  if (q->lcount == LQCAP) {
    void *old = q->large[q->lhead];
    q->lhead = (q->lhead + 1) % LQCAP;
    q->lcount--;
    release_large(old);
  }
  q->large[(q->lhead + q->lcount) % LQCAP] = p;
  q->lcount++;
}

/* Give back everything heap h's quarantine holds (an allocation failed:
 * the memory may be needed; or its thread exits: nobody else may touch it,
 * and blocks left in it would keep its pages). Returns false if it held
 * nothing. h is the calling thread's heap. */
static bool quarantine_flush_heap(heap_t *h) {
  quarantine_t *q = h != &empty_heap ? h->checked : NULL;
  if (!q || (!q->count && !q->lcount)) return false;
  while (q->count) {
    void *old = q->block[q->head];
    size_t ou = q->usable[q->head];
    q->head = (q->head + 1) % QCAP;
    q->count--;
    q->bytes -= ou;
    release(old, ou);
  }
  while (q->lcount) {
    void *old = q->large[q->lhead];
    q->lhead = (q->lhead + 1) % LQCAP;
    q->lcount--;
    release_large(old);
  }
  return true;
}

static bool quarantine_flush(void) {
  return quarantine_flush_heap(tls_heap);
}

void checked_fork_child(void) {
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    if (h == tls_heap || h->state != HEAP_ACTIVE) continue;
    if (!h->checked) h->checked = os_map(sizeof(quarantine_t));
    if (h->checked) ((quarantine_t *)h->checked)->orphan = true;
  }
}

void checked_thread_exit(heap_t *h) {
  thread_exiting = true;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  if (cf.quarantine) quarantine_flush_heap(h);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
}

/* A block that is free to the program but waits in a quarantine (heap
 * walkers must not count it as in use). */
bool checked_quarantined(const void *p) {
  if (!cf.quarantine) return false;
  segment_t *s = segment_of(p);
  if (s->kind == SEG_LARGE) return large_quarantined(p);
  return ((const block_t *)p)->mark == free_mark(p);
}

/* ---- free ---------------------------------------------------------------- */

/* Validate p as a live checked block: its usable size, after the layers'
 * own checks (which fault on invalid pointers and freed small blocks) and
 * the quarantine's (medium and large blocks there are live to the layers). */
static size_t live_usable(void *p, const char *fn, bool freeing) {
  segment_t *s = segment_of(p);
  if (segmap_has(s) && s->kind == SEG_LARGE && large_quarantined(p))
    fault(fn, freeing ? "double free" : "pointer already freed", p);
  size_t u = block_usable_size(p, fn);
  if (u && cf.quarantine && s->kind == SEG_MEDIUM &&
      ((block_t *)p)->mark == free_mark(p))
    fault(fn, freeing ? "double free" : "pointer already freed", p);
  return u;
}

/* The requested size of live block p, after checking its trailer and
 * canaries (fault on damage). */
static size_t checked_size(void *p, size_t u, const char *fn) {
  if (!cf.trailer || u == 0) return u;
  UNPOISON(p, u);
  size_t size = requested(p, u);
  if (size == SIZE_MAX)
    fault(fn, "heap buffer overflow (block trailer overwritten)", p);
  uint64_t c = canary_of(p);
  if (!canary_ok((uint8_t *)p + size, canary_len(size, u), c))
    fault(fn, "heap buffer overflow (canary after the block overwritten)", p);
  if (is_large(p)) {
    uint8_t *lc = lead_canary(p);
    if (lc && !canary_ok(lc, LEAD_CANARY, c))
      fault(fn, "heap buffer underflow (canary before the block overwritten)",
            p);
  }
  poison_slack(p, size, u);
  return size;
}

void checked_free(void *p, const char *fn) {
  if (!p) return;
  segment_t *s = segment_of(p);
  if (!segmap_has(s) || s->kind == SEG_ZERO) {
    free_unchecked(p, fn); /* faults on anything but a zero-size block */
    return;
  }
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  size_t u = live_usable(p, fn, true);
  checked_size(p, u, fn);
  if (cf.zero && s->kind == SEG_SMALL) check_below(p, fn);
  if (g.stats) stats_free(p, u);
  VG(VALGRIND_FREELIKE_BLOCK(p, 0));
  if (cf.quarantine && s->kind == SEG_LARGE) {
    large_quarantine_put(p, u, fn);
  } else if (cf.quarantine) {
    quarantine_put(p, u);
  } else {
    UNPOISON(p, u);
    if (cf.fill && u > 16) memset((uint8_t *)p + 16, FILL_FREED, u - 16);
    free_unchecked(p, fn);
  }
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
}

size_t checked_usable(const void *cp, const char *fn) {
  void *p = (void *)cp;
  segment_t *s = segment_of(p);
  if (segmap_has(s) && s->kind == SEG_ZERO) return block_usable_size(p, fn);
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  size_t size = checked_size(p, live_usable(p, fn, false), fn);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  return size;
}

void checked_free_sized(void *p, size_t align, size_t size, const char *fn) {
  size_t have = checked_usable(p, fn);
  if (cf.trailer) {
    if (size != have)
      fault(fn,
            size > have ? "size larger than the block"
                        : "size does not match the block",
            p);
  } else if (size > have) {
    fault(fn, "size larger than the block", p);
  }
  (void)align; /* the caller checked p against it */
  checked_free(p, fn);
}

/* Resize live block p (usable u, holding old bytes) to size in place: its
 * new bytes are made as malloc makes them, its canary and size word move. */
static void resize_in_place(void *p, size_t old, size_t size, size_t u) {
  uint8_t *b = p;
  UNPOISON(p, u);
  if (size > old)
    memset(b + old, cf.zero ? 0 : cf.fill ? FILL_NEW : 0, size - old);
  else
    memset(b + size, 0, old - size);
  canary_fill(b + size, canary_len(size, u), canary_of(p));
  *trailer_word(p, u) = size_word(p, size);
  VG(VALGRIND_RESIZEINPLACE_BLOCK(p, old, size, 0));
  VG(VALGRIND_MAKE_MEM_NOACCESS(b + size, u - size));
  poison_slack(p, size, u);
}

/* realloc keeps the block where the layers would (the size still fits and
 * uses more than half of it, or a medium chunk grows into its free
 * neighbour) and otherwise moves it, leaving room to grow by a quarter so
 * that a block grown a little at a time is not copied every time. */
void *checked_realloc(void *p, size_t size) {
  if (size == 0) { /* glibc: free and return NULL */
    checked_free(p, "realloc");
    return NULL;
  }
  size_t old = checked_usable(p, "realloc");
  segment_t *s = segment_of(p);
  if (cf.trailer && s->kind != SEG_ZERO && size <= PTRDIFF_MAX / 2) {
    VG(VALGRIND_DISABLE_ERROR_REPORTING);
    size_t u = block_usable_size(p, "realloc");
    size_t extra = cf.tsize + 1;
    bool fits = size + extra <= u && (size > old / 2 || u <= 64);
    if (!fits && s->kind == SEG_MEDIUM && size > old &&
        size + extra <= MEDIUM_MAX && medium_resize(s, p, size + extra)) {
      size_t nu = chunk_usable_size(p);
      /* the chunk grew: its trailer goes to the new end */
      memmove(trailer_frames(p, nu), trailer_frames(p, u), cf.tsize - 8);
      u = nu;
      fits = true;
    }
    if (fits) {
      if (g.stats) stats_free(p, u);
      resize_in_place(p, old, size, u);
      if (g.stats) stats_alloc(p, size);
    }
    VG(VALGRIND_ENABLE_ERROR_REPORTING);
    if (fits) return p;
  }
  size_t room = size > old && cf.trailer ? size / 4 : 0;
  void *q = alloc_in(alloc_heap(), size, room, 16, false);
  if (!q) return NULL;
  size_t n = old < size ? old : size;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  UNPOISON(p, n);
  memcpy(q, p, n);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  checked_free(p, "realloc");
  return q;
}

/* ---- heap check and leak report ---------------------------------------------
 * At exit (debug mode) every block is examined: live ones' trailers and
 * canaries, quarantined ones' fills, the free lists of small pages, the
 * chunk heaps' invariants. Heaps of other threads still running are left
 * alone: their blocks may be changing under us. */

typedef struct site {
  uintptr_t frames[NFRAMES];
  size_t count, bytes, min, max;
} site_t;
#define NSITES 1024

typedef struct walk {
  const char *what; /* first problem found */
  const void *where;
  size_t leaks, leak_bytes, skipped_heaps;
  site_t *sites; /* NULL: no leak accounting */
  size_t nsites, dropped;
  void *half_made[64]; /* blocks orphaned threads were making at fork */
  size_t nhalf;
} walk_t;

static bool examine_heap(const heap_t *h) {
  const quarantine_t *q = h->checked;
  return h == tls_heap || (h->state != HEAP_ACTIVE && !(q && q->orphan));
}

static void problem(walk_t *w, const char *what, const void *where) {
  if (!w->what) {
    w->what = what;
    w->where = where;
  }
}

static void leak(walk_t *w, void *p, size_t u) {
  for (size_t i = 0; i < w->nhalf; i++)
    if (w->half_made[i] == p) return;
  UNPOISON(p, u);
  size_t size = cf.trailer ? requested(p, u) : u;
  if (size != SIZE_MAX) poison_slack(p, size, u);
  if (size == SIZE_MAX) {
    problem(w, "heap buffer overflow (block trailer overwritten)", p);
    return;
  }
  if (cf.trailer) {
    uint64_t c = canary_of(p);
    if (!canary_ok((uint8_t *)p + size, canary_len(size, u), c))
      problem(w, "heap buffer overflow (canary after the block overwritten)",
              p);
  }
  w->leaks++;
  w->leak_bytes += size;
  if (!w->sites) return;
  uintptr_t frames[NFRAMES] = {0};
  if (cf.frames) memcpy(frames, trailer_frames(p, u), sizeof frames);
  uint64_t hash = 0;
  for (int i = 0; i < NFRAMES; i++)
    hash = mix(hash ^ frames[i]);
  for (size_t k = 0; k < NSITES; k++) {
    site_t *s = &w->sites[(hash + k) % NSITES];
    if (s->count && memcmp(s->frames, frames, sizeof frames) != 0) continue;
    if (!s->count) {
      memcpy(s->frames, frames, sizeof frames);
      s->min = size;
      w->nsites++;
    }
    s->count++;
    s->bytes += size;
    if (size < s->min) s->min = size;
    if (size > s->max) s->max = size;
    return;
  }
  w->dropped++;
}

static void walk_small_segment(walk_t *w, segment_t *s) {
  for (size_t i = 1; i < PAGES_PER_SEG; i++) {
    page_t *pg = &s->pages[i];
    if (!pg->bsize) continue;
    uint8_t *start = page_start(s, pg);
    /* the owner's free list: every link inside the page, on a block */
    size_t n = 0;
    for (block_t *b = pg->free; b; b = link_decode(b->next, b)) {
      if ((uint8_t *)b < start || (uint8_t *)b >= start + PAGE_SIZE ||
          page_block_index_fault(pg, b) == SIZE_MAX ||
          b->mark != free_mark(b)) {
        problem(w, "corrupted free list", b);
        break;
      }
      if (++n > pg->capacity) {
        problem(w, "free list loops", b);
        break;
      }
    }
    for (size_t k = 0; k < pg->capacity; k++) {
      block_t *b = (block_t *)(start + k * pg->bsize);
      if (b->mark == free_mark(b)) continue; /* free or quarantined */
      leak(w, b, pg->bsize);
    }
  }
}

static int walk_chunk(void *payload, size_t size, bool used, void *arg) {
  walk_t *w = arg;
  if (used &&
      !(cf.quarantine && ((block_t *)payload)->mark == free_mark(payload)))
    leak(w, payload, size);
  return 0;
}

static void chunk_problem(const char *what, const void *addr);
static walk_t *chunk_walk_ctx;

static void walk_medium(walk_t *w, heap_t *h) {
  void *regions[64];
  size_t sizes[64], n = 0;
  for (segment_t *s = h->medium_segs; s; s = s->hnext) {
    if (n < 64) {
      regions[n] = s->region;
      sizes[n] = s->region_size;
    }
    n++;
    if (chunk_walk_region(s->region, s->region_size, walk_chunk, w) < 0)
      problem(w, "chunk sizes lead outside their region", s->region);
  }
  if (n <= 64) {
    chunk_walk_ctx = w;
    chunk_check(&h->chunks, regions, sizes, n, chunk_problem);
  }
}

static void chunk_problem(const char *what, const void *addr) {
  problem(chunk_walk_ctx, what, addr);
}

static void walk_quarantine(walk_t *w, heap_t *h) {
  quarantine_t *q = h->checked;
  if (!q) return;
  for (size_t i = 0; i < q->count; i++) {
    size_t k = (q->head + i) % QCAP;
    UNPOISON(q->block[k], q->usable[k]);
    if (!scrub_intact(q->block[k], q->usable[k]))
      problem(w, "write after free (block changed in quarantine)", q->block[k]);
    if (q->usable[k] > 16)
      POISON((uint8_t *)q->block[k] + 16, q->usable[k] - 16);
  }
}

static void walk_large(segment_t *s, void *arg) {
  walk_t *w = arg;
  if (s->kind != SEG_LARGE ||
      atomic_load_explicit(&s->large_state, memory_order_relaxed) != LARGE_LIVE)
    return;
  leak(w, (uint8_t *)s + s->large_offset, s->large_size);
}

static void walk_heaps(walk_t *w) {
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    quarantine_t *q = h->checked;
    if (q && q->orphan && q->preparing && w->nhalf < 64)
      w->half_made[w->nhalf++] = q->preparing;
  }
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    if (!examine_heap(h)) {
      w->skipped_heaps++;
      continue;
    }
    os_lock(&h->seg_lock);
    for (segment_t *s = h->segs; s; s = s->hnext)
      walk_small_segment(w, s);
    os_unlock(&h->seg_lock);
    os_lock(&h->medium_lock);
    walk_medium(w, h);
    os_unlock(&h->medium_lock);
    walk_quarantine(w, h);
  }
  segments_visit(walk_large, w);
}

/* ---- the report ---------------------------------------------------------- */

typedef struct line {
  char buf[512];
  size_t n;
} line_t;

static void put(line_t *l, const char *s) {
  while (*s && l->n < sizeof l->buf - 2)
    l->buf[l->n++] = *s++;
}
static void put_dec(line_t *l, size_t v) {
  char t[24];
  os_fmt_dec(t, v);
  put(l, t);
}
static void put_hex(line_t *l, uintptr_t v) {
  char t[24];
  os_fmt_hex(t, v);
  put(l, t);
}
static void flush(line_t *l) {
  l->buf[l->n++] = '\n';
  l->buf[l->n] = 0;
  os_write_err(l->buf);
  l->n = 0;
}

static void report_frame(int k, uintptr_t ip) {
  line_t l = {.n = 0};
  put(&l, "allot:     #");
  put_dec(&l, (size_t)k);
  put(&l, " ");
  put_hex(&l, ip);
  Dl_info info;
  if (dladdr((void *)(ip - 1), &info) && info.dli_fname) {
    if (info.dli_sname) {
      put(&l, " ");
      put(&l, info.dli_sname);
      put(&l, "+");
      put_hex(&l, ip - (uintptr_t)info.dli_saddr);
    }
    const char *base = info.dli_fname;
    for (const char *c = base; *c; c++)
      if (*c == '/') base = c + 1;
    put(&l, " (");
    put(&l, base);
    put(&l, "+");
    put_hex(&l, ip - (uintptr_t)info.dli_fbase);
    put(&l, ")");
  }
  flush(&l);
}

#define REPORT_SITES 20

static void report_leaks(walk_t *w) {
  line_t l = {.n = 0};
  if (!w->leaks) return;
  put(&l, "allot: leak report: ");
  put_dec(&l, w->leaks);
  put(&l, w->leaks == 1 ? " block, " : " blocks, ");
  put_dec(&l, w->leak_bytes);
  put(&l, " bytes still allocated at exit, from ");
  put_dec(&l, w->nsites);
  put(&l, w->nsites == 1 ? " site" : " sites");
  if (w->skipped_heaps) {
    put(&l, " (");
    put_dec(&l, w->skipped_heaps);
    put(&l, " heaps of running threads not examined)");
  }
  flush(&l);
  for (int shown = 0; shown < REPORT_SITES; shown++) {
    site_t *best = NULL;
    for (size_t k = 0; k < NSITES; k++) {
      site_t *s = &w->sites[k];
      if (s->count && (!best || s->bytes > best->bytes)) best = s;
    }
    if (!best) break;
    put(&l, "allot:   ");
    put_dec(&l, best->bytes);
    put(&l, " bytes in ");
    put_dec(&l, best->count);
    put(&l, best->count == 1 ? " block of " : " blocks of ");
    put_dec(&l, best->min);
    if (best->max != best->min) {
      put(&l, " to ");
      put_dec(&l, best->max);
    }
    put(&l, " bytes");
    put(&l, cf.frames ? ", allocated at:" : "");
    flush(&l);
    for (int k = 0; k < NFRAMES && best->frames[k]; k++)
      report_frame(k, best->frames[k]);
    best->count = 0;
  }
  if (w->nsites > REPORT_SITES || w->dropped) {
    put(&l, "allot:   (more sites not shown)");
    flush(&l);
  }
}

/* Debug mode at exit: the whole heap checked (allot_check, which includes
 * checked_verify below), then the leak report. */
static __attribute__((destructor)) void checked_at_exit(void) {
  if (!g.debug || !g.slow_mode) return;
  char line[256];
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  int bad = allot_check_report(line, sizeof line);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (bad) { /* "allot: check: WHAT at ADDR", said as every fault is */
    const char *what = line;
    for (const char *c = line; *c; c++)
      if (c[0] == ':' && c[1] == ' ') what = c + 2; /* past the last ": " */
    os_write_err("allot: exit(): ");
    os_write_err(what);
    os_write_err("\n");
    abort();
  }
  walk_t w = {0};
  w.sites = os_map(NSITES * sizeof(site_t));
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  walk_heaps(&w);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (w.what) fault("exit", w.what, w.where);
  if (w.sites) {
    report_leaks(&w);
    os_unmap(w.sites, NSITES * sizeof(site_t));
  }
}

/* For the heap check on demand (allot_check): the first problem checked
 * mode can see (canaries, trailers, writes after free, free lists, chunk
 * heaps), or NULL. */
const char *checked_verify(const void **where) {
  if (!g.slow_mode || !cf.trailer) return NULL;
  walk_t w = {0};
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  walk_heaps(&w);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (where) *where = w.where;
  return w.what;
}
