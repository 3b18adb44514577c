/* internal.h: the types and inline fast paths shared by allot's layers.
 *
 * Memory is organised in segments: 4 MiB regions aligned to their size, so
 * masking any pointer handed out gives its segment header, and a bitmap over
 * the address space (the segment map) tells allot's segments from anything
 * else. A segment is one of three kinds: small (63 pages of 64 KiB, each page
 * holding blocks of one size class, metadata in page 0), medium (one
 * boundary-tag chunk region) or large (one block in its own mapping). */
#ifndef ALLOT_INTERNAL_H
#define ALLOT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <unwind.h>

#include "allot.h"
#include "chunk.h"

#define INTERNAL __attribute__((visibility("hidden")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))
/* The code the loader runs first, the IFUNC resolver and os_code_tiers: a
 * segment of its own (cmake/layout.cmake), and no sanitizer checks (nothing
 * of their runtimes is ready then). */
#define BOOT_CODE                                                              \
  __attribute__((section(".allot_boot"), no_sanitize("undefined")))
#define COLD __attribute__((cold, noinline))

/* ---- geometry -------------------------------------------------------- */
#define SEG_SHIFT 22
#define SEG_SIZE ((size_t)1 << SEG_SHIFT)
#define SEG_MASK (SEG_SIZE - 1)
#define PAGE_SHIFT 16
#define PAGE_SIZE ((size_t)1 << PAGE_SHIFT)
#define PAGES_PER_SEG (SEG_SIZE / PAGE_SIZE)
#define OS_PAGE 4096u

#define SMALL_MAX 8192u                 /* largest malloc served from pages */
#define MEDIUM_MAX ((size_t)1 << 20)    /* largest size from the chunk heap */
#define MEDIUM_REUSE_MAX (SEG_SIZE / 2) /* largest from idle chunks */
/* Classes 1..57 hold sizes up to SMALL_MAX; 58 and 59 (12 and 16 KiB) only
 * aligned requests (aligned_class_paged). */
#define NCLASSES 60
#define CLASSES_BY_SIZE 58
#define PAGED_ALIGNED_MAX 16384u /* largest aligned request from pages */
#define LARGE_OFFSET OS_PAGE     /* user data of a large block starts here */
#ifndef ALLOT_SECURE_DEFAULT     /* CMake option ALLOT_SECURE_DEFAULT */
#define ALLOT_SECURE_DEFAULT 0
#endif
/* Address bits covered by the segment map; pointers above are foreign. */
#define VA_BITS 48

/* ---- small-object pages ---------------------------------------------- */
typedef struct block {
  uintptr_t next; /* encoded link to the next free block */
  uintptr_t mark; /* free_mark(block) while free: double-free detection */
} block_t;

struct heap;

/* A page descriptor fills two cache lines: the first holds what the owner
 * touches on every malloc and free, the second what other threads write
 * (`xfree`, `full`), so cross-thread frees do not steal the owner's line.
 * Its size, a power of two, makes finding it a shift. */
typedef struct page {
  block_t *free; /* blocks for malloc, and the owner's frees (owner only) */
  _Atomic(struct heap *) heap; /* owner */
  uint32_t used;               /* blocks handed out, not yet seen back */
  uint32_t capacity;           /* blocks carved so far */
  uint32_t reserved;           /* blocks the page can hold */
  uint32_t bsize;              /* block size; 0 when the page is not in use */
  uint8_t cls;
  uint8_t queue;    /* which heap list holds it: Q_AVAIL, Q_FULL */
  uint8_t last_cls; /* dirty: the class it held, on its heap's dirty_free */
  /* the owner while the page is on its available list, else NULL: free's
   * fast path compares it with the thread's heap, one test for "mine, and
   * not full" (page_set_queue keeps it) */
  _Atomic(struct heap *) avail_owner;
  /* the heap profile's live samples among its blocks (prof.c): while there
   * are any, avail_owner is NULL, and every free of the page's blocks goes
   * to small_free_other, where a sample's is seen */
  _Atomic uint32_t psamples;
  /* the test of a block start (page_is_block), in bytes from the page's
   * start: capacity * bsize (page_set_capacity keeps both), and ceil(2^64 /
   * bsize), by which an offset times it is below it exactly when the offset
   * is a multiple of bsize (Lemire, Kaser and Kurz: one multiply, where the
   * block index and back took two and the count's compare a third load);
   * 0 while the page is not in use, which no offset passes */
  uint32_t carved_end;
  uint64_t divm;
  /* blocks freed by other threads: the list's head and, in the top 16
   * bits, its length (xfree_head, xfree_count) */
  _Alignas(64) _Atomic uintptr_t xfree;
  _Atomic uint8_t full; /* set while in the full list */
  /* Bytes from the page's start (whole OS pages) that its former lives
   * made resident since its memory was last purged: a hint (page.c) */
  uint32_t touched;
  struct page *next, *prev; /* in the owner's list for its class (cold) */
  uint64_t freed_at;        /* ms when it became free (purge delay) */
} __attribute__((aligned(128))) page_t;

_Static_assert(sizeof(page_t) == 128, "page descriptors are found by a shift");
_Static_assert(offsetof(page_t, divm) + sizeof(uint64_t) <=
                   offsetof(page_t, xfree),
               "free's fields in the owner's cache line");
enum { Q_NONE, Q_AVAIL, Q_FULL };

/* Blocks carved so far, and free's bound in bytes with it. Other threads
 * read both without a lock (a block they free was carved before they got
 * it, by the program's own ordering). */
static inline void page_set_capacity(page_t *pg, uint32_t n) {
  __atomic_store_n(&pg->capacity, n, __ATOMIC_RELAXED);
  __atomic_store_n(&pg->carved_end, n * pg->bsize, __ATOMIC_RELAXED);
}
/* Whether p is the start of a carved block of page pg (free or not): free's
 * test (small_valid), and the free lists' checks. The bound may grow under
 * the owner while another thread frees. */
static ALWAYS_INLINE bool page_is_block(const page_t *pg, const void *p) {
  uint64_t off = (uintptr_t)p & (PAGE_SIZE - 1);
  return off * pg->divm < pg->divm &&
         off < __atomic_load_n(&pg->carved_end, __ATOMIC_RELAXED);
}
enum { SEG_SMALL = 1, SEG_MEDIUM = 2, SEG_LARGE = 3, SEG_ZERO = 4 };
/* LARGE_QUARANTINED: freed, waiting in checked mode's quarantine */
enum { LARGE_LIVE = 1, LARGE_CACHED = 2, LARGE_QUARANTINED = 3 };

