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
 *   | caller's bytes | canary (keyed)              | frames | size |
 *
 * The size word holds the requested size and a keyed tag of it and of the
 * address; the canary bytes are a keyed function of the address. free checks
 * both, so a 1-byte overflow is caught; and as every block has room for 64
 * checked bytes past its end (the canary, then the trailer when the room
 * left for the canary is shorter), so is any write up to 64 bytes past the
 * end, however far it skips. free also checks the block just below (its
 * trailer if live, its fill if free), which catches underflows. Debug mode
 * adds the allocation's return addresses (leak report). Freed blocks wait in
 * a quarantine, bounded per heap, filled with a keyed word (secure) or 0xDD
 * (debug), the free mark in their second word so a second free is caught;
 * when a block leaves the quarantine the fill is checked again, which catches
 * writes after free. Large blocks in quarantine are made inaccessible
 * instead. The secure fill is not zero so that writes of zeros are seen
 * too; blocks are zeroed when they leave the quarantine.
 *
 * The C++ operators (new.cpp) come here with their family, kept in the
 * size word's tag: a block freed the wrong way (new[] / delete or free,
 * new / delete[], malloc / delete) aborts naming the mismatch.
 *
 * Debug mode (ALLOT_DEBUG=1) also fills new blocks with 0xA5, checks the
 * heap at exit and reports the blocks still allocated with their sites,
 * told apart into definitely lost and still reachable by a scan of the
 * process's memory for pointers to them (reach()). */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <sched.h>
#include <setjmp.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
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

/* Who allocated a block, so that a block is given back the way it was taken
 * (free for malloc, delete for new, delete[] for new[]). */
enum { FAM_MALLOC, FAM_NEW, FAM_NEWARR, NFAMILIES };

#define FILL_NEW 0xA5
#define FILL_FREED 0xDD
#define NFRAMES 5 /* return addresses kept per block (debug) */
/* A stray write up to this far past the end lands in bytes free checks:
 * every block is asked of the layers with room for them (overhead), so no
 * size class's slack decides whether such a write is caught. They are the
 * canary (up to CANARY_REACH bytes, as far as the room goes) and then the
 * trailer, which is checked too. */
#define CANARY_REACH 64
#define LEAD_CANARY 64 /* before a large block, in its header page */
#define FIELD48 (((uint64_t)1 << 48) - 1)
#define QCAP 256                 /* quarantine: blocks per heap */
#define QBYTES ((size_t)4 << 20) /* quarantine: bytes per heap */
#define LQCAP 16                 /* quarantine: large blocks per heap */
/* How long a check waits for another thread to finish with a block that
 * looks damaged meanwhile (leak, check_below) */
#define BUSY_WAIT_MS 5000
/* secure mode: freed blocks from this size up are zeroed by giving their
 * pages back (no memory held in the quarantine); smaller ones by memset,
 * which costs less than faulting the pages in again */
#define SCRUB_PURGE ((size_t)256 << 10)

/* What checked mode does, fixed by checked_configure. */
extern INTERNAL int checked_families; /* new.cpp reads it */
INTERNAL void *checked_new(size_t size, size_t align, int fam);
INTERNAL size_t checked_quarantine_bytes(const heap_t *h, size_t *blocks);
INTERNAL void checked_delete(void *p, int fam, size_t size, size_t align);

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

void checked_configure(bool stats) {
  int valgrind = 0, asan = 0;
#if ALLOT_VALGRIND
  valgrind = RUNNING_ON_VALGRIND ? 1 : 0;
#endif
#if ALLOT_ASAN
  asan = 1;
#endif
  g.valgrind = valgrind;
  bool meta = g.debug || g.secure || valgrind || asan;
  /* One store of the final value: slow_mode is 1 until start-up is done
   * (heap.c), and other threads' first calls read it without the start-up
   * lock. Lowered to statistics mode's value first and raised again here,
   * it read 0 for a moment in debug and secure mode, and a thread's first
   * block could then be made without the checked path's trailer, which its
   * free would find damaged. */
  __atomic_store_n(&g.slow_mode, stats || meta, __ATOMIC_RELAXED);
  cf.trailer = meta;
  cf.frames = g.debug;
  cf.quarantine = meta;
  cf.random = g.secure;
  cf.zero = g.secure;
  cf.fill = g.debug && !g.secure;
  cf.tsize = 8 + (cf.frames ? NFRAMES * 8 : 0);
  cf.ckey = (g.key * 0x9E3779B97F4A7C15ull) ^ (g.mark_key >> 3) ^ 0x5bd1e995u;
  checked_families = cf.trailer;
}

/* ---- block metadata ------------------------------------------------------ */

static ALWAYS_INLINE uint64_t mix(uint64_t x) {
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 32);
}
/* The size word: the size, and a keyed tag of it, of the address and of
 * the allocating family (malloc, new or new[]) in the top 16 bits. The top
 * byte is the block's last byte, the one an underflow of the block above
 * hits first: like canary bytes it is kept in 0x80..0xfe so that text, NULs
 * and small integers always change it. The family costs no space: a block's
 * word matches the tag of exactly one family (or, overwritten, of none).
 * In debug mode the tag covers the allocation site's frames too (fh, their
 * hash), so a stray write into them is seen like one into the size. */
