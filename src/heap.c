/* heap.c: per-thread heaps, process start-up, thread exit and fork.
 *
 * Every thread allocates from its own heap, found through one initial-exec
 * TLS pointer that starts out at `empty_heap`, whose pages have no free
 * blocks, so the very first malloc of a thread falls into the slow path
 * without the fast path testing for it. Heap structures are never freed:
 * a heap whose thread exits is abandoned with its pages, then adopted whole
 * by the next new thread or absorbed page by page by a running one. */
#include "internal.h"

#include <pthread.h>
#include <sys/auxv.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* slow_mode until start-up has read the modes (checked_configure), so that
 * api.c's aligned and big paths learn of them with the one test they make */
INTERNAL allot_globals_t g = {.slow_mode = 1};
INTERNAL __thread heap_t *tls_heap = &empty_heap;

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||     \
    __has_feature(memory_sanitizer)
#define HEAP_EMPTY_INITIALISED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HEAP_EMPTY_INITIALISED 1
#endif
#ifdef HEAP_EMPTY_INITIALISED
/* These sanitizers instrument every store, and their runtimes are not ready
 * while the loader relocates: initialised data there (the sanitizer owns
 * malloc then, and allot runs beside it prefixed). */
INTERNAL heap_t empty_heap = {.current = {[0 ... NCLASSES - 1] = &empty_page}};
#else
/* Its current pages must be &empty_page before any malloc: other libraries'
 * constructors and the loader itself (once it has relocated every object)
 * may call one before allot's constructors run. As initialised data, the
 * 19 KiB heap and its 57 relocations made 4 more pages of liballot.so's
 * data resident in every process, and one more of its relocation table.
 * In .bss, its pointers are set by an IFUNC resolver instead, which the
 * loader runs while it relocates liballot.so (a static program: before its
 * C library starts up), so before anything can call malloc; the fast
 * path is the same. The resolver must not be instrumented (nothing of the
 * sanitizers' runtimes is ready then). A section of its own, so that the
 * linker script can put it after the variables a process writes: only its
 * first 456 bytes are written, and its size would push those that follow
 * onto another page. The same resolver splits the code's mapping by tiers
 * (os_code_tiers), before any code past the core has run. */
INTERNAL heap_t empty_heap __attribute__((section(".bss.allot_empty_heap")));

static void heap_empty_ready(void) {}

__attribute__((no_sanitize("undefined"),
               used)) static BOOT_CODE void (*heap_empty_fill(void))(void) {
  for (size_t i = 0; i < NCLASSES; i++)
    empty_heap.current[i] = &empty_page;
  /* the first code of liballot.so that runs: before any later tier's */
  os_code_tiers();
  return heap_empty_ready;
}

/* Hidden, not static: clang 14 makes a static IFUNC symbol global, and
 * exported. The reference below makes the linker emit its relocation. */
INTERNAL void heap_empty_hook(void) __attribute__((ifunc("heap_empty_fill")));
__attribute__((used)) static void (*const heap_empty_ref)(void) =
    heap_empty_hook;
#endif

static os_lock_t heaps_lock; /* guards the lists below */
#ifdef ALLOT_TEST_HOOKS
os_lock_t *heaps_test_lock(const char *name) {
  return strcmp(name, "heaps") ? NULL : &heaps_lock;
}
#endif
static heap_t *all_heaps;
/* Heaps with small pages and no thread, oldest first: a new thread adopts
 * the one abandoned longest ago, whose blocks have had the most time to come
 * back from the threads that held them, so it finds them free in pages
 * already formatted and resident. (Adopting the latest instead, larson's
 * threads took heaps whose blocks were still live elsewhere and touched
 * fresh pages: 34 k page faults and 38-41 MiB against 9-12 k and 21 MiB.) */
static heap_t *abandoned, *abandoned_last;
static heap_t *pooled; /* heaps with no small pages, no thread */
static _Atomic size_t abandoned_count;