typedef struct segment {
  uint64_t cookie; /* secret ^ address: a header we wrote */
  uint8_t kind;
  /* large: checked mode's heap walk is reading the block (large_pin); its
   * mapping stays as it is until the walk lets go (in the header's padding) */
  _Atomic uint16_t large_pins;
  _Atomic uint32_t large_state;
  _Atomic(struct heap *) heap;   /* owner of small and medium segments */
  size_t map_size;               /* bytes mapped from the segment start */
  struct segment *next, *prev;   /* global list of every segment */
  struct segment *hnext, *hprev; /* owner heap's list of its segments */
  /* small */
  uint64_t free_pages; /* bit i: page i not in use */
  /* bit i: page i is free but its memory not yet given back ("dirty"),
   * under the owner's seg_lock; kept here, not in the descriptors, so the
   * purge pass and the segment's release visit these pages without reading
   * the others, most of which lie on header pages a small heap never
   * writes (a read alone can make one resident: docs/memory.md, session
   * 23) */
  uint64_t dirty_mask;
  uint32_t pages_used;
  /* for prompt return (purge.c): bytes carved in its pages, added by the
   * owner as it carves (segment_count_carved), less uncarved, those of its
   * pages retired since (under the owner's seg_lock), is what its pages in
   * use hold; dirty_bytes is what its dirty free pages hold resident (under
   * seg_lock) */
  _Atomic size_t carved;
  size_t uncarved, dirty_bytes;
  /* medium */
  void *region;
  size_t region_size;
  /* large */
  size_t large_offset; /* user pointer = segment + large_offset */
  size_t large_size;   /* usable bytes at the user pointer */
  uint64_t cached_at;
  page_t pages[PAGES_PER_SEG];
} segment_t;

/* The owner carved bytes more of s's pages: it is the count's only writer,
 * so a load and a store, no lock (prompt return reads it, purge.c). */
static inline void segment_count_carved(segment_t *s, size_t bytes) {
  atomic_store_explicit(&s->carved,
                        atomic_load_explicit(&s->carved, memory_order_relaxed) +
                            bytes,
                        memory_order_relaxed);
}

/* ---- heaps ------------------------------------------------------------- */
typedef struct page_list {
  page_t *first, *last;
  size_t count;
} page_list_t;

typedef struct os_lock {
  _Atomic int state;
} os_lock_t;

enum { HEAP_ACTIVE = 1, HEAP_ABANDONED = 2, HEAP_POOLED = 3 };

/* Per-heap counters (introspect.c), counted only in statistics mode
 * (g.stats), whose mallocs and frees all take the checked path (a heap's
 * xfrees, counted in every mode, is heap_t's). Rows: 0 zero-size, 1..NCLASSES-1
 * the small classes, then medium and large. */
#define STATS_MEDIUM NCLASSES
#define STATS_LARGE (NCLASSES + 1)
#define STATS_ROWS (NCLASSES + 2)
typedef struct heap_stats {
  /* small and medium blocks other threads freed (a heap's own count is
   * heap_t.xfrees; this one sums retired heaps') */
  _Atomic size_t xfrees;
  _Atomic size_t mallocs[STATS_ROWS], frees[STATS_ROWS];
  _Atomic size_t requested;           /* bytes asked for */
  _Atomic size_t in_use, in_use_peak; /* usable bytes of live blocks */
} heap_stats_t;

/* A medium block realloc found live with `usable` bytes while its heap's
 * medium_gen was `gen`: until that changes (any medium free or shrink in the
 * heap), realloc may trust it without the heap's lock (api.c). */
typedef struct realloc_hint {
  const void *p;
  struct heap *heap;
  uint64_t gen;
  size_t usable;
} realloc_hint_t;
#define REALLOC_HINTS 256

typedef struct heap {
  page_t *current[NCLASSES]; /* the fast path allocates from these */
  page_list_t avail[NCLASSES];
  _Atomic uint64_t xwake; /* classes with frees into full pages */
  /* Classes whose owner freed into full pages lately (page.c): their pages
   * that run dry stay in `avail` for a while, where a free costs no lock. */
  uint8_t churn[NCLASSES];
  /* Blocks each class took from larger classes since its pages last grew,
   * or that it found none to take (page.c, page_borrow) */
  uint8_t borrowed[NCLASSES];
  segment_t *segs; /* small segments of this heap */
  /* bit cls: dirty_free[cls] is not empty (written under seg_lock, read
   * without it by the owner's slow path) */
  _Atomic uint64_t dirty_classes;
  segment_t *medium_segs;
  os_lock_t medium_lock; /* medium frees from other threads take it */
  int state;
  struct heap *next_all;  /* every heap ever made (never freed) */
  struct heap *next_free; /* abandoned or pooled list */
  /* Guards segs, the free pages of its segments and dirty_pages: taken by
   * the owner per page (not per block) and by the purge thread. */
  os_lock_t seg_lock;
  /* Guards the page lists while pages sit in a full list: the owner takes it
   * on its slow paths (not per block) and the purge thread to retire full
   * pages whose every block came back through xfree while the owner was
   * away (page_reclaim_heap). Taken before seg_lock. */
  os_lock_t page_lock;
  _Atomic uint64_t xstrand;   /* classes with xfrees the purge thread left */
  uint64_t xwake_since;       /* purge thread: when it first saw xwake set */
  uint64_t abandoned_at;      /* ms when its thread exited (heap.c) */
  _Atomic uint64_t purge_due; /* ms after which dirty pages should go back */
  _Atomic size_t dirty_pages;
  _Atomic uint64_t medium_dirty_at; /* ms of the first unpurged medium free */
  /* medium_purge_heap: medium_gen when it last looked, and when (ms) it
   * first saw that value */
  _Atomic uint64_t purge_gen, purge_gen_at;
  /* bumped (under medium_lock) by every free and shrink of a medium block
   * of this heap; read without the lock by realloc's hints and the purge */
  _Atomic uint64_t medium_gen;
  /* under medium_lock: bytes of medium blocks freed, less those allocated,
   * since free chunks were last purged: free memory still resident, which
   * small blocks may use (medium_small) */
  size_t medium_idle;
  /* Prompt return (purge.c, purge_prompt): what free memory must grow to,
   * in KiB of dirty pages and of medium_idle, less PROMPT_FLOOR_KIB, before
   * the owner looks again at whether the heap has become nearly empty */
  _Atomic uint32_t prompt_small, prompt_medium;
  void *checked; /* checked.c's per-heap state (quarantine); NULL until used */
  /* heapapi.c: first-class heaps (allot_heap_new) */
  uint64_t owner;  /* thread_uid() of the one thread that allocates */
  int first_class; /* made by allot_heap_new, not a thread's heap */
  /* prompt return: the ms (a multiple of 8, 32 bits) of the heap's last,
   * | PROMPT_OPEN while it has taken no memory since, | PROMPT_REFUSED once
   * a look found it nearly empty but too soon for the bound, | PROMPT_GAP
   * while the next look is the one the ratio test asked for (purge.c; in
   * what was padding) */
  _Atomic uint32_t prompt_state;
  /* prompt return, owner only: how many times the bound doubles, one more
   * each time the heap took memory again sooner than the bound after a
   * return (purge_prompt_took_slow) */
  uint8_t prompt_backoff;
  segment_t *large_segs; /* first-class: its live large blocks (medium_lock) */
  /* page_sweep_empty (page.c), owner only: when it looks next (ms), and the
   * classes whose one page it found empty when it last looked */
  uint64_t sweep_due, empty_seen;
  /* small and medium blocks other threads freed, counted in every mode on
   * the owner's slow path (the statistics' other counters are in `stats`,
   * below; introspect.c adds this one to them) */
  _Atomic size_t xfrees;
  page_list_t full[NCLASSES]; /* pages with no free block */
  /* Everything above lies on the heap's first OS page, which is all that a
   * thread touches whose pages never empty and which has no medium block
   * (its chunk heap is set up with its first medium region,
   * heap_chunks_ready): 8 threads with a few small blocks each hold 4 KiB
   * less apiece than when every heap touched two pages (session 13). */
  /* Free pages still resident, by the class each last held (under
   * seg_lock): a class needing a fresh page takes one of its own first. */
  page_list_t dirty_free[NCLASSES];
  /* Its regions are medium segments, whose chunks need 15 of the type's 40
   * rows of bins (heap_chunks_init): with dirty_free, the second page holds
   * them, and the rows past the 15th stay untouched (a heap touched 3 pages
   * with the whole table cleared before its locks). All zero until
   * heap_chunks_ready: a zeroed chunk heap has no free chunk and no region
   * (its lookups find nothing). */
  chunk_heap_t chunks;
  /* Statistics mode's counters (introspect.c): past what any other mode
   * touches. */
  heap_stats_t stats;
  /* Last, as only realloc touches them: the heap's last pages stay
   * untouched (not resident) until it does. */
  realloc_hint_t rhint[REALLOC_HINTS]; /* this thread's (api.c) */
} heap_t;
#define HEAP_CHUNK_ROWS 15 /* chunk_heap_init_sized(..., SEG_SIZE) */
_Static_assert(
    offsetof(heap_t, dirty_free) <= OS_PAGE,
    "a thread's lists, locks and counters fit its heap's first page");