static uint64_t size_word(const void *p, size_t size, int fam, uint64_t fh) {
  uint64_t tag = mix((uintptr_t)p ^ cf.ckey ^ ((uint64_t)size << 17) ^
                     (uint64_t)fam * 0xA24BAED4963EE407ull ^ fh) >>
                 48;
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
/* The canary bytes of an aligned word, so the middle of a run is filled and
 * checked a word at a time (byte i of it is canary_byte at address 8k+i). */
static uint64_t canary_word(uint64_t c) {
  const uint64_t lo7 = 0x7f7f7f7f7f7f7f7full, hi = 0x8080808080808080ull;
  uint64_t w = c | hi, t = ~w; /* t's bytes are 0 where w's are 0xff */
  uint64_t zero = ~(((t & lo7) + lo7) | t) & hi;
  return w ^ (zero >> 7); /* 0xff -> 0xfe */
}
static void canary_fill(uint8_t *at, size_t n, uint64_t c) {
  uint8_t *end = at + n;
  for (; at < end && ((uintptr_t)at & 7); at++)
    *at = canary_byte(at, c);
  uint64_t w = canary_word(c);
  for (; at + 8 <= end; at += 8)
    *(uint64_t *)at = w;
  for (; at < end; at++)
    *at = canary_byte(at, c);
}
/* Reads of allot's own bytes in a block's slack, which ASan sees poisoned
 * (and another thread may be poisoning or unpoisoning meanwhile). */
#if ALLOT_ASAN
#define NO_ASAN __attribute__((no_sanitize("address")))
#else
#define NO_ASAN
#endif
static NO_ASAN bool canary_ok(const uint8_t *at, size_t n, uint64_t c) {
  const uint8_t *end = at + n;
  uint64_t bad = 0;
  for (; at < end && ((uintptr_t)at & 7); at++)
    bad |= *at ^ canary_byte(at, c);
  uint64_t w = canary_word(c);
  for (; at + 8 <= end; at += 8)
    bad |= *(const uint64_t *)at ^ w;
  for (; at < end; at++)
    bad |= *at ^ canary_byte(at, c);
  return bad == 0;
}
/* What a checked block needs beyond its caller's bytes: a trailer and at
 * least one canary byte, and CANARY_REACH checked bytes in all. */
static size_t overhead(void) {
  return cf.tsize + 1 > CANARY_REACH ? cf.tsize + 1 : CANARY_REACH;
}
/* The canary after `size` bytes of a block of usable size u: all the room
 * up to the trailer, or CANARY_REACH bytes (past them, filling and checking
 * a class's slack would cost time and catch little more). */
static size_t canary_len(size_t size, size_t u) {
  size_t room = u - cf.tsize - size;
  return room < CANARY_REACH ? room : CANARY_REACH;
}
static uint64_t *trailer_word(void *p, size_t u) {
  return (uint64_t *)((uint8_t *)p + u - 8);
}
static uintptr_t *trailer_frames(void *p, size_t u) {
  return (uintptr_t *)((uint8_t *)p + u - cf.tsize);
}
static NO_ASAN uint64_t frames_hash(const uintptr_t *fr) {
  uint64_t h = 0;
  for (int i = 0; i < NFRAMES; i++)
    h = mix(h ^ fr[i]);
  return h;
}
/* the frames' hash of block p as its size word covers it */
static uint64_t frames_key(void *p, size_t u) {
  return cf.frames ? frames_hash(trailer_frames(p, u)) : 0;
}

/* Poison the bytes of a live block past its requested size (the layers use
 * the first 16 bytes of every block, so those stay addressable). */
static void poison_slack(void *p, size_t size, size_t u) {
  size_t from = size < 16 ? 16 : size;
  if (u > from) POISON((uint8_t *)p + from, u - from);
  (void)p;
}

/* Requested size of live block p (usable u), or SIZE_MAX if its trailer was
 * overwritten; *fam (if not NULL) its family, the expected one (want)
 * tried first. */
static NO_ASAN size_t requested(void *p, size_t u, int want, int *fam) {
  if (u < overhead()) return SIZE_MAX;
  uint64_t w = *trailer_word(p, u);
  size_t size = (size_t)(w & FIELD48);
  if (size > u - overhead()) return SIZE_MAX;
  uint64_t fh = frames_key(p, u);
  for (int i = 0; i < NFAMILIES; i++) {
    int f = (want + i) % NFAMILIES;
    if (w == size_word(p, size, f, fh)) {
      if (fam) *fam = f;
      return size;
    }
  }
  return SIZE_MAX;
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
/* ALLOT_PROF_CHECK=1 in debug mode: every site taken by both unwinders,
 * the walks and their differences counted, and said at exit */
static bool sites_check;
static _Atomic size_t sites_walks, sites_diff;
static __attribute__((constructor)) void checked_ready(void) {
  /* debug mode records sites: find the unwinder now, outside malloc */
  if (options_env_on(ALLOT_OPTION_DEBUG))
    sites_check = prof_unwind_start(NFRAMES) && prof_unwind_checked();
  atomic_store_explicit(&unwind_ready, 1, memory_order_release);
}

typedef struct unwind_buf {
  const os_unwind_t *u;
  uintptr_t ip[24];
  int n, outside; /* frames, and how many of them are not allot's */
} unwind_buf_t;

/* Each frame costs the unwinder a table search: stop as soon as enough of
 * the caller's frames are in. */
static _Unwind_Reason_Code unwind_step(struct _Unwind_Context *ctx, void *arg) {
  unwind_buf_t *b = arg;
  uintptr_t ip = b->u->get_ip(ctx);
  if (!ip || b->n == 24) return _URC_END_OF_STACK;
  b->ip[b->n++] = ip;
  if (!(ip >= self_lo && ip < self_hi) && ++b->outside == NFRAMES)
    return _URC_END_OF_STACK;
  return _URC_NO_REASON;
}

/* The caller's return addresses, allot's own frames left out. */
static void libgcc_frames(uintptr_t *out);
static NOINLINE void capture_frames(uintptr_t *out) {
  memset(out, 0, NFRAMES * sizeof *out);
  if (in_unwind || !atomic_load_explicit(&unwind_ready, memory_order_acquire))
    return; /* the unwinder allocated, or cannot run yet: no site */
  in_unwind = 1;
  if (!atomic_load_explicit(&self_known, memory_order_acquire)) {
    uintptr_t lo, hi;
    bool shared;
    if (os_code_range((const void *)(uintptr_t)&capture_frames, &lo, &hi,
                      &shared)) {
      self_lo = lo;
      self_hi = hi;
    }
    atomic_store_explicit(&self_known, 1, memory_order_release);
  }
  /* the profiler's unwinder first (prof.c): libgcc's interprets each
   * frame's call frame information at every walk */
  int got = prof_unwind(out, NFRAMES);
  if (got < 0) {
    libgcc_frames(out);
  } else if (unlikely(sites_check)) {
    uintptr_t other[NFRAMES] = {0};
    libgcc_frames(other);
    atomic_fetch_add_explicit(&sites_walks, 1, memory_order_relaxed);
    if (memcmp(other, out, sizeof other))
      atomic_fetch_add_explicit(&sites_diff, 1, memory_order_relaxed);
  }
  in_unwind = 0;
}

/* NFRAMES return addresses outside allot by libgcc's unwinder. */
static void libgcc_frames(uintptr_t *out) {
  unwind_buf_t b;
  b.n = b.outside = 0;
  b.u = os_unwind();
  if (b.u) b.u->backtrace(unwind_step, &b);
  int i = 0;
  while (i < b.n && b.ip[i] >= self_lo && b.ip[i] < self_hi)
    i++;
  if (i == b.n) i = b.n > 3 ? 3 : 0; /* allot linked into the program */
  for (int k = 0; k < NFRAMES && i + k < b.n; k++)
    out[k] = b.ip[i + k];
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
static NO_ASAN bool zero_from(const void *p, size_t from, size_t u) {
  const uint64_t *w = p;
  uint64_t bad = 0;
  for (size_t i = from / 8; i < u / 8; i++)
    bad |= w[i];
  return bad == 0;
}

static void *prepare(void *p, size_t size, size_t u, bool zero, int fam) {
  uint8_t *b = p;
  bool large = is_large(p);
  if (cf.zero && segment_of(p)->kind == SEG_SMALL) {
    /* a link overwritten within its page would hand out a non-block */
    if (!page_is_block(page_of(segment_of(p), p), p))
      fault("malloc", "corrupted free list", p);
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
    *trailer_word(p, u) = size_word(p, size, fam, frames_key(p, u));
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
static void *in_flight(void *p);
/* in_flight's "a block not known yet": the layers are handing one out */
#define UNKNOWN_BLOCK ((void *)1)

#ifdef ALLOT_TEST_HOOKS
/* Test builds only (hostile_largewalk_pause): every n-th large block the
 * layers hand out, its thread stops for a while before it says it has the
 * block in hand (in_flight), as a thread descheduled there would: the
 * block is live, not made yet, and no thread names it. */
static void test_sleep(_Atomic long *usec_var) {
  long usec = atomic_load_explicit(usec_var, memory_order_relaxed);
  struct timespec ts = {usec / 1000000, usec % 1000000 * 1000};
  while (usec > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}
static _Atomic long pause_every, pause_usec, pause_made;
__attribute__((visibility("default"))) void allot_test_pause_made(long every,
                                                                  long usec) {
  atomic_store(&pause_usec, usec);
  atomic_store(&pause_every, every);
}
static void test_pause_made(void *p) {
  long every = atomic_load_explicit(&pause_every, memory_order_relaxed);
  if (every <= 0 || !is_large(p) || atomic_fetch_add(&pause_made, 1) % every)
    return;
  test_sleep(&pause_usec);
}
/* hostile_adoptwalk: the heap check of a heap no thread owns stops for a
 * while at the first free list it reads, between its head and the rest, as
 * a checker descheduled there would. */
static _Atomic long pause_walk_usec;
__attribute__((visibility("default"))) void allot_test_pause_walk(long usec) {
  atomic_store(&pause_walk_usec, usec);
}
static void test_pause_walk(void) {
  test_sleep(&pause_walk_usec);
}
#else
#define test_pause_made(p) ((void)(p))
#define test_pause_walk() ((void)0)
#endif

/* A block for size bytes, with room for `room` more (realloc's growth). */
static void *alloc_in(heap_t *h, size_t size, size_t room, size_t align,
                      bool zero, int fam) {
  size_t extra = (cf.trailer ? overhead() : 0) + room;
  if (size > PTRDIFF_MAX - extra - SEG_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  if (align < 16) align = 16;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  size_t u = 0;
  void *was = in_flight(UNKNOWN_BLOCK);
  void *p = raw_alloc(h, size + extra, align, zero || cf.zero, &u);
  if (!p && cf.quarantine && quarantine_flush())
    p = raw_alloc(h, size + extra, align, zero || cf.zero, &u);
  if (p) {
    test_pause_made(p);
    in_flight(p);
    p = prepare(p, size, u, zero, fam);
  }
  in_flight(was);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (!p) {
    errno = ENOMEM;
    return NULL;
  }
  if (g.stats) stats_alloc(p, size);
  return p;
}

void *checked_alloc(size_t size, size_t align, bool zero) {
  return alloc_in(alloc_heap(), size, 0, align, zero, FAM_MALLOC);
}

void *checked_malloc(heap_t *h, size_t cls, size_t size) {
  (void)cls;
  return alloc_in(h, size, 0, 16, false, FAM_MALLOC);
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
  bool orphan; /* another thread's heap when the process forked: its blocks
                  may be half made, the heap check leaves them alone */
  /* The block this heap's thread is making, freeing, resizing or moving
   * between the quarantine and the layers (UNKNOWN_BLOCK while the layers
   * hand one out): meanwhile it may look live with its trailer half written
   * or already scrubbed (see in_flight). ops counts the changes of busy. */
  void *_Atomic busy;
  _Atomic uint64_t ops;
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

/* A thread can be half way through making a block, freeing one (scrubbing
 * it, possibly in another heap's page), resizing one or handing one back to
 * the layers (its mark cleared, its fill still there) while another thread
 * checks the heap (allot_check, in any checked mode), or when another
 * thread forks: in the child it never finishes, and debug mode checks the
 * heap at exit. Such a block looks live and damaged, and the check would
 * report an overflow that never happened; so each thread says which block
 * it has in hand: the check looks again at a block that seemed damaged
 * while a thread was busy (leak()), and leaves those of the threads a fork
 * left behind alone. Returns the previous value (the calls nest: a free
 * releases older blocks from the quarantine). */
static void *in_flight(void *p) {
  if (!cf.trailer) return NULL;
  quarantine_t *q = tls_heap->checked; /* NULL in empty_heap */
  if (unlikely(!q) && !(q = my_quarantine())) return NULL;
  /* as a seqlock's writer: ops and busy change before the block does, and
   * only this thread writes them; and after the block's changes so far,
   * ops before busy, so that a check that sees busy change (read between
   * two reads of ops: leak) sees ops change too (aarch64 may otherwise
   * show the stores out of order) */
  void *was = atomic_load_explicit(&q->busy, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&q->ops,
                        atomic_load_explicit(&q->ops, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  atomic_store_explicit(&q->busy, p, memory_order_release);
  atomic_thread_fence(memory_order_release);
  return was;
}

static bool large_quarantined(const void *p) {
  segment_t *s = segment_of(p);
  return p == (uint8_t *)s + s->large_offset &&
         atomic_load_explicit(&s->large_state, memory_order_acquire) ==
             LARGE_QUARANTINED;
}

/* What a block in the quarantine is filled with, one word repeated. Debug
 * mode: 0xDD. Secure mode: a word keyed by the block's address, every byte
 * 0x80..0xff, so that a write after free is seen whatever it writes — a
 * NULL stored in a freed struct as well — while the old contents are gone
 * all the same; the block is zeroed when it leaves the quarantine. Blocks
 * of SCRUB_PURGE bytes and more have their pages given back instead: they
 * read as zero, and a write of zeros to them cannot be told. */
static uint64_t fill_word(const void *p, size_t u) {
  if (!cf.zero) return 0x0101010101010101ull * FILL_FREED;
  if (u >= SCRUB_PURGE) return 0;
  return mix((uintptr_t)p ^ cf.ckey ^ 0x51u) | 0x8080808080808080ull;
}

/* Fill a freed block and mark it free (word 1), as the layers would. */
static void scrub(void *p, size_t u) {
  uint8_t *b = p;
  uint64_t f = fill_word(p, u);
  if (cf.zero && u >= SCRUB_PURGE) {
    uint8_t *lo =
        (uint8_t *)(((uintptr_t)b + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1));
    uint8_t *hi = (uint8_t *)(((uintptr_t)b + u) & ~(uintptr_t)(OS_PAGE - 1));
    memset(b, 0, (size_t)(lo - b));
    memset(hi, 0, (size_t)(b + u - hi));
    os_purge(lo, (size_t)(hi - lo));
  } else if (!cf.zero) {
    memset(b, FILL_FREED, u);
  } else {
    uint64_t *w = p;
    for (size_t i = 0; i < u / 8; i++)
      w[i] = f;
    memset(b + u / 8 * 8, (int)(f & 0xff), u % 8);
  }
  ((block_t *)p)->mark = free_mark(p);
}

/* Words [from/8, u/8) of free block p all equal to f? */
static NO_ASAN bool filled_from(const void *p, size_t from, size_t u,
                                uint64_t f) {
  const uint64_t *w = p;
  uint64_t bad = 0;
  for (size_t i = from / 8; i < u / 8; i++)
    bad |= w[i] ^ f;
  return bad == 0;
}

/* A block leaving the quarantine: still as scrub() left it? */
static bool scrub_intact(void *p, size_t u) {
  const uint64_t *w = p;
  uint64_t f = fill_word(p, u);
  return ((w[0] ^ f) | (w[1] ^ free_mark(p))) == 0 && filled_from(p, 16, u, f);
}

static uint64_t ops_now(void);
static bool busy_with(const void *p);
static int holder_of(const void *p);
static size_t inspect(void *p, size_t u, const char **what);

static const char mark_overwritten[] =
    "write after free (a free block's free mark was overwritten)";

/* The block below p, q (usable u): as it should be at its end? A live one's
 * canary and trailer intact; a free one (secure mode) zero in its page's
 * free list or filled in a quarantine. Debug mode's free blocks hold
 * whatever was there before: not checked. */
static bool below_intact(block_t *q, size_t u, const char **what) {
  if (__atomic_load_n(&q->mark, __ATOMIC_ACQUIRE) == free_mark(q)) {
    size_t from = u - 16 > 64 ? u - 64 : 16;
    *what = "heap buffer underflow (the free block below was overwritten)";
    return !cf.zero || zero_from(q, from, u) ||
           filled_from(q, from, u, fill_word(q, u));
  }
  if (inspect(q, u, what) != SIZE_MAX) return true;
  /* a free block whose free mark a write after free replaced */
  if (filled_from(q, 16, u, fill_word(q, u)) ||
      (cf.zero && zero_from(q, 16, u)))
    *what = mark_overwritten;
  else
    *what = "heap buffer underflow (the block below's canary or trailer was "
            "overwritten: an underflow of this block or an overflow of that "
            "one)";
  return false;
}

/* At the free of small block p: the block just below it in its page must
 * be intact at its end, or p was written below its start, up to the
 * canaries' and trailer's length (or the block below past its end): so an
 * underflow is caught at p's free whatever is below, live or free. Only
 * the page's owner looks: no other thread allocates from the page, so a
 * block stays carved, and a free one free, while we read; but other
 * threads may be freeing the block below, resizing it or taking it out of
 * their quarantine meanwhile (unfill: mark cleared, then zeroed, then
 * marked again in the page), and say so (in_flight): look again before
 * blaming an underflow. The first look costs no more than the block's own
 * checks; only a block that looks damaged asks the other threads. */
static void check_below(void *p, const char *fn) {
  segment_t *s = segment_of(p);
  page_t *pg = page_of(s, p);
  size_t u = pg->bsize;
  if (atomic_load_explicit(&pg->heap, memory_order_relaxed) != tls_heap ||
      ((uintptr_t)p & (PAGE_SIZE - 1)) < u || u < 32)
    return;
  block_t *q = (block_t *)((uint8_t *)p - u);
  const char *what = NULL;
  if (below_intact(q, u, &what)) return;
  /* as long as the heap walk waits for a busy thread (leak): a thread
   * descheduled half way through may not run again for long on a loaded
   * machine, and a number of looks runs out in milliseconds */
  uint64_t since = os_now_ms();
  for (;;) {
    uint64_t before = ops_now();
    if (below_intact(q, u, &what)) return;
    int holder = holder_of(q);
    if (holder == 2) return; /* half changed by a thread a fork left behind */
    bool busy = holder == 1 || busy_with(q); /* before ops again (leak) */
    bool moving = busy || ops_now() != before;
    if (!moving || os_now_ms() - since >= BUSY_WAIT_MS)
      fault(fn, what, what == mark_overwritten ? (void *)q : p);
    sched_yield();
  }
}

/* Secure mode: a small block goes back to its page zero past its first 16
 * bytes (prepare() checks that when it is handed out again); medium ones
 * are zeroed when they are handed out. */
static void unfill(void *p, size_t u) {
  if (cf.zero && u < SCRUB_PURGE && segment_of(p)->kind == SEG_SMALL) {
    /* not free any more before it changes (check_below, another thread) */
    __atomic_store_n(&((block_t *)p)->mark, 0, __ATOMIC_RELAXED);
    atomic_thread_fence(memory_order_release);
    memset(p, 0, u);
  }
}

static void release(void *p, size_t u) {
  UNPOISON(p, u);
  if (!scrub_intact(p, u))
    fault("free", "write after free (block changed in quarantine)", p);
  void *was = in_flight(p);
  unfill(p, u);
  ((block_t *)p)->mark = 0; /* live again for the layers' own checks */
  /* the layers' memory again: their links and headers go in there */
  VG(VALGRIND_MAKE_MEM_DEFINED(p, u));
  free_unchecked(p, "free");
  in_flight(was);
}

static void release_large(void *p) {
  segment_t *s = segment_of(p);
  /* it was made inaccessible (or stayed accessible if that failed) */
  mprotect(p, s->large_size, PROT_READ | PROT_WRITE);
  void *was = in_flight(p);
  atomic_store_explicit(&s->large_state, LARGE_LIVE, memory_order_release);
  /* the slack stayed poisoned from its life as a block: the mapping may be
   * cached and handed out again, or unmapped and its addresses reused */
  UNPOISON(p, s->large_size);
  VG(VALGRIND_MAKE_MEM_DEFINED(p, s->large_size));
  free_unchecked(p, "free");
  in_flight(was);
}

static void quarantine_put(void *p, size_t u) {
  quarantine_t *q = my_quarantine();
  UNPOISON(p, u);
  scrub(p, u);
  if (!q) { /* no memory for a quarantine: free at once */
    unfill(p, u);
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
  large_unpinned(s); /* the heap walk's look ends before access does */
  quarantine_t *q = my_quarantine();
  if (!q) {
    atomic_store(&s->large_state, LARGE_LIVE);
    UNPOISON(p, u);
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

/* Statistics (introspect.c may use it: mallinfo2's uordblks, allot_stats'
 * in use): the small and medium blocks waiting in heap h's quarantine, free
 * to the program but still in use to the layers, and their usable bytes.
 * Read without the owner's help: a moment's count. Large blocks there are
 * already counted apart (LARGE_QUARANTINED). */
size_t checked_quarantine_bytes(const heap_t *h, size_t *blocks) {
  const quarantine_t *q = h->checked;
  if (!q || !cf.quarantine) {
    if (blocks) *blocks = 0;
    return 0;
  }
  if (blocks) *blocks = __atomic_load_n(&q->count, __ATOMIC_RELAXED);
  return __atomic_load_n(&q->bytes, __ATOMIC_RELAXED);
}

/* A block that is free to the program but waits in a quarantine (heap
 * walkers must not count it as in use). */
bool checked_quarantined(const void *p) {
  if (!cf.quarantine) return false;
  segment_t *s = segment_of(p);
  if (s->kind == SEG_LARGE) return large_quarantined(p);
  return ((const block_t *)p)->mark == free_mark(p);
}

/* allot_heap_destroy (heapapi.c, in h's owner thread): release now every
 * block of h waiting in this thread's quarantine, where the destroy's own
 * frees went, so that h's memory goes back at once. Blocks of h that other
 * threads freed wait in their quarantines until those move on. */
void checked_heap_destroy(heap_t *h) {
  quarantine_t *q = tls_heap != &empty_heap ? tls_heap->checked : NULL;
  if (!q) return;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  /* each block taken from the head once: h's are released, the others go
   * back at the tail (order kept), the ring consistent at every step */
  for (size_t i = 0, n = q->count; i < n; i++) {
    void *p = q->block[q->head];
    size_t u = q->usable[q->head];
    q->head = (q->head + 1) % QCAP;
    q->count--;
    q->bytes -= u;
    segment_t *s = segment_of(p);
    heap_t *owner = atomic_load_explicit(
        s->kind == SEG_SMALL ? &page_of(s, p)->heap : &s->heap,
        memory_order_relaxed);
    if (owner == h) {
      release(p, u);
      continue;
    }
    size_t tail = (q->head + q->count) % QCAP;
    q->block[tail] = p;
    q->usable[tail] = (uint32_t)u;
    q->count++;
    q->bytes += u;
  }
  for (size_t i = 0, n = q->lcount; i < n; i++) {
    void *p = q->large[q->lhead];
    q->lhead = (q->lhead + 1) % LQCAP;
    q->lcount--;
    if (atomic_load_explicit(&segment_of(p)->heap, memory_order_relaxed) == h) {
      release_large(p);
      continue;
    }
    q->large[(q->lhead + q->lcount) % LQCAP] = p;
    q->lcount++;
  }
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
}

/* For the heap walk (introspect.c): what malloc_usable_size says of live
 * block p whose layers' usable size is u, i.e. the size its caller asked
 * for when blocks carry a trailer, else u (u also when the trailer is
 * damaged: the walk reports, allot_check judges). Reads only, never faults:
 * the trailer lies in poisoned slack (so no ASan instrumentation here), and
 * a large block that another thread frees meanwhile becomes inaccessible,
 * so its word is read through walk_read_word. */
__attribute__((no_sanitize("address"))) size_t checked_walk_size(const void *p,
                                                                 size_t u) {
  if (!cf.trailer || u < overhead()) return u;
  const uint64_t *at = (const uint64_t *)((const uint8_t *)p + u - cf.tsize);
  uint64_t t[1 + NFRAMES]; /* frames (debug), then the size word */
  size_t n = cf.tsize / 8;
  bool large = is_large(p);
  bool ok = true;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  for (size_t i = 0; i < n && ok; i++) {
    if (!large)
      t[i] = ((const volatile uint64_t *)at)[i];
    else
      ok = walk_read_word(at + i, &t[i]);
  }
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (!ok) return u;
  uint64_t w = t[n - 1];
  size_t size = (size_t)(w & FIELD48);
  if (size > u - overhead()) return u;
  uint64_t fh = cf.frames ? frames_hash((const uintptr_t *)t) : 0;
  for (int f = 0; f < NFAMILIES; f++)
    if (w == size_word(p, size, f, fh)) return size;
  return u;
}

/* ---- free ---------------------------------------------------------------- */

/* Validate p as a live checked block: its usable size, after the layers'
 * own checks (which fault on invalid pointers and freed small blocks) and
 * the quarantine's (medium and large blocks there are live to the layers). */
static size_t live_usable(void *p, const char *fn, bool freeing) {
  segment_t *s = segment_of(p);
  if (seg_kind(s) == SEG_LARGE && large_quarantined(p))
    fault(fn, freeing ? "double free" : "pointer already freed", p);
  size_t u = block_usable_size(p, fn);
  if (u && cf.quarantine && s->kind == SEG_MEDIUM &&
      ((block_t *)p)->mark == free_mark(p))
    fault(fn, freeing ? "double free" : "pointer already freed", p);
  return u;
}

/* What fn says when a block of family [from] comes back through the
 * function of another family (fn names which). */
static const char *const mismatch[NFAMILIES] = {
    "mismatched deallocation (block from malloc: free it with free)",
    "mismatched deallocation (block from new: free it with delete)",
    "mismatched deallocation (block from new[]: free it with delete[])",
};

/* The requested size of live block p, after checking its trailer and
 * canaries (fault on damage) and, unless want is -1, that it belongs to
 * family want (fault on a mismatch). */
static size_t checked_size(void *p, size_t u, const char *fn, int want) {
  if (!cf.trailer || u == 0) return u;
  UNPOISON(p, u);
  int fam = FAM_MALLOC;
  size_t size = requested(p, u, want < 0 ? FAM_MALLOC : want, &fam);
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
  if (want >= 0 && fam != want) fault(fn, mismatch[fam], p);
  poison_slack(p, size, u);
  return size;
}

/* Free p as family fam's function fn, checking the size the caller gives
 * (SIZE_MAX: none). */
static void free_as(void *p, const char *fn, int fam, size_t size) {
  if (!p) return;
  segment_t *s = segment_of(p);
  if (seg_kind(s) == 0 || seg_kind(s) == SEG_ZERO) {
    free_unchecked(p, fn); /* faults on anything but a zero-size block */
    return;
  }
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  size_t u = live_usable(p, fn, true);
  size_t have = checked_size(p, u, fn, fam);
  /* with a trailer the exact size is known; without, the usable size */
  if (size != SIZE_MAX && (cf.trailer ? size != have : size > have))
    fault(fn,
          size > have ? "size larger than the block"
                      : "size does not match the block",
          p);
  if (cf.trailer && s->kind == SEG_SMALL) check_below(p, fn);
  if (g.stats) stats_free(p, u);
  VG(VALGRIND_FREELIKE_BLOCK(p, 0));
  void *was = in_flight(p);
  if (cf.quarantine && s->kind == SEG_LARGE) {
    large_quarantine_put(p, u, fn);
  } else if (cf.quarantine) {
    quarantine_put(p, u);
  } else {
    UNPOISON(p, u);
    if (cf.fill && u > 16) memset((uint8_t *)p + 16, FILL_FREED, u - 16);
    free_unchecked(p, fn);
  }
  in_flight(was);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
}

void checked_free(void *p, const char *fn) {
  free_as(p, fn, FAM_MALLOC, SIZE_MAX);
}

/* The requested size of live block p, checked; of family want (-1: any). */
static size_t usable_as(const void *cp, const char *fn, int want) {
  void *p = (void *)cp;
  segment_t *s = segment_of(p);
  if (seg_kind(s) == SEG_ZERO) return block_usable_size(p, fn);
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  size_t size = checked_size(p, live_usable(p, fn, false), fn, want);
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  return size;
}

size_t checked_usable(const void *p, const char *fn) {
  return usable_as(p, fn, -1); /* any block may be asked its size */
}

void checked_free_sized(void *p, size_t align, size_t size, const char *fn) {
  (void)align; /* the caller checked p against it */
  free_as(p, fn, FAM_MALLOC, size);
}

/* ---- the C++ operators (new.cpp) -------------------------------------------
 * In checked mode (checked_families set) operator new and delete come here
 * with their family, so that a block is given back as it was taken: a
 * block from new[] freed with free or delete, from new freed with delete[]
 * or free, from malloc freed with delete, aborts naming the mismatch. The
 * default mode has no room to record the family; its sized deletes catch
 * some mismatches through the size (docs/security.md). Set until start-up
 * has read the modes, like g.slow_mode. */
INTERNAL int checked_families = 1;

void *checked_new(size_t size, size_t align, int fam) {
  allot_process_init();
  if (!cf.trailer) /* statistics mode, or the modes turned out off */
    return align <= 16 ? allot_malloc(size) : allot_aligned_alloc(align, size);
  return alloc_in(alloc_heap(), size, 0, align, false, fam);
}

/* The family of live block q, or -1 (not a live block, or damaged). */
static int family_of(void *q) {
  if (!allot_owns(q)) return -1;
  segment_t *s = segment_of(q);
  if (s->kind == SEG_ZERO) return -1;
  size_t u = block_usable_size(q, "operator delete");
  UNPOISON(q, u);
  int fam = -1;
  size_t size = requested(q, u, FAM_NEWARR, &fam);
  if (size != SIZE_MAX) poison_slack(q, size, u);
  return size == SIZE_MAX ? -1 : fam;
}

/* delete of an array with an element count in front (the array cookie,
 * 8 bytes, or 16 for over-aligned types) passes a pointer past the start
 * of the block new[] made; delete[] of a single object reads a bogus
 * cookie in front of it and passes a pointer before its block. Neither is
 * a block start: name the mismatch rather than only an invalid pointer. */
static void cookie_mismatch(void *p, int fam, const char *fn) {
  for (size_t c = 8; c <= 16; c += 8) {
    uint8_t *q = fam == FAM_NEW ? (uint8_t *)p - c : (uint8_t *)p + c;
    int f = family_of(q);
    if (fam == FAM_NEW && f == FAM_NEWARR)
      fault(fn,
            "mismatched deallocation (pointer past the array cookie of a "
            "block from new[]: free it with delete[])",
            p);
    if (fam == FAM_NEWARR && f == FAM_NEW)
      fault(fn,
            "mismatched deallocation (pointer just below a block from new: "
            "free it with delete)",
            p);
  }
}

void checked_delete(void *p, int fam, size_t size, size_t align) {
  if (!p) return;
  const char *fn = fam == FAM_NEWARR ? "operator delete[]" : "operator delete";
  if (cf.trailer && !allot_owns(p)) cookie_mismatch(p, fam, fn);
  if (align > 16 && ((uintptr_t)p & (align - 1)) != 0)
    fault(fn, "block not aligned as stated", p);
  if (!cf.trailer) { /* the block has no family to check */
    if (size == SIZE_MAX)
      allot_free(p);
    else if (align > 16)
      allot_free_aligned_sized(p, align, size);
    else
      allot_free_sized(p, size);
    return;
  }
  free_as(p, fn, fam, size);
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
  *trailer_word(p, u) =
      size_word(p, size, FAM_MALLOC, frames_key(p, u)); /* realloc's */
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
  size_t old = usable_as(p, "realloc", FAM_MALLOC);
  segment_t *s = segment_of(p);
  if (cf.trailer && s->kind != SEG_ZERO && size <= PTRDIFF_MAX / 2) {
    VG(VALGRIND_DISABLE_ERROR_REPORTING);
    void *was = in_flight(p); /* its trailer moves */
    size_t u = block_usable_size(p, "realloc");
    size_t extra = overhead();
    /* a large block that a medium one would now hold moves, as in the
     * default mode (large blocks are the ones without a heap) */
    bool fits = size + extra <= u && (size > old / 2 || u <= 64) &&
                (s->kind != SEG_LARGE || size + extra > MEDIUM_MAX);
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
    in_flight(was);
    VG(VALGRIND_ENABLE_ERROR_REPORTING);
    if (fits) return p;
  }
  size_t room = size > old && cf.trailer ? size / 4 : 0;
  void *q = alloc_in(alloc_heap(), size, room, 16, false, FAM_MALLOC);
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
  bool lost; /* its blocks are definitely lost (else still reachable) */
} site_t;
#define NSITES 1024

/* A block still allocated at exit (the leak report's list). */
typedef struct lblock {
  uintptr_t p;
  size_t size, u; /* requested and usable */
  bool reached;   /* a pointer to it was found (reach()) */
  bool large;     /* other threads may free it before the report reads it */
} lblock_t;

typedef struct walk {
  const char *what; /* first problem found */
  const void *where;
  size_t leaks, leak_bytes, skipped_heaps;
  site_t *sites; /* NULL: no leak accounting */
  size_t nsites, dropped;
  lblock_t *blocks; /* the exit report: every block still allocated */
  size_t nblocks, blocks_cap;
  bool collect, collect_failed;
  bool pause; /* test hook: stop at the next free list (test_pause_walk) */
  void *half_made[256]; /* blocks gone threads had in hand at the fork */
  size_t nhalf;
  size_t unknown; /* ... and how many of them were not known yet */
} walk_t;

/* The caller's heap, and heaps no thread owns (held still while walked,
 * heap_hold_unowned, which leaves out one being set up), but not one a
 * thread had when the process forked (orphan: its blocks may be half
 * made). *held: the hold taken, for heap_unhold. */
static bool examine_heap(heap_t *h, bool *held) {
  const quarantine_t *q = h->checked;
  *held = false;
  if (h == tls_heap) return true;
  if (q && q->orphan) return false;
  return *held = heap_hold_unowned(h);
}

static void problem(walk_t *w, const char *what, const void *where) {
  if (!w->what) {
    w->what = what;
    w->where = where;
  }
}

/* What other threads are doing (in_flight): the sum of their heaps' ops,
 * and whether one has p (or a block not known yet) in hand. */
static uint64_t ops_now(void) {
  atomic_thread_fence(memory_order_acquire); /* after the block's reads */
  uint64_t sum = 0;
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    quarantine_t *q = h->checked;
    if (q) sum += atomic_load_explicit(&q->ops, memory_order_relaxed);
  }
  atomic_thread_fence(memory_order_acquire); /* before the block's reads */
  return sum;
}
static bool busy_with(const void *p) {
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    quarantine_t *q = h->checked;
    void *b = q && !q->orphan ? atomic_load(&q->busy) : NULL;
    if (b == p || b == UNKNOWN_BLOCK) return true;
  }
  return false;
}
/* Which thread has block p itself in hand: 0 none, 1 a running one, 2 one
 * that a fork left behind (it never finishes). */
static int holder_of(const void *p) {
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    quarantine_t *q = h->checked;
    if (q && atomic_load(&q->busy) == p) return q->orphan ? 2 : 1;
  }
  return 0;
}

/* Live block p's requested size, or SIZE_MAX with *what saying what is
 * damaged. */
static size_t inspect(void *p, size_t u, const char **what) {
  size_t size = requested(p, u, FAM_MALLOC, NULL);
  if (size == SIZE_MAX) {
    *what = "heap buffer overflow (block trailer overwritten)";
    return SIZE_MAX;
  }
  if (!canary_ok((uint8_t *)p + size, canary_len(size, u), canary_of(p))) {
    *what = "heap buffer overflow (canary after the block overwritten)";
    return SIZE_MAX;
  }
  return size;
}

/* Is p still a live block? Another thread may free it while the walk
 * looks: its fill, or its pages given back, then read as a damaged trailer.
 * Once free it stays so during the walk (only the examined heap's own
 * thread allocates from its pages; medium frees wait for the lock the walk
 * holds), and its quarantine's walk judges it. */
static bool still_live(const void *p) {
  segment_t *s = segment_of(p);
  if (s->kind == SEG_LARGE)
    return atomic_load_explicit(&s->large_state, memory_order_acquire) ==
           LARGE_LIVE;
  return __atomic_load_n(&((const block_t *)p)->mark, __ATOMIC_ACQUIRE) !=
         free_mark(p);
}

static void leak(walk_t *w, void *p, size_t u) {
  for (size_t i = 0; i < w->nhalf; i++)
    if (w->half_made[i] == p) return;
  size_t size = u;
  const char *what = NULL;
  /* A large block is read only while pinned (large_pin): other threads
   * free large blocks without a lock the walk holds, and a freed one soon
   * cannot be read (the quarantine, the cache). Its size is read again
   * under each pin: it may have been freed and made anew meanwhile. */
  segment_t *ls = segment_of(p);
  if (ls->kind != SEG_LARGE) ls = NULL;
  /* A block another running thread is freeing, resizing or making (large
   * blocks belong to no heap; other threads free into examined heaps) is
   * not damaged: look again until no thread was busy while we looked. The
   * wait is bounded by time, a few seconds, never by a number of looks: a
   * thread that has this very block in hand may take long (debug mode
   * fills a new large block whole), and one may be descheduled anywhere,
   * also where only "a block not known yet" says it is busy (the layers
   * handed it a large block, live from then on, and it has not said which
   * yet): a thousand looks took 0.3 to 3 ms, less than a time slice on a
   * loaded machine, and so reported such a block as overwritten
   * (hostile_largewalk). The bound only keeps a thread that waits for a
   * lock the walk holds from waiting forever. */
  uint64_t since = 0;
  while (cf.trailer) {
    uint64_t before = ops_now();
    if (ls) {
      if (!large_pin(ls)) return; /* freed meanwhile: not a leak */
      u = ls->large_size;
    }
    size = inspect(p, u, &what);
    bool live = size != SIZE_MAX || still_live(p);
    bool held = size == SIZE_MAX && live && holder_of(p) == 1;
    /* a thread giving it back to the layers from its quarantine (its mark
     * cleared, its fill or zeros still there), which may wait for the lock
     * this walk holds: free, not damaged */
    bool leaving =
        held && (filled_from(p, 16, u, fill_word(p, u)) || zero_from(p, 16, u));
    if (ls) large_unpin(ls);
    if (size != SIZE_MAX) break;
    if (!live || leaving) return; /* freed meanwhile: not a leak */
    /* Who is busy is read before ops is read again, so that the two reads
     * of ops bracket it. Read after, it missed a thread that was busy while
     * we looked and finished before: a walk preempted between the two, as
     * a paused maker finished this very block, reported it overwritten
     * (hostile_largewalk_pause, secure mode, about 1 run in 40). */
    bool busy = held || busy_with(p);
    if (busy || ops_now() != before) {
      uint64_t now = os_now_ms();
      if (!since) since = now;
      if (now - since < BUSY_WAIT_MS) {
        sched_yield();
        continue;
      }
    }
    if (w->unknown) {
      /* a block the layers were handing to a thread that is gone (fork):
       * not yet made, not damaged (one such block per thread at most) */
      w->unknown--;
      return;
    }
    problem(w, what, p);
    return;
  }
  w->leaks++;
  w->leak_bytes += size;
  if (!w->collect) return;
  if (w->nblocks == w->blocks_cap) { /* no malloc here: mappings */
    size_t cap = w->blocks_cap ? w->blocks_cap * 2 : 4096;
    lblock_t *nb = os_map(cap * sizeof(lblock_t));
    if (!nb) {
      w->collect = false;
      w->collect_failed = true;
      return;
    }
    if (w->blocks) {
      memcpy(nb, w->blocks, w->nblocks * sizeof(lblock_t));
      os_unmap(w->blocks, w->blocks_cap * sizeof(lblock_t));
    }
    w->blocks = nb;
    w->blocks_cap = cap;
  }
  w->blocks[w->nblocks++] =
      (lblock_t){(uintptr_t)p, size, u, false, ls != NULL};
}

/* A large block's frames are read through the kernel: the walk no longer
 * pins it, and a thread still running may have freed it (a fault would
 * end the report; stale frames only misplace one block in it). */
static NO_ASAN void read_frames(uintptr_t *to, const uintptr_t *from,
                                bool large) {
  for (int i = 0; i < NFRAMES; i++) {
    uint64_t v = 0;
    if (!large)
      v = ((const volatile uintptr_t *)from)[i];
    else if (!walk_read_word(from + i, &v))
      v = 0;
    to[i] = (uintptr_t)v;
  }
}

/* Count block b of the report at its allocation site. */
static void add_site(walk_t *w, const lblock_t *b) {
  uintptr_t frames[NFRAMES] = {0};
  if (cf.frames)
    read_frames(frames, trailer_frames((void *)b->p, b->u), b->large);
  size_t size = b->size;
  bool lost = !b->reached;
  uint64_t hash = lost;
  for (int i = 0; i < NFRAMES; i++)
    hash = mix(hash ^ frames[i]);
  for (size_t k = 0; k < NSITES; k++) {
    site_t *s = &w->sites[(hash + k) % NSITES];
    if (s->count &&
        (s->lost != lost || memcmp(s->frames, frames, sizeof frames) != 0))
      continue;
    if (!s->count) {
      memcpy(s->frames, frames, sizeof frames);
      s->min = size;
      s->lost = lost;
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
  /* pages in use only (introspect.c, gather_heap, says why) */
  for (uint64_t m = segment_pages_used_mask(s); m; m &= m - 1) {
    page_t *pg = &s->pages[__builtin_ctzll(m)];
    if (!pg->bsize) continue;
    uint8_t *start = page_start(s, pg);
    /* the owner's free list: every link inside the page, on a block */
    size_t n = 0;
    block_t *head = pg->free;
    if (w->pause && head) {
      w->pause = false;
      test_pause_walk();
    }
    for (block_t *b = head; b; b = link_decode(b->next, b)) {
      if ((uint8_t *)b < start || (uint8_t *)b >= start + PAGE_SIZE ||
          !page_is_block(pg, b) || b->mark != free_mark(b)) {
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
  /* acquire: the offset was written before the block became live (leak
   * reads the size again under its pin) */
  if (s->kind != SEG_LARGE ||
      atomic_load_explicit(&s->large_state, memory_order_acquire) != LARGE_LIVE)
    return;
  leak(w, (uint8_t *)s + s->large_offset, s->large_size);
}

static void walk_heaps(walk_t *w) {
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    quarantine_t *q = h->checked;
    void *busy = q && q->orphan
                     ? atomic_load_explicit(&q->busy, memory_order_relaxed)
                     : NULL;
    if (busy == UNKNOWN_BLOCK || (busy && w->nhalf == 256))
      w->unknown++;
    else if (busy)
      w->half_made[w->nhalf++] = busy;
  }
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    bool held;
    if (!examine_heap(h, &held)) {
      w->skipped_heaps++;
      continue;
    }
    w->pause = held;
    os_lock(&h->seg_lock);
    for (segment_t *s = h->segs; s; s = s->hnext)
      walk_small_segment(w, s);
    os_unlock(&h->seg_lock);
    os_lock(&h->medium_lock);
    walk_medium(w, h);
    os_unlock(&h->medium_lock);
    walk_quarantine(w, h);
    if (held) heap_unhold();
  }
  segments_visit(walk_large, w);
}

/* ---- reachability (the leak report) -----------------------------------------
 * Which of the blocks still allocated at exit can the program still reach?
 * As valgrind's memcheck does: every aligned word of the roots — the
 * process's writable mappings (the data and bss of the program and its
 * libraries, other threads' stacks, memory the program mapped itself)
 * except allot's own segments, and the live part of this thread's stack
 * with its registers — that points into a block (its start or inside it)
 * reaches it, and what a reached block holds reaches further. A block
 * nothing reaches is definitely lost: no pointer to it is left. Nothing
 * here allocates: the lists are mappings (os_map), memory is read through
 * the kernel (process_vm_readv: a mapping another thread unmaps meanwhile
 * is an error, not a fault) and only where resident (mincore: pages never
 * touched hold no pointer). */

typedef struct span {
  uintptr_t lo, hi;
} span_t;

typedef struct reach {
  lblock_t *b; /* sorted by address */
  size_t n;
  uintptr_t lo, hi; /* first block start, last block end */
  size_t *todo;     /* reached blocks not yet scanned */
  size_t ntodo;
  span_t *skip; /* allot's segments and this code's own mappings */
  size_t nskip, skip_cap;
  span_t *roots; /* writable mappings */
  size_t nroots, roots_cap;
  uint8_t *buf; /* READ_CHUNK bytes read */
  bool direct;  /* process_vm_readv refused: plain reads */
  uint8_t vec[256];
} reach_t;

#define READ_CHUNK ((size_t)256 * OS_PAGE)

static bool span_add(span_t **v, size_t *n, size_t *cap, uintptr_t lo,
                     uintptr_t hi) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 1024;
    span_t *nv = os_map(nc * sizeof(span_t));
    if (!nv) return false;
    if (*v) {
      memcpy(nv, *v, *n * sizeof(span_t));
      os_unmap(*v, *cap * sizeof(span_t));
    }
    *v = nv;
    *cap = nc;
  }
  (*v)[(*n)++] = (span_t){lo, hi};
  return true;
}

/* Heapsort (qsort may allocate). */
static void sift(lblock_t *b, size_t at, size_t n) {
  for (;;) {
    size_t c = 2 * at + 1;
    if (c >= n) return;
    if (c + 1 < n && b[c + 1].p > b[c].p) c++;
    if (b[at].p >= b[c].p) return;
    lblock_t t = b[at];
    b[at] = b[c];
    b[c] = t;
    at = c;
  }
}
static void sort_blocks(lblock_t *b, size_t n) {
  for (size_t i = n / 2; i-- > 0;)
    sift(b, i, n);
  for (size_t end = n; end-- > 1;) {
    lblock_t t = b[0];
    b[0] = b[end];
    b[end] = t;
    sift(b, 0, end);
  }
}
static void sort_spans(span_t *v,
                       size_t n) { /* insertion: few, mostly sorted */
  for (size_t i = 1; i < n; i++) {
    span_t t = v[i];
    size_t k = i;
    for (; k > 0 && v[k - 1].lo > t.lo; k--)
      v[k] = v[k - 1];
    v[k] = t;
  }
}

/* Word v, read from a root or a reached block: does it reach a block? */
static inline void reach_word(reach_t *r, uintptr_t v) {
  if (v < r->lo || v >= r->hi) return;
  size_t lo = 0, hi = r->n;
  while (lo < hi) { /* the last block starting at or below v */
    size_t mid = (lo + hi) / 2;
    if (r->b[mid].p <= v)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (!lo) return;
  lblock_t *x = &r->b[lo - 1];
  if (x->reached || v >= x->p + (x->size ? x->size : 1)) return;
  x->reached = true;
  r->todo[r->ntodo++] = lo - 1;
}

/* Every aligned word of [lo, hi) that is resident and readable. */
static void reach_scan(reach_t *r, uintptr_t lo, uintptr_t hi) {
  lo = (lo + 7) & ~(uintptr_t)7;
  hi &= ~(uintptr_t)7;
  while (lo < hi) {
    uintptr_t page = lo & ~(uintptr_t)(OS_PAGE - 1);
    uintptr_t end = hi - lo > READ_CHUNK ? lo + READ_CHUNK : hi;
    size_t npages = (end - page + OS_PAGE - 1) / OS_PAGE;
    if (npages > sizeof r->vec) {
      npages = sizeof r->vec;
      end = page + npages * OS_PAGE;
    }
    if (mincore((void *)page, end - page, r->vec) != 0) { /* unmapped */
      lo = end;
      continue;
    }
    for (size_t i = 0; i < npages;) {
      if (!(r->vec[i] & 1)) {
        i++;
        continue;
      }
      size_t k = i;
      while (k < npages && (r->vec[k] & 1))
        k++;
      uintptr_t a = page + i * OS_PAGE, b = page + k * OS_PAGE;
      if (a < lo) a = lo;
      if (b > end) b = end;
      struct iovec local = {r->buf, b - a}, remote = {(void *)a, b - a};
      ssize_t got = -1;
      if (!r->direct) {
        got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        /* refused (a seccomp filter): read directly, as at exit nothing
         * else unmaps what the scan reads but a thread still running */
        if (got < 0 && (errno == EPERM || errno == ENOSYS)) r->direct = true;
      }
      if (r->direct) {
        memcpy(r->buf, (void *)a, b - a);
        got = (ssize_t)(b - a);
      }
      const uintptr_t *w = (const uintptr_t *)r->buf;
      for (ssize_t j = 0; j + 8 <= got; j += 8)
        reach_word(r, w[j / 8]);
      i = k;
    }
    lo = end;
  }
}

/* A root, minus the spans to skip (sorted). */
static void reach_root(reach_t *r, uintptr_t lo, uintptr_t hi) {
  for (size_t i = 0; i < r->nskip && lo < hi; i++) {
    span_t *s = &r->skip[i];
    if (s->hi <= lo) continue;
    if (s->lo >= hi) break;
    if (s->lo > lo) reach_scan(r, lo, s->lo);
    lo = s->hi;
  }
  if (lo < hi) reach_scan(r, lo, hi);
}

/* this code's own mappings hold block addresses (the list, blocks' contents
 * being read), and so do the quarantines (of blocks freed, and in their
 * unused slots of blocks that have left and may be live again) */
static bool skip_own(reach_t *r, const void *at, size_t bytes) {
  return span_add(&r->skip, &r->nskip, &r->skip_cap, (uintptr_t)at,
                  (uintptr_t)at + bytes);
}

static void skip_segment(segment_t *s, void *arg) {
  reach_t *r = arg;
  span_add(&r->skip, &r->nskip, &r->skip_cap, (uintptr_t)s,
           (uintptr_t)s + (s->map_size ? s->map_size : SEG_SIZE));
}

static uintptr_t parse_hex(const char **c) {
  uintptr_t v = 0;
  for (;; (*c)++) {
    char d = **c;
    if (d >= '0' && d <= '9')
      v = v * 16 + (uintptr_t)(d - '0');
    else if (d >= 'a' && d <= 'f')
      v = v * 16 + (uintptr_t)(d - 'a' + 10);
    else
      return v;
  }
}

/* The writable, readable mappings of /proc/self/maps. */
static bool read_maps(reach_t *r) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096 + 256];
  size_t have = 0;
  for (;;) {
    ssize_t got = read(fd, buf + have, sizeof buf - 1 - have);
    if (got <= 0) break;
    have += (size_t)got;
    buf[have] = 0;
    char *line = buf, *nl;
    while ((nl = memchr(line, '\n', (size_t)(buf + have - line)))) {
      const char *c = line;
      uintptr_t lo = parse_hex(&c);
      uintptr_t hi = *c == '-' ? (c++, parse_hex(&c)) : 0;
      if (*c == ' ' && c[1] == 'r' && c[2] == 'w' && hi > lo &&
          !span_add(&r->roots, &r->nroots, &r->roots_cap, lo, hi)) {
        close(fd);
        return false;
      }
      line = nl + 1;
    }
    have = (size_t)(buf + have - line); /* a partial line moves down */
    memmove(buf, line, have);
  }
  close(fd);
  return true;
}

/* The roots: the registers, this thread's stack from sp up (the frames of
 * exit and of the callers of exit; below sp lie the checker's own frames and
 * dead ones), the other writable mappings whole. */
static void reach_roots(reach_t *r, uintptr_t sp, const void *regs,
                        size_t regs_size) {
  reach_scan(r, (uintptr_t)regs, (uintptr_t)regs + regs_size);
  for (size_t i = 0; i < r->nroots; i++) {
    span_t *m = &r->roots[i];
    if (sp >= m->lo && sp < m->hi) { /* this thread's stack: the live part */
      reach_root(r, sp, m->hi);
      m->lo = m->hi = 0;
    }
  }
  for (size_t i = 0; i < r->nroots; i++)
    if (r->roots[i].hi) reach_root(r, r->roots[i].lo, r->roots[i].hi);
}

#define UNMAP_SPANS(v, cap)                                                    \
  do {                                                                         \
    if (v) os_unmap(v, (cap) * sizeof(span_t));                                \
  } while (0)

/* Mark every block of w->blocks that the program can reach, from the roots
 * (sp and regs: reach_roots). false: could not tell (no memory for the
 * lists, no /proc): the report says so. */
static bool reach(walk_t *w, uintptr_t sp, const void *regs, size_t regs_size) {
  reach_t r;
  memset(&r, 0, sizeof r);
  r.b = w->blocks;
  r.n = w->nblocks;
  if (!r.n) return true;
  sort_blocks(r.b, r.n);
  r.lo = r.b[0].p;
  for (size_t i = 0; i < r.n; i++)
    if (r.b[i].p + r.b[i].size + 1 > r.hi) r.hi = r.b[i].p + r.b[i].size + 1;
  size_t todo_bytes = r.n * sizeof(size_t);
  r.todo = os_map(todo_bytes);
  r.buf = os_map(READ_CHUNK);
  bool ok = r.todo && r.buf && read_maps(&r);
  if (ok) {
    segments_visit(skip_segment, &r);
    for (heap_t *h = heaps_first(); h; h = h->next_all)
      if (h->checked) skip_own(&r, h->checked, sizeof(quarantine_t));
    skip_own(&r, w->blocks, w->blocks_cap * sizeof(lblock_t));
    skip_own(&r, r.todo, todo_bytes);
    skip_own(&r, r.buf, READ_CHUNK);
    skip_own(&r, r.roots, r.roots_cap * sizeof(span_t));
    /* the list of spans itself, where it is once this is added */
    ok = skip_own(&r, r.skip, 0);
    if (ok)
      r.skip[r.nskip - 1] = (span_t){
          (uintptr_t)r.skip, (uintptr_t)r.skip + r.skip_cap * sizeof(span_t)};
  }
  if (ok) {
    sort_spans(r.skip, r.nskip);
    reach_roots(&r, sp, regs, regs_size);
    while (r.ntodo) { /* what reached blocks hold */
      lblock_t *x = &r.b[r.todo[--r.ntodo]];
      reach_scan(&r, x->p, x->p + x->size);
    }
  }
  if (r.todo) os_unmap(r.todo, todo_bytes);
  if (r.buf) os_unmap(r.buf, READ_CHUNK);
  UNMAP_SPANS(r.skip, r.skip_cap);
  UNMAP_SPANS(r.roots, r.roots_cap);
  return ok;
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

static void put_blocks(line_t *l, size_t count, size_t bytes) {
  put_dec(l, count);
  put(l, count == 1 ? " block (" : " blocks (");
  put_dec(l, bytes);
  put(l, " bytes)");
}

/* The report: a header line with the totals, then the sites, the blocks
 * definitely lost first, each group largest first. classified: reach()
 * could tell lost blocks from reachable ones. lost_only (ALLOT_LEAK_REPORT
 * =lost): nothing unless a block is definitely lost, and only those sites,
 * as LeakSanitizer reports (a program's blocks still reachable at exit are
 * most often its own on purpose). */
static void report_leaks(walk_t *w, bool classified, bool lost_only) {
  line_t l = {.n = 0};
  if (!w->leaks) return;
  lost_only = lost_only && classified; /* unclassified: all, as they are */
  size_t lost = 0, lost_bytes = 0;
  for (size_t i = 0; i < w->nblocks; i++)
    if (!w->blocks[i].reached) {
      lost++;
      lost_bytes += w->blocks[i].size;
    }
  if (lost_only && !lost) return;
  put(&l, "allot: leak report: ");
  put_dec(&l, w->leaks);
  put(&l, w->leaks == 1 ? " block, " : " blocks, ");
  put_dec(&l, w->leak_bytes);
  put(&l, " bytes still allocated at exit, from ");
  put_dec(&l, w->nsites);
  put(&l, w->nsites == 1 ? " site: " : " sites: ");
  if (classified) {
    put_blocks(&l, lost, lost_bytes);
    put(&l, " definitely lost, ");
    put_blocks(&l, w->leaks - lost, w->leak_bytes - lost_bytes);
    put(&l, " still reachable");
  } else {
    put(&l, "not told apart (no memory or no /proc for the scan)");
  }
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
      if (lost_only && !s->lost) continue;
      if (s->count && (!best || (s->lost && !best->lost) ||
                       (s->lost == best->lost && s->bytes > best->bytes)))
        best = s;
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
    if (classified) put(&l, best->lost ? ", definitely lost" : ", reachable");
    if (cf.frames) /* no frames: made before the unwinder could run */
      put(&l, best->frames[0] ? ", allocated at:" : ", made at start-up");
    flush(&l);
    for (int k = 0; k < NFRAMES && best->frames[k]; k++)
      report_frame(k, best->frames[k]);
    best->count = 0;
  }
  bool more = w->nsites > REPORT_SITES || w->dropped;
  if (lost_only) { /* a lost site not shown (shown: count 0) */
    more = false;
    for (size_t k = 0; k < NSITES; k++)
      if (w->sites[k].count && w->sites[k].lost) more = true;
  }
  if (more) {
    put(&l, "allot:   (more sites not shown)");
    flush(&l);
  }
}

/* Debug mode at exit: the whole heap checked (allot_check, which includes
 * checked_verify below), then the leak report. */
static COLD void checked_exit_report(void) {
  /* the registers as exit left them, and where its frames start: roots of
   * the leak report's scan (what this code does below is not). The
   * canonical frame address, the stack pointer at the call, is the top of
   * this function's frame on every target; the frame address is not: on
   * aarch64 it is the frame record at the bottom, with this function's own
   * locals above it (uninitialised, they held a stale pointer to a lost
   * block there, and misuse-leak-report saw it reachable). */
  jmp_buf regs;
  setjmp(regs);
  uintptr_t sp = (uintptr_t)__builtin_dwarf_cfa();
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
  int mode = __atomic_load_n(&g.leak_report, __ATOMIC_RELAXED);
  walk_t w = {0};
  w.sites = mode ? os_map(NSITES * sizeof(site_t)) : NULL;
  w.collect = w.sites != NULL;
  VG(VALGRIND_DISABLE_ERROR_REPORTING);
  walk_heaps(&w);
  if (w.what) fault("exit", w.what, w.where);
  bool classified =
      w.sites && !w.collect_failed && reach(&w, sp, regs, sizeof regs);
  for (size_t i = 0; i < w.nblocks; i++) {
    if (!classified) w.blocks[i].reached = true;
    add_site(&w, &w.blocks[i]);
  }
  VG(VALGRIND_ENABLE_ERROR_REPORTING);
  if (w.sites) {
    report_leaks(&w, classified, mode == 1);
    os_unmap(w.sites, NSITES * sizeof(site_t));
  }
  if (w.blocks) os_unmap(w.blocks, w.blocks_cap * sizeof(lblock_t));
}

/* Every process runs this, so it is a test and a call: the report's code
 * stays out of the window of code the default mode keeps resident
 * (cmake/hot-functions.txt). */
static COLD NOINLINE void sites_report(void) {
  line_t l = {.n = 0};
  put(&l, "allot: allocation sites: ");
  put_dec(&l, atomic_load_explicit(&sites_diff, memory_order_relaxed));
  put(&l, " of ");
  put_dec(&l, atomic_load_explicit(&sites_walks, memory_order_relaxed));
  put(&l, " differ from libgcc's unwinder (ALLOT_PROF_CHECK)");
  flush(&l);
}

static __attribute__((destructor)) void checked_at_exit(void) {
  if (g.debug && g.slow_mode) checked_exit_report();
  if (unlikely(sites_check)) sites_report();
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