/* Heap structures come from their own mappings, never from user pages. */
static uint8_t *meta_next, *meta_end;

static pthread_key_t thread_key;
static os_lock_t init_lock;
static _Atomic int init_state; /* 0 none, 1 core ready, 2 fully ready */

static void thread_done(void *arg);
static void fork_prepare(void);
static void fork_parent(void);
static void fork_child(void);
static void process_init_late(void);

/* The ALLOT_* environment (not read in set-user-ID programs), defaults for
 * the rest, then checked_configure: options.c holds the table. */
static void read_options(void) {
  options_init();
}

/* The part of start-up that makes allocation possible. It calls nothing that
 * could allocate. */
void allot_process_init(void) {
  if (atomic_load_explicit(&init_state, memory_order_acquire)) return;
  os_lock(&init_lock);
  if (!atomic_load_explicit(&init_state, memory_order_relaxed)) {
    os_init();
    g.key = os_random_seed() | 1;
    g.mark_key = os_random_seed() ^ (g.key << 7);
    read_options();
    pthread_key_create(&thread_key, thread_done);
    atomic_store_explicit(&init_state, 1, memory_order_release);
  }
  os_unlock(&init_lock);
  /* Not only at a thread's first heap (heap_init_thread): a program whose
   * calls so far made none -- large blocks, first-class heaps, options --
   * needs the fork handlers too (hostile_forkheld). What it allocates finds
   * init_state 1 and makes its heap without coming back here. */
  process_init_late();
}

/* Start-up steps that may themselves allocate: run once a heap exists. */
static void process_init_late(void) {
  static _Atomic int done;
  int expected = 0;
  if (!atomic_compare_exchange_strong(&done, &expected, 1)) return;
  os_fork_handlers(fork_prepare, fork_parent, fork_child);
  atomic_store_explicit(&init_state, 2, memory_order_release);
}

/* Only the rows of bins a medium segment's chunks reach (HEAP_CHUNK_ROWS of
 * 40, the first 2 KiB of the table's 5): the mapping is fresh, and the rows
 * past them are neither cleared nor read. Done with the heap's first medium
 * region (heap_chunks_ready). allot_heap_destroy re-initialises with the
 * same rows, since chunk_heap_absorb (allot_heap_delete) takes a heap into
 * one with at least as many. */
void heap_chunks_init(heap_t *h) {
  chunk_heap_init_sized(&h->chunks, g.key, SEG_SIZE);
  chunk_set_fault(&h->chunks, chunk_fault_malloc);
}