_Static_assert(offsetof(heap_t, chunks.bins[HEAP_CHUNK_ROWS]) <= 2 * OS_PAGE,
               "a heap's free-page lists and medium bins fit its second page");

/* ---- process-wide state ----------------------------------------------- */
typedef struct allot_globals {
  uint64_t key;      /* link encoding secret */
  uint64_t mark_key; /* double-free mark secret */
  int initialized;
  long purge_delay_ms;
  int use_brk;
  int purge_thread; /* return memory from a background thread */
  /* Checked mode: every malloc and free goes through checked.c, which adds
   * statistics, debug fills or secure-mode checks. Fixed at start-up. */
  int slow_mode;
  int debug;
  int secure;   /* ALLOT_SECURE: guards, canaries, quarantine, random order */
  int valgrind; /* running under valgrind with client requests built in */
  /* options.c (docs/api.md has the table) */
  int stats;      /* statistics mode: exact counters, slow path */
  int show_stats; /* print statistics at exit: 1 text, 2 JSON */
  int verbose;
  int huge_pages; /* 0 off (MADV_NOHUGEPAGE), 1 on (MADV_HUGEPAGE), 2 auto */
  int purge_madv_free; /* ALLOT_PURGE_MADV: purge with MADV_FREE */
  int prof;            /* ALLOT_PROF: sampled heap profile (prof.c) */
  int prompt_return;   /* ALLOT_PROMPT_RETURN: purge.c's purge_prompt */
  int leak_report; /* ALLOT_LEAK_REPORT: debug mode's, 0 off, 1 lost, 2 all */
} allot_globals_t;

extern INTERNAL allot_globals_t g;
extern INTERNAL heap_t empty_heap;
extern INTERNAL page_t empty_page;
extern INTERNAL __thread heap_t *tls_heap;
/* The segment map: a byte per SEG_SIZE unit of the address space, the kind
 * of the segment that starts there (0: none of allot's), plus
 * SEGMAP_CHECKED while checked mode is on. free's fast path tests this one
 * byte for "a small block, default mode". 64 MiB of bss, of which only the
 * pages covering allot's segments are ever touched. */
#define SEGMAP_UNITS ((uintptr_t)1 << (VA_BITS - SEG_SHIFT))
#define SEGMAP_CHECKED 0x80u
extern INTERNAL _Atomic uint8_t segmap[SEGMAP_UNITS];
extern INTERNAL const uint32_t class_size[NCLASSES];
extern INTERNAL const uint8_t class_of_small[SMALL_MAX / 16 + 1];
#define SMALL_ALIGNS 9 /* 32 .. SMALL_MAX */
/* class_aligned's rows padded to a power of two: the row is a shift, not a
 * multiply by NCLASSES, on the aligned calls' inline path */
#define CLASS_ROW 64
_Static_assert(NCLASSES <= CLASS_ROW, "class_aligned rows hold every class");
extern INTERNAL const uint8_t class_aligned[SMALL_ALIGNS][CLASS_ROW];

/* ---- os.c ------------------------------------------------------------- */
INTERNAL void *os_map(size_t size); /* NULL on failure */
INTERNAL void *os_map_aligned(size_t size, size_t align);
INTERNAL void *os_reserve_aligned(size_t size, size_t align); /* PROT_NONE */
INTERNAL void os_unmap(void *p, size_t size);
INTERNAL void os_purge(void *p, size_t size);    /* contents may be lost */
INTERNAL void os_populate(void *p, size_t size); /* resident, written */
INTERNAL bool os_protect_none(void *p, size_t size);
/* secure mode: make part of a PROT_NONE reservation usable (counted as
 * mapped), and give back a reservation that was never committed */
INTERNAL bool os_commit(void *p, size_t size);
INTERNAL void os_unreserve(void *p, size_t size);
INTERNAL void *os_remap_fixed(void *old, size_t old_size, size_t new_size,
                              void *target);
INTERNAL bool os_remap_inplace(void *old, size_t old_size, size_t new_size);
INTERNAL uint64_t os_now_ms(void);
INTERNAL int os_cpus(void);   /* CPUs the process may run on, >= 1 */
INTERNAL void os_yield(void); /* sched_yield */
INTERNAL uint64_t os_random_seed(void);
INTERNAL void os_lock(os_lock_t *l);
/* Fork handlers (os.c): given once, registered with pthread_atfork when the
 * process is about to have a second thread (calloc's os_fork_check, below;
 * the locks' as a fallback). */
INTERNAL void os_fork_handlers(void (*prepare)(void), void (*parent)(void),
                               void (*child)(void));
INTERNAL void os_fork_arm(void);
#define FORK_ARMED 1
extern INTERNAL _Atomic int os_fork_state;
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
#define single_threaded() (__libc_single_threaded != 0)
#else
#define single_threaded() false /* no way to know: register at once */
#endif
/* The test calloc, os_lock and os_trylock make (os.c, "fork handlers"): a
 * load and a branch once they are registered, two of each while the process
 * is single-threaded. Acquire: a lock taken after it sees them registered
 * is taken after the registration. */
static ALWAYS_INLINE void os_fork_check(void) {
  if (unlikely(atomic_load_explicit(&os_fork_state, memory_order_acquire) !=
               FORK_ARMED) &&
      !single_threaded())
    os_fork_arm();
}
INTERNAL bool os_trylock(os_lock_t *l);
/* The executable segment holding `code` (a function of allot's): its bounds,
 * and whether it is a shared object's (liballot.so) rather than the
 * program's; for backtraces that drop allot's own frames. */
INTERNAL bool os_code_range(const void *code, uintptr_t *lo, uintptr_t *hi,
                            bool *shared);
/* libgcc's unwinder (os.c): NULL when liballot.so cannot find it. The
 * first call may load it (and allocate): make it outside malloc. */
struct dwarf_eh_bases;
typedef struct os_unwind {
  _Unwind_Reason_Code (*backtrace)(_Unwind_Trace_Fn fn, void *arg);
  _Unwind_Ptr (*get_ip)(struct _Unwind_Context *ctx);
  const void *(*find_fde)(void *pc, struct dwarf_eh_bases *bases);
} os_unwind_t;
INTERNAL const os_unwind_t *os_unwind(void);
INTERNAL void os_unlock(os_lock_t *l);
INTERNAL void os_lock_init(os_lock_t *l);
/* The fork handlers (heap.c) take every allot lock before fork, release
 * them in the parent and reset them in the child; the layers that own a
 * lock of their own give heap.c this, one call per phase. */
enum { FORK_PREPARE, FORK_PARENT, FORK_CHILD };
static inline void os_lock_fork(os_lock_t *l, int phase) {
  if (phase == FORK_PREPARE)
    os_lock(l);
  else if (phase == FORK_PARENT)
    os_unlock(l);
  else
    os_lock_init(l);
}
INTERNAL void os_brk_fork(int phase);  /* os.c: brk_lock */
INTERNAL void options_fork(int phase); /* options.c: allot_option_set's */
INTERNAL void heapapi_fork(int phase); /* heapapi.c: the spare heaps' */
#ifdef ALLOT_TEST_HOOKS
/* the test hooks' named locks (os.c, allot_test_lock) */
INTERNAL os_lock_t *options_test_lock(const char *name);
INTERNAL os_lock_t *heapapi_test_lock(const char *name);
INTERNAL os_lock_t *segments_test_lock(const char *name);
INTERNAL os_lock_t *large_test_lock(const char *name);
INTERNAL os_lock_t *heaps_test_lock(const char *name);
#endif
INTERNAL void os_write_err(const char *s);
INTERNAL void os_fmt_hex(char *out, uintptr_t v);
INTERNAL void os_fmt_dec(char *out, size_t v);
INTERNAL _Noreturn void fault(const char *fn, const char *what,
                              const void *addr);
INTERNAL void os_init(void);
/* One mapping per tier of liballot.so's code (os.c; the IFUNC resolver). */
INTERNAL BOOT_CODE void os_code_tiers(void);
INTERNAL int os_tier_threads(void), os_tier_medium(void), os_tier_rest(void),
    os_tier_cold(void);

typedef struct os_stats {
  _Atomic size_t mmaps, munmaps, purges, remaps;
  _Atomic uint64_t ns;        /* time in those calls (statistics mode) */
  _Atomic size_t mapped;      /* bytes currently mapped */
  _Atomic size_t mapped_peak; /* their peak */
} os_stats_t;
extern INTERNAL os_stats_t os_stats;

/* ---- segment.c -------------------------------------------------------- */
INTERNAL segment_t *segment_alloc(heap_t *h, int kind);
INTERNAL void segment_register(segment_t *s, int kind, size_t map_size);
INTERNAL void segment_register_moved(segment_t *s);
INTERNAL void segment_unregister(segment_t *s);
INTERNAL void segment_free(segment_t *s);
INTERNAL page_t *segment_page_alloc(heap_t *h, size_t cls);
/* Whether h has a free page that held class cls and is still resident. */
static inline bool segment_page_resident(heap_t *h, size_t cls) {
  return atomic_load_explicit(&h->dirty_classes, memory_order_relaxed) >> cls &
         1;
}
/* heap_absorb, both page locks held: from's small segments go to into */
INTERNAL void segment_move_all(heap_t *into, heap_t *from);
INTERNAL size_t segment_pages_in_use(heap_t *h);
INTERNAL void segment_page_free(heap_t *h, page_t *pg);
INTERNAL void segment_page_release(heap_t *h, page_t *pg); /* purged now */
INTERNAL uint64_t segment_purge_heap(heap_t *h, bool force);
INTERNAL uint64_t medium_purge_heap(heap_t *h, bool force);
INTERNAL void segment_collect_cache(bool force);
INTERNAL void segmap_set(const void *seg, size_t size, bool on);
/* after g.slow_mode changed at run time: re-mark every segment */
INTERNAL void segmap_refresh(void);
INTERNAL void segments_visit(void (*visit)(segment_t *s, void *arg), void *arg);
INTERNAL void segments_lock_all(void);
INTERNAL void segments_unlock_all(void);
INTERNAL void segments_reset_locks(void);
INTERNAL void *medium_malloc(heap_t *h, size_t size, size_t align);
INTERNAL void *medium_malloc_joined(heap_t *h, size_t size); /* page.c */
/* Small requests of this size and up may be cut from free medium chunks */
#define MEDIUM_SMALL_MIN 1024u
INTERNAL void *medium_cut(heap_t *h, size_t size, size_t idle);
/* Idle medium memory a class with no free block may use (segment.c) */
#define MEDIUM_SMALL_FREE ((size_t)1 << 20)
static inline void *medium_small(heap_t *h, size_t size) {
  return medium_cut(h, size, MEDIUM_SMALL_FREE);
}
static inline void *medium_large(heap_t *h, size_t size) {
  return medium_cut(h, size, size);
}
INTERNAL void chunk_fault_malloc(const char *what, const void *addr);
INTERNAL void medium_free(segment_t *s, void *p, const char *fn);
INTERNAL bool medium_resize(segment_t *s, void *p, size_t size);
INTERNAL bool medium_realloc(segment_t *s, void *p, size_t size, size_t *old,
                             realloc_hint_t *hint);