static heap_t *heap_new_struct(void) {
  /* Each from an OS page boundary: the fields a heap touches, from its start
   * to the last bin row its chunk heap uses, then span two pages (with
   * 64-byte rounding, a heap that started mid-page touched one more).
   * Still three to a 64 KiB mapping. */
  size_t sz = (sizeof(heap_t) + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  if (!meta_next || meta_next + sz > meta_end) {
    size_t chunk = 64 * 1024;
    if (chunk < sz) chunk = sz;
    uint8_t *m = os_map(chunk);
    if (!m) return NULL;
    meta_next = m;
    meta_end = m + chunk;
  }
  heap_t *h = (heap_t *)meta_next;
  meta_next += sz;
  /* No memset: the mapping is fresh (zero) and heap structures are never
   * freed. Clearing all 18 KiB made pages resident that only realloc's hints
   * or statistics mode would touch. */
  for (size_t i = 0; i < NCLASSES; i++)
    h->current[i] = &empty_page;
  /* the chunk heap waits for the first medium region (heap_chunks_ready):
   * a thread that has none touches only the heap's first page */
  os_lock_init(&h->medium_lock);
  os_lock_init(&h->seg_lock);
  os_lock_init(&h->page_lock);
  h->next_all = all_heaps;
  /* published for the purge thread, which walks the list without a lock */
  __atomic_store_n(&all_heaps, h, __ATOMIC_RELEASE);
  return h;
}

/* Threads holding a heap now (heap_wait_exiting reads it without the lock) */
static _Atomic size_t heaps_held;

/* Threads that come and go, each starting its successor just before it
 * exits (larson's chains, a server that replaces its workers): the new
 * thread is often run first, while its creator, preempted at the wake-up,
 * still holds its heap, and finding no heap abandoned it used to build one
 * of its own. On one CPU most creators waited like that: 20 heaps or more
 * for 4 chains, each with the memory of a thread's blocks (larson 400: peak
 * RSS 22-37 MB on one CPU, 16.7-19.6 MB on two, against jemalloc's 14 MB). So a
 * starting thread that finds no heap to adopt while more threads hold heaps
 * than the process has CPUs (so some of them are not running: waiting for
 * a CPU, blocked, or exiting) first yields the CPU, up to EXIT_WAIT_YIELDS
 * times, until a heap is abandoned: an exiting creator then finishes and
 * leaves it its heap (larson: 2 heaps on one CPU, 7.5 MB; 13.0-14.8 MB on
 * two; docs/memory.md, "Threads that come and go"). A yield returns at once
 * when nothing else can run on the CPU, and otherwise runs what can: the
 * thread's start is delayed, but no CPU time goes to waiting. */
#define EXIT_WAIT_YIELDS 8

static NOINLINE void heap_wait_exiting(void) {
  size_t cpus = (size_t)os_cpus();
  for (int i = 0; i < EXIT_WAIT_YIELDS; i++) {
    if (atomic_load_explicit(&abandoned_count, memory_order_relaxed) ||
        atomic_load_explicit(&heaps_held, memory_order_relaxed) <= cpus)
      return;
    os_yield();
  }
}

static heap_t *heap_acquire(void) {
  os_lock(&heaps_lock);
  if (!abandoned &&
      atomic_load_explicit(&heaps_held, memory_order_relaxed) > 1) {
    os_unlock(&heaps_lock);
    heap_wait_exiting();
    os_lock(&heaps_lock);
  }
  heap_t *h = abandoned;
  bool adopt = h != NULL;
  if (h) {
    abandoned = h->next_free;
    if (!abandoned) abandoned_last = NULL;
    atomic_fetch_sub(&abandoned_count, 1);
  } else if ((h = pooled)) {
    pooled = h->next_free;
  } else {
    h = heap_new_struct();
  }
  if (h) {
    h->next_free = NULL;
    __atomic_store_n(&h->state, HEAP_ACTIVE, __ATOMIC_RELAXED);
    atomic_fetch_add_explicit(&heaps_held, 1, memory_order_relaxed);
  }
  os_unlock(&heaps_lock);
  if (adopt) heap_adopt_pages(h);
  return h;
}

heap_t *heap_init_thread(void) {
  allot_process_init();
  /* the fork handlers' registration there may have allocated, and so made
   * this thread's heap already */
  if (tls_heap != &empty_heap) return tls_heap;
  heap_t *h = heap_acquire();
  if (!h) return NULL;
  /* atomic: allot_check and the statistics read it from other threads */
  __atomic_store_n(&h->owner, thread_uid(), __ATOMIC_RELAXED);
  tls_heap = h;
  pthread_setspecific(thread_key, h);
  if (atomic_load_explicit(&init_state, memory_order_acquire) < 2)
    process_init_late();
  return h;
}

/* A heap no thread uses, with no pages (allot_heap_new in heapapi.c, which
 * keeps its own list of destroyed heaps for reuse). */
heap_t *heap_new_detached(void) {
  allot_process_init();
  os_lock(&heaps_lock);
  heap_t *h = heap_new_struct();
  if (h) __atomic_store_n(&h->state, HEAP_ACTIVE, __ATOMIC_RELAXED);
  os_unlock(&heaps_lock);
  return h;
}

/* An exiting thread's heap goes to the end of the abandoned list, unless
 * it has (almost) no page in use: then to the front, to be adopted next with
 * its free pages resident. A thread descheduled between handing its blocks
 * to others and its exit may find them all freed by then (larson under
 * load: heaps with 36-42 free pages, nearly all the memory they had,
 * waiting behind a dozen others for the purge). One put back
 * (heap_absorb_abandoned could not lock it) goes to the front too. */
static void heap_release(heap_t *h, bool exiting) {
  uint64_t now = exiting ? os_now_ms() : 0;
  bool front = !exiting || segment_pages_in_use(h) <= 2;
  os_lock(&heaps_lock);
  if (exiting) atomic_fetch_sub_explicit(&heaps_held, 1, memory_order_relaxed);
  __atomic_store_n(&h->state, h->segs ? HEAP_ABANDONED : HEAP_POOLED,
                   __ATOMIC_RELAXED);
  if (h->segs) {
    if (exiting) h->abandoned_at = now;
    if (!front) {
      h->next_free = NULL;
      if (abandoned_last)
        abandoned_last->next_free = h;
      else
        abandoned = h;
      abandoned_last = h;
    } else {
      h->next_free = abandoned;
      abandoned = h;
      if (!abandoned_last) abandoned_last = h;
    }
    atomic_fetch_add(&abandoned_count, 1);
  } else {
    h->next_free = pooled;
    pooled = h;
  }
  os_unlock(&heaps_lock);
}

/* Thread exit: give back what can be given, leave the rest for others.
 * Empty pages are not purged at once but after the purge delay, like any
 * free page: a new thread adopting the heap meanwhile reuses them resident
 * (`threadchurn`: 90 000 page faults for 4000 threads when they were purged
 * at exit, 2 700 now). */
static void thread_done(void *arg) {
  heap_t *h = arg;
  if (!h || h == &empty_heap) return;
  if (unlikely(g.slow_mode)) checked_thread_exit(h); /* empty its quarantine */
  tls_heap = &empty_heap;
  heap_collect_pages(h, true);
  if (!g.purge_thread) segment_purge_heap(h, true);
  heap_release(h, true);
  purge_poll(); /* no lock held here: the purge thread may start */
}

/* Called from a running thread's slow path when it is about to ask for a
 * fresh page: adopt the pages of one abandoned heap instead. Only a heap
 * abandoned for a purge delay or more: a program that starts threads in
 * quick succession should have each new thread adopt an exited one's heap
 * whole, its free pages still resident, rather than a running thread take
 * the pages and leave the new thread to fault in fresh ones (`threadchurn`:
 * 29 MiB peak RSS against 11 MiB). */
bool heap_absorb_abandoned(heap_t *h) {
  /* never into a first-class heap: allot_heap_destroy would free the exited
   * thread's live blocks with it (test/hostile/pstress.c) */
  if (h->first_class) return false;
  if (!atomic_load_explicit(&abandoned_count, memory_order_relaxed))
    return false;
  uint64_t old = os_now_ms() - (uint64_t)g.purge_delay_ms;
  os_lock(&heaps_lock);
  heap_t **link = &abandoned, *from, *prev = NULL;
  while ((from = *link) && from->abandoned_at > old) {
    prev = from;
    link = &from->next_free;
  }
  if (from) {
    *link = from->next_free;
    if (abandoned_last == from) abandoned_last = prev;
    atomic_fetch_sub(&abandoned_count, 1);
    from->next_free = NULL;
  }
  os_unlock(&heaps_lock);
  if (!from) return false;
  /* The caller holds its own page lock; waiting for from's here could
   * deadlock with fork_prepare, which takes them in list order. */
  if (!os_trylock(&from->page_lock)) {
    heap_release(from, false);
    return false;
  }
  heap_absorb(h, from);
  os_unlock(&from->page_lock);
  heap_release(from, false);
  return true;
}

/* A thread takes a heap no thread owns only under heaps_lock (heap_acquire;
 * heap_absorb_abandoned takes it off the list under it too, then moves its
 * segments under their seg_lock, which a walk holds while it reads them).
 * So a walk of such a heap holds heaps_lock: a check that chose the heap and
 * walked it while a new thread took it over read its pages' free lists as
 * the owner changed them ("corrupted free list": hostile_adoptwalk). A walk
 * takes h's seg_lock and medium_lock under it, in fork_prepare's order.
 * Threads that start or exit meanwhile wait for the walk of one heap. */
bool heap_hold_unowned(heap_t *h) {
  os_lock(&heaps_lock);
  int state = __atomic_load_n(&h->state, __ATOMIC_RELAXED);
  if (state == HEAP_ABANDONED || state == HEAP_POOLED) return true;
  os_unlock(&heaps_lock);
  return false;
}

void heap_unhold(void) {
  os_unlock(&heaps_lock);
}

/* ---- fork ---------------------------------------------------------------
 * Every lock is taken before fork so the child starts with consistent
 * shared state. In the child the other threads are gone mid-flight: their
 * heaps are orphaned (kept, never reused), since their owner-only lists
 * may be half updated; frees into their pages still work. */
heap_t *heaps_first(void) {
  return __atomic_load_n(&all_heaps, __ATOMIC_ACQUIRE);
}

static void fork_prepare(void) {
  /* allot_option_set's lock first: it takes others while it holds it */
  options_fork(FORK_PREPARE);
  prof_fork_prepare(); /* its lock is taken before allot's, as it allocates */
  /* Page locks first, since an owner holding its own may wait for
   * heaps_lock (heap_absorb_abandoned); again if a heap was made meanwhile. */
  for (;;) {
    heap_t *snap = heaps_first();
    for (heap_t *h = snap; h; h = h->next_all)
      os_lock(&h->page_lock);
    os_lock(&heaps_lock);
    if (all_heaps == snap) break;
    os_unlock(&heaps_lock);
    for (heap_t *h = snap; h; h = h->next_all)
      os_unlock(&h->page_lock);
  }
  for (heap_t *h = all_heaps; h; h = h->next_all) {
    os_lock(&h->medium_lock);
    os_lock(&h->seg_lock);
  }
  large_lock_all();
  segments_lock_all();
  /* last: nothing is taken while these are held */
  heapapi_fork(FORK_PREPARE);
  os_brk_fork(FORK_PREPARE);
}

static void fork_parent(void) {
  os_brk_fork(FORK_PARENT);
  heapapi_fork(FORK_PARENT);
  segments_unlock_all();
  large_unlock_all();
  for (heap_t *h = all_heaps; h; h = h->next_all) {
    os_unlock(&h->seg_lock);
    os_unlock(&h->medium_lock);
  }
  for (heap_t *h = all_heaps; h; h = h->next_all)
    os_unlock(&h->page_lock);
  os_unlock(&heaps_lock);
  prof_fork_parent();
  options_fork(FORK_PARENT);
}

static void fork_child(void) {
  os_brk_fork(FORK_CHILD);
  heapapi_fork(FORK_CHILD);
  segments_reset_locks();
  large_reset_lock();
  if (unlikely(g.slow_mode)) checked_fork_child(); /* before states change */
  for (heap_t *h = all_heaps; h; h = h->next_all) {
    os_lock_init(&h->medium_lock);
    os_lock_init(&h->seg_lock);
    os_lock_init(&h->page_lock);
    if (h->state == HEAP_ACTIVE && h != tls_heap) h->state = HEAP_ABANDONED;
  }
  os_lock_init(&heaps_lock);
  /* the other threads' heaps are orphaned, not held */
  atomic_store_explicit(&heaps_held, tls_heap != &empty_heap,
                        memory_order_relaxed);
  purge_after_fork_child();
  prof_fork_child();
  options_fork(FORK_CHILD);
}