INTERNAL size_t medium_grow_size(size_t old, size_t size);
INTERNAL size_t medium_live_size(segment_t *s, const void *p);
INTERNAL void *zero_alloc(void);
INTERNAL void zero_free(segment_t *s, void *p, const char *fn);
INTERNAL bool zero_live(segment_t *s, const void *p);
/* the walk: a zero segment's bitmap, ZERO_WORDS words, bit i the block at
 * zero_block(s, i); returns the live blocks */
#define ZERO_WORDS ((SEG_SIZE - PAGE_SIZE) / 16 / 64)
INTERNAL size_t zero_snapshot(segment_t *s, uint64_t *bits);
static inline void *zero_block(segment_t *s, size_t i) {
  return (uint8_t *)s + PAGE_SIZE + i * 16;
}

/* ---- page.c ----------------------------------------------------------- */
/* size: the request's, which a medium chunk or a larger class's block may
 * serve; SIZE_MAX for an aligned request, which takes a block of the class
 * itself (its blocks have the alignment) */
INTERNAL void *page_malloc_slow(heap_t *h, size_t cls, size_t size);
INTERNAL void *page_alloc_block(heap_t *h, size_t cls);
INTERNAL void page_free_slow(heap_t *h, page_t *pg);
INTERNAL void page_free_full(heap_t *h, page_t *pg, block_t *b);
/* Put page pg of heap h on list q (Q_NONE, Q_AVAIL, Q_FULL) as far as its
 * fields say: free's fast path trusts avail_owner only while the page is
 * h's and available, and holds no sample of the heap profile. (Only the
 * owner adds samples, so none can appear between the test and the store;
 * the last may go meanwhile, and small_free_other then sets avail_owner.) */
static inline void page_set_queue(page_t *pg, struct heap *h, uint8_t q) {
  pg->queue = q;
  bool mine = q == Q_AVAIL &&
              !atomic_load_explicit(&pg->psamples, memory_order_relaxed);
  atomic_store_explicit(&pg->avail_owner, mine ? h : NULL,
                        memory_order_relaxed);
}
/* A page's cross-thread list is one word: the head block (user addresses
 * are below 2^48: the segment map covers no more) and the number of blocks
 * on the list, which each push adds one to in the same compare-and-swap. So
 * the owner takes the list over without walking it (page.c, take_xfree). */
#define XFREE_SHIFT 48
#define XFREE_ONE ((uintptr_t)1 << XFREE_SHIFT)
_Static_assert(XFREE_SHIFT >= VA_BITS, "xfree's count above every address");
_Static_assert(PAGE_SIZE / 16 < ((size_t)1 << (64 - XFREE_SHIFT)),
               "a page's blocks fit xfree's count");
static inline block_t *xfree_head(uintptr_t w) {
  return (block_t *)(w & (XFREE_ONE - 1));
}
static inline size_t xfree_count(uintptr_t w) {
  return (size_t)(w >> XFREE_SHIFT);
}
static inline uintptr_t xfree_word(const block_t *head, size_t count) {
  return (uintptr_t)head | ((uintptr_t)count << XFREE_SHIFT);
}
INTERNAL bool page_xfree(page_t *pg, block_t *b);
INTERNAL size_t page_collect_xfree(page_t *pg); /* blocks taken over */
INTERNAL void heap_collect_pages(heap_t *h, bool abandoning);
/* both heaps' page locks held by the caller */
INTERNAL void heap_absorb(heap_t *into, heap_t *from);
INTERNAL void heap_adopt_pages(heap_t *h);
INTERNAL uint64_t page_reclaim_heap(heap_t *h, uint64_t now);
INTERNAL void page_reclaim_locked(heap_t *h);

/* ---- large.c ---------------------------------------------------------- */
INTERNAL void *large_malloc(size_t size, size_t align, bool zero);
INTERNAL void large_free(segment_t *s, void *p, const char *fn);
INTERNAL void *large_realloc(segment_t *s, void *p, size_t size);
INTERNAL uint64_t large_collect(bool force);
INTERNAL size_t large_cached_bytes(void); /* a hint: read without the lock */
INTERNAL void large_cache_yield(size_t want); /* before a fresh segment */
/* checked mode's heap walk reads a live large block only between large_pin
 * (false: not live) and large_unpin; large_unpinned waits for that after
 * the block's state left LARGE_LIVE, before its memory changes */
INTERNAL bool large_pin(segment_t *s);
INTERNAL void large_unpin(segment_t *s);
INTERNAL void large_unpinned(segment_t *s);
INTERNAL void large_lock_all(void);
INTERNAL void large_unlock_all(void);
INTERNAL void large_reset_lock(void);

/* ---- purge.c ---------------------------------------------------------- */
INTERNAL void purge_notify(void);
INTERNAL void purge_want(void);
/* What a heap must hold to give back before the purge thread starts for it
 * (purge_want) */
#define PURGE_THREAD_MIN ((size_t)1 << 20)
INTERNAL void purge_maybe_start(void);
INTERNAL void purge_after_fork_child(void);
extern INTERNAL _Atomic int purge_start_wanted;
/* Prompt return (purge.c): the owner's frees of small pages and medium
 * blocks call these, on their slow paths, with no lock held. The marks are
 * kept less PROMPT_FLOOR_KIB, so that a heap's zeroed ones stand for the
 * least free memory worth a look: a program that never frees that much
 * never runs purge.c's code (its pages stay out of memory). */
#define PROMPT_FLOOR_KIB 256u
INTERNAL void purge_prompt(heap_t *h);
static ALWAYS_INLINE void purge_prompt_small(heap_t *h) {
  if (unlikely(
          atomic_load_explicit(&h->dirty_pages, memory_order_relaxed) *
              (PAGE_SIZE >> 10) >=
          (size_t)atomic_load_explicit(&h->prompt_small, memory_order_relaxed) +
              PROMPT_FLOOR_KIB))
    purge_prompt(h);
}
/* medium: idle is medium_idle, read under the lock by the caller */
static ALWAYS_INLINE bool purge_prompt_medium_due(heap_t *h, size_t idle) {
  return idle >> 10 >=
         (size_t)atomic_load_explicit(&h->prompt_medium, memory_order_relaxed) +
             PROMPT_FLOOR_KIB;
}
#define PROMPT_OPEN 1u
#define PROMPT_REFUSED 2u
#define PROMPT_GAP 4u
#define PROMPT_FLAGS (PROMPT_OPEN | PROMPT_REFUSED | PROMPT_GAP)
INTERNAL void purge_prompt_took_slow(heap_t *h, uint32_t st);
/* The heap takes memory: a prompt return's episode ends, or a look the
 * bound refused has to be made again (purge.c). */
static ALWAYS_INLINE void purge_prompt_took(heap_t *h) {
  uint32_t st = atomic_load_explicit(&h->prompt_state, memory_order_relaxed);
  if (unlikely(st & (PROMPT_OPEN | PROMPT_REFUSED)))
    purge_prompt_took_slow(h, st);
}
/* Start the purge thread if it is wanted; call only where allot holds no
 * lock, since pthread_create allocates. */
static inline void purge_poll(void) {
  if (__builtin_expect(
          atomic_load_explicit(&purge_start_wanted, memory_order_relaxed), 0))
    purge_maybe_start();
}
INTERNAL heap_t *heaps_first(void);

/* ---- checked.c: the checked (slow) mode's malloc and free ---------------- */
INTERNAL void *checked_malloc(heap_t *h, size_t cls, size_t size);
INTERNAL void *checked_alloc(size_t size, size_t align, bool zero);
INTERNAL void *checked_realloc(void *p, size_t size);
INTERNAL size_t checked_usable(const void *p, const char *fn);
INTERNAL void checked_free_sized(void *p, size_t align, size_t size,
                                 const char *fn);
INTERNAL void checked_free(void *p, const char *fn);
/* a live-looking block that is free but waits in checked mode's quarantine
 * (heap walks must not count it in use); the first problem checked mode
 * finds in the heap (canaries, writes after free), or NULL */
INTERNAL bool checked_quarantined(const void *p);
/* bytes (and blocks) of small and medium blocks in h's quarantine */
INTERNAL size_t checked_quarantine_bytes(const heap_t *h, size_t *blocks);
/* allot_heap_destroy: h's blocks in this thread's quarantine go back now */
INTERNAL void checked_heap_destroy(heap_t *h);
/* the walk: live block p's size as malloc_usable_size reports it (u: the
 * layers' usable size); reads only, never faults */
INTERNAL size_t checked_walk_size(const void *p, size_t u);
/* introspect.c: *out = the word at `at`, false if it cannot be read (never
 * faults: through the kernel) */
INTERNAL bool walk_read_word(const void *at, uint64_t *out);
INTERNAL const char *checked_verify(const void **where);
INTERNAL void checked_configure(bool stats);  /* end of option parsing */
INTERNAL void checked_thread_exit(heap_t *h); /* h: the exiting thread's */
INTERNAL void checked_fork_child(void); /* other threads' heaps orphaned */
/* secure mode's hooks into the layers (secure.c) */
INTERNAL void secure_segment_init(segment_t *s);
INTERNAL void secure_page_extend(page_t *pg);
INTERNAL segment_t *secure_large_map(size_t map_size, size_t align);
INTERNAL void secure_large_unmap(segment_t *s);
INTERNAL void *secure_pick(void *b);
INTERNAL uint32_t secure_random_below(uint32_t n);
/* api.c: usable size of a live block, faulting (as fn) on anything else */
INTERNAL size_t block_usable_size(const void *p, const char *fn);
INTERNAL void free_unchecked(void *p, const char *fn);

/* ---- heap.c ----------------------------------------------------------- */
INTERNAL heap_t *heap_init_thread(void);
INTERNAL bool heap_absorb_abandoned(heap_t *h);
/* For another thread's walk of heap h (checked.c): true, holding what keeps
 * threads from taking h over, if no thread owns h; heap_unhold then. */
INTERNAL bool heap_hold_unowned(heap_t *h);
INTERNAL void heap_unhold(void);
INTERNAL void allot_process_init(void);
INTERNAL heap_t *heap_new_detached(void); /* a fresh heap for allot_heap_new */
/* (Re)initialise h's chunk heap, with the bin rows its medium segments need */
INTERNAL void heap_chunks_init(heap_t *h);
/* Under h's medium_lock: its chunk heap set up if it is not yet. */
static inline void heap_chunks_ready(heap_t *h) {
  if (unlikely(!h->chunks.fl_count)) heap_chunks_init(h);
}

/* ---- prof.c: the sampled heap profile; every call is behind g.prof ------ */
INTERNAL void prof_configure(void); /* end of option parsing */
/* heap.c's fork handlers call these: the profiler's locks, taken first */
INTERNAL void prof_fork_prepare(void);
INTERNAL void prof_fork_parent(void);
INTERNAL void prof_fork_child(void);
/* out of line from prof_count_small / prof_count_medium (below) */
INTERNAL void *prof_small(void *p, page_t *pg, int64_t bytes, size_t cls);
/* debug mode's allocation sites through the profiler's unwinder (checked.c) */
INTERNAL bool prof_unwind_start(int frames);
INTERNAL int prof_unwind(uintptr_t *out, int max);
INTERNAL bool prof_unwind_checked(void);
INTERNAL void prof_medium(heap_t *h, void *p, size_t size);
INTERNAL void prof_large(void *p, size_t size);
/* medium and large frees (the caller tested prof_maybe_sample) */
INTERNAL void prof_free(void *p);
/* the free of a block of a page that counts samples (page_t.psamples) */
INTERNAL void prof_small_free(page_t *pg, void *p);
INTERNAL void prof_moved(void *from, void *to); /* large realloc moved p */

/* ---- options.c, introspect.c, heapapi.c (docs/api.md) ------------------ */
INTERNAL void options_init(void); /* ALLOT_* environment -> g; no allocation */
INTERNAL bool options_env_on(allot_option_t o); /* before options_init */
/* statistics mode: checked.c reports each block made and each block freed */
INTERNAL void stats_alloc(const void *p, size_t requested);
INTERNAL void stats_free(const void *p, size_t usable);
INTERNAL void stats_heap_retire(heap_t *h); /* fold counters, then zero */
INTERNAL uint64_t thread_uid(void);         /* unique per thread, never 0 */
/* a first-class heap's large blocks: large.c unlinks on free and around a
 * move (heap_large_unlink returns the owner it had, or NULL) */
INTERNAL heap_t *heap_large_unlink(segment_t *s);
INTERNAL void heap_large_link(heap_t *h, segment_t *s);
/* checked mode allocates from this heap instead of the thread's when set */
extern INTERNAL __thread heap_t *checked_heap;

/* ---- inline helpers ----------------------------------------------------- */
/* Doubly linked lists of pages (page.c's avail and full lists, segment.c's
 * dirty_free lists), under whichever lock guards the list. */
static inline void plist_push_front(page_list_t *l, page_t *pg) {
  pg->prev = NULL;
  pg->next = l->first;
  if (l->first)
    l->first->prev = pg;
  else
    l->last = pg;
  l->first = pg;
  l->count++;
}
static inline void plist_push_back(page_list_t *l, page_t *pg) {
  pg->next = NULL;
  pg->prev = l->last;
  if (l->last)
    l->last->next = pg;
  else
    l->first = pg;
  l->last = pg;
  l->count++;
}
static inline void plist_remove(page_list_t *l, page_t *pg) {
  if (pg->prev)
    pg->prev->next = pg->next;
  else
    l->first = pg->next;
  if (pg->next)
    pg->next->prev = pg->prev;
  else
    l->last = pg->prev;
  pg->next = pg->prev = NULL;
  l->count--;
}

/* Class of a size <= SMALL_MAX: one table load. */
static ALWAYS_INLINE size_t size_class(size_t size) {
  return class_of_small[(size + 15) >> 4];
}

static ALWAYS_INLINE uintptr_t link_encode(const block_t *next,
                                           const block_t *at) {
  return (uintptr_t)next ^ (uintptr_t)at ^ g.key;
}
static ALWAYS_INLINE block_t *link_decode(uintptr_t v, const block_t *at) {
  return (block_t *)(v ^ (uintptr_t)at ^ g.key);
}
static ALWAYS_INLINE uintptr_t free_mark(const void *b) {
  return (uintptr_t)b ^ g.mark_key;
}

static ALWAYS_INLINE segment_t *segment_of(const void *p) {
  return (segment_t *)(((uintptr_t)p - 1) & ~(uintptr_t)SEG_MASK);
}
/* The map's byte for seg: 0 for an address that is not the start of one of
 * allot's segments (non-canonical ones included). */
static ALWAYS_INLINE unsigned segmap_kind(const void *seg) {
  uintptr_t i = (uintptr_t)seg >> SEG_SHIFT;
  if (unlikely(i >= SEGMAP_UNITS)) return 0;
  return atomic_load_explicit(&segmap[i], memory_order_relaxed);
}
static ALWAYS_INLINE bool segmap_has(const void *seg) {
  return segmap_kind(seg) != 0;
}
/* seg's kind, SEG_SMALL ... SEG_ZERO, by the map alone (the same as its
 * header's kind, without loading the header); 0 for none of allot's. */
static ALWAYS_INLINE unsigned seg_kind(const void *seg) {
  return segmap_kind(seg) & ~SEGMAP_CHECKED;
}
static ALWAYS_INLINE uint8_t *page_start(const segment_t *s, const page_t *pg) {
  return (uint8_t *)s + ((size_t)(pg - s->pages) << PAGE_SHIFT);
}
/* pg, a free page of s, holds memory not yet purged (under the owner's
 * seg_lock). */
static inline bool segment_page_is_dirty(const segment_t *s, const page_t *pg) {
  return s->dirty_mask >> (pg - s->pages) & 1;
}
static inline void segment_page_dirty(segment_t *s, page_t *pg) {
  s->dirty_mask |= (uint64_t)1 << (pg - s->pages);
}
/* Bit i: page i of small segment s is in use (under the owner's seg_lock).
 * Page 0, the header, is never one. */
static inline uint64_t segment_pages_used_mask(const segment_t *s) {
  return ~s->free_pages & ~(uint64_t)1;
}
/* p's page descriptor in its small segment s: page_t is 128 bytes, so its
 * offset in the array is p's page bits moved down by PAGE_SHIFT - 7 (one
 * shift, one mask: free's fast path). */
_Static_assert(sizeof(page_t) == 128, "page_of assumes a 128-byte page_t");
static ALWAYS_INLINE page_t *page_of(const segment_t *s, const void *p) {
  return (page_t *)((const uint8_t *)s->pages +
                    (((uintptr_t)p >> (PAGE_SHIFT - 7)) &
                     ((uintptr_t)(PAGES_PER_SEG - 1) << 7)));
}

/* Pop a block from page pg's free list, checking that the decoded link
 * stays in the page; NULL when the list is empty. */
static ALWAYS_INLINE void *page_take(page_t *pg, const char *fn) {
  block_t *b = pg->free;
  if (unlikely(b == NULL)) return NULL;
  block_t *next = link_decode(b->next, b);
  if (unlikely((((uintptr_t)next ^ (uintptr_t)b) >> PAGE_SHIFT) && next))
    fault(fn, "corrupted free list", b);
  pg->free = next;
  /* The next malloc of the class pops `next`: a block freed long ago is
   * a cache miss there, and the load of its link held up nearly every
   * malloc of frag's refill phases (perf: 92 % of allot_malloc's samples on
   * the instruction after it). Started now, it overlaps the program's work
   * on b: frag 32 CPU 0.925x (21 interleaved rounds), one instruction more
   * a malloc. NULL is fine: a prefetch never faults. */
  __builtin_prefetch(next);
  pg->used++;
  b->mark = 0;
  return b;
}

/* Push block b back onto page pg's free list: the owner's free of a block
 * of its page outside the full list (h: the owner, the free fast path), and
 * the profiler's return of a held block. An emptied page may go back to its
 * segment (not the last of its class). */
static ALWAYS_INLINE void page_give(heap_t *h, page_t *pg, block_t *b) {
  uintptr_t mark = free_mark(b), next = link_encode(pg->free, b);
  /* opaque, so that the compiler stores the two words as two words rather
   * than building them in a vector register (3 more instructions, and the
   * mark computed twice) */
  __asm__("" : "+r"(next));
  b->mark = mark;
  b->next = next;
  pg->free = b;
  /* Not unlikely(used hits 0): that sent every free of a page's last live
   * block (each of micro pair's frees) through two taken branches, out to
   * the test and back to the return; inline, micro pair 40000000 runs in
   * 0.952x the CPU time (21 rounds), the other frees' taken branch goes to
   * the return instead (frag 32 0.973x, aligned 2000000 0.975x, bignum
   * 80000 1.008x: 15 rounds, within noise). */
  if (--pg->used == 0 && unlikely(h->avail[pg->cls].count > 1))
    page_free_slow(h, pg);
}

/* The malloc fast path: a block of class cls from the heap's current page. */
static ALWAYS_INLINE void *heap_alloc_class(heap_t *h, size_t cls, size_t size,
                                            const char *fn) {
  void *b = page_take(h->current[cls], fn);
  if (likely(b != NULL)) return b;
  return page_malloc_slow(h, cls, size);
}

/* Small class whose every block is align-aligned (align <= SMALL_MAX; pages
 * are 64 KiB-aligned, so a block size that is a multiple of align does it),
 * or 0 when none fits. */
static inline size_t aligned_class(size_t size, size_t align) {
  size_t need = (size + align - 1) & ~(align - 1);
  if (need > SMALL_MAX) return 0;
  if (align <= 16) return size_class(need ? need : 1);
  /* row log2(align) - 5, as one flat index (the - 5 rows fold into the
   * load's displacement) */
  return (&class_aligned[0][0])[(size_t)__builtin_ctzl(align) * CLASS_ROW +
                                size_class(need) - 5 * CLASS_ROW];
}

/* A buffer of a few OS pages aligned to 2 KiB or more (O_DIRECT I/O,
 * page-aligned tables): rounded up to its alignment above SMALL_MAX and at
 * most PAGED_ALIGNED_MAX, it comes from the classes past the sizes' (12 and
 * 16 KiB blocks, 4 KiB multiples, so every block of a 64 KiB page keeps the
 * alignment), or 0. A medium chunk costs such a request a leading gap cut
 * off and merged back, under the heap's lock: 840 instructions a malloc and
 * free against ~100 from a page (docs/performance.md, `aligned`). Plain
 * mallocs of these sizes stay medium, whose chunks fit them to 16 bytes. */
static inline size_t aligned_class_paged(size_t size, size_t align) {
  if (align < 2048 || size > PAGED_ALIGNED_MAX) return 0; /* need can't wrap */
  size_t need = (size + align - 1) & ~(align - 1);
  if (need <= SMALL_MAX || need > PAGED_ALIGNED_MAX) return 0;
  return need <= 12288 && align <= 4096 ? CLASSES_BY_SIZE : CLASSES_BY_SIZE + 1;
}

/* The small class an aligned request takes, or 0 (a medium or large
 * block); free_aligned_sized holds a small block to it. */
static inline size_t aligned_class_any(size_t size, size_t align) {
  return align <= SMALL_MAX && size <= SMALL_MAX
             ? aligned_class(size, align)
             : aligned_class_paged(size, align);
}

/* ---- prof.c's hooks, inlined into the slow paths (behind g.prof) ---------
 * prof_small_tls.left: bytes until the thread's next small sample;
 * prof_left_big: until its next medium or large one. A hook subtracts the
 * bytes it hands out and calls prof.c only when that reaches 0, and prof.c
 * adds them back and decides. Both are 0 before the thread's first call.
 * prof_small_tls.pending: the classes whose next refill is a small sample
 * (prof.c cut their lists there, and set the rest aside on the page's
 * cross-thread list): the refill takes that list over, and
 * page_collect_xfree hands it to prof_collect_xfree, which makes the hook
 * that follows call prof.c. */
typedef struct prof_small_tls {
  int64_t left;
  uint64_t pending;
} prof_small_tls_t;
extern INTERNAL __thread prof_small_tls_t prof_small_tls;
extern INTERNAL __thread int64_t prof_left_big;
/* The live samples' addresses, hashed to 2^16 slots: a slot's count
 * (prof.c), and its group of 32 slots' bit in prof_filter_sum, are not 0
 * while a live sample is there. A medium or large free tests the group's
 * bit: 256 bytes, which stay in the first-level cache, where the slots' 64
 * KiB were a cache miss at nearly every medium free of aligned (about 1 % of
 * its run time); prof_free reads the slot's. */
#define PROF_FILTER_BITS 16
#define PROF_FILTER_GROUP 5 /* log2 of the slots a group */
extern INTERNAL _Atomic uint64_t
    prof_filter_sum[((size_t)1 << (PROF_FILTER_BITS - PROF_FILTER_GROUP)) / 64];
/* page_collect_xfree, for a page of a pending class: word, the list taken */
INTERNAL size_t prof_collect_xfree(page_t *pg, uintptr_t word);
/* heap_collect_pages, first: the thread's cut lists in h's pages, whole */
INTERNAL void prof_uncut(heap_t *h);
/* page.c, for it: word taken over, a cut's list from cut on back whole */
INTERNAL size_t page_take_xfree(page_t *pg, uintptr_t word, block_t *cut,
                                size_t cut_n, block_t *tail);

static ALWAYS_INLINE size_t prof_filter_slot(const void *p) {
  return (size_t)(((uintptr_t)p * 0x9E3779B97F4A7C15ull) >>
                  (64 - PROF_FILTER_BITS));
}
/* A block being freed may be a sample (prof_free, prof_small_free decide) */
static ALWAYS_INLINE bool prof_maybe_sample(const void *p) {
  size_t grp = prof_filter_slot(p) >> PROF_FILTER_GROUP;
  return atomic_load_explicit(&prof_filter_sum[grp / 64],
                              memory_order_relaxed) >>
             (grp % 64) &
         1;
}
static ALWAYS_INLINE bool prof_is_pending(size_t cls) {
  return prof_small_tls.pending >> cls & 1;
}
/* left -= bytes, and whether it is still above 0: on x86-64 one
 * subtraction from memory, whose flags say it. */
static ALWAYS_INLINE bool prof_count_left(int64_t bytes) {
#if defined(__x86_64__) && defined(__GCC_ASM_FLAG_OUTPUTS__)
  bool more;
  uintptr_t at;
  __asm__("movq prof_small_tls@gottpoff(%%rip), %[at]\n\t"
          "subq %[b], %%fs:(%[at])"
          : [at] "=&r"(at), "=@ccg"(more)
          : [b] "r"(bytes)
          : "memory");
  return more;
#else
  return (prof_small_tls.left -= bytes) > 0;
#endif
}
/* The small slow path popped p from h->current[cls], whose list now goes
 * to the fast path: count p's block and the list's. That page is read, not
 * found from p (6 instructions less a refill). When it is empty_page its
 * bytes are 0: p is malloc(0)'s or a medium chunk's (medium_small's own
 * hook counts it), or h was empty_heap (the thread's first call, whose
 * countdown is 0) and prof_small finds p's page. p may also be a block
 * borrowed from a larger class's page (page_borrow): the class asking, cls,
 * tells prof_small so. No test of the pending classes: their refills come
 * to prof.c through prof_collect_xfree. */
static ALWAYS_INLINE void *prof_count_small(heap_t *h, size_t cls, void *p) {
  page_t *pg = h->current[cls];
  int64_t bytes = (int64_t)(pg->capacity - pg->used + 1) * pg->bsize;
  if (likely(prof_count_left(bytes))) return p;
  return prof_small(p, pg, bytes, cls);
}
/* prof_left_big -= size, and prof_medium when that reaches 0: on x86-64,
 * as above, a subtraction from memory (3 instructions a medium malloc). */
static ALWAYS_INLINE void prof_count_medium(heap_t *h, void *p, size_t size) {
#if defined(__x86_64__) && defined(__GCC_ASM_FLAG_OUTPUTS__)
  bool more;
  uintptr_t at;
  __asm__("movq prof_left_big@gottpoff(%%rip), %[at]\n\t"
          "subq %[b], %%fs:(%[at])"
          : [at] "=&r"(at), "=@ccg"(more)
          : [b] "r"((int64_t)size)
          : "memory");
  if (unlikely(!more)) prof_medium(h, p, size);
#else
  if (unlikely((prof_left_big -= (int64_t)size) <= 0)) prof_medium(h, p, size);
#endif
}

#endif
