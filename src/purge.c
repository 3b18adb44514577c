/* purge.c: giving memory back to the OS after the purge delay, also when the
 * program does not call us, and at once when a heap is left nearly empty.
 *
 * Free pages, free medium chunks and cached large mappings are returned once
 * they have been unused for the purge delay. The owner thread does this in
 * its slow paths, but a program that frees a lot and then sleeps, or only
 * makes fast-path calls, would keep it all. So once there is memory to give
 * back, a background thread is started; it sleeps on a futex until the next
 * purge is due and exits when nothing is pending, so an idle program pays
 * nothing. It is started lazily, from a point in the slow paths where allot
 * holds no lock (pthread_create itself allocates), and again in a forked
 * child on demand.
 *
 * Also prompt return (below): a heap its owner's frees leave nearly empty
 * gives its free memory back at once, without waiting for the delay. */
#include "internal.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

INTERNAL _Atomic int purge_start_wanted;
static _Atomic int state;         /* 0 none, 1 starting, 2 running */
static _Atomic uint32_t wake_seq; /* futex word: bumped by every notify */

void purge_notify(void) {
  if (!g.purge_thread) return;
  /* The bump tells a thread that is about to exit (below) to stay. A pending
   * timed sleep already ends before anything new is due (every delay is the
   * same length), so no wake-up is needed. */
  atomic_fetch_add_explicit(&wake_seq, 1, memory_order_seq_cst);
  purge_want();
}

/* Start the thread if none runs (purge_maybe_start decides whether a
 * single-threaded program gets it): memory to give back (purge_notify), a
 * heap's free memory grown to PURGE_THREAD_MIN (page_free_as, medium_free),
 * or other threads freed into full pages of a heap whose owner may never
 * come back for them (page_xfree). No wake-up: a running thread sees the
 * memory or the flags in its next pass, and one about to end looks for the
 * flags once more after it has said so (purge_main). */
void purge_want(void) {
  if (g.purge_thread && atomic_load_explicit(&state, memory_order_seq_cst) == 0)
    atomic_store_explicit(&purge_start_wanted, 1, memory_order_relaxed);
}

static bool xwake_pending(void) {
  for (heap_t *h = heaps_first(); h; h = h->next_all)
    if (atomic_load_explicit(&h->xwake, memory_order_seq_cst)) return true;
  return false;
}

static uint64_t purge_pass(void) {
  uint64_t next = UINT64_MAX, due, now = os_now_ms();
  for (heap_t *h = heaps_first(); h; h = h->next_all) {
    due = page_reclaim_heap(h, now);
    if (due < next) next = due;
    due = segment_purge_heap(h, false);
    if (due < next) next = due;
    due = medium_purge_heap(h, false);
    if (due < next) next = due;
  }
  due = large_collect(false);
  if (due < next) next = due;
  return next;
}

/* How long the thread waits with nothing to do before it ends: long enough
 * that a program freeing in bursts does not start a thread per burst. */
#define IDLE_EXIT_MS 1000

static void *purge_main(void *arg) {
  (void)arg;
  bool idle = false;
  for (;;) {
    uint32_t seq = atomic_load_explicit(&wake_seq, memory_order_seq_cst);
    uint64_t next = purge_pass();
    if (next == UINT64_MAX && !idle) {
      idle = true;
      struct timespec ts = {IDLE_EXIT_MS / 1000,
                            (IDLE_EXIT_MS % 1000) * 1000000L};
      syscall(SYS_futex, &wake_seq, FUTEX_WAIT_PRIVATE, seq, &ts, NULL, 0);
      continue;
    }
    if (next == UINT64_MAX) {
      /* Still nothing to give back: end the thread rather than sleep, so an
       * idle program has no extra thread and a program whose main thread
       * calls pthread_exit can still end. The next notify starts a new one;
       * one that came during the pass keeps this one going. */
      idle = false;
      atomic_store_explicit(&state, 0, memory_order_seq_cst);
      int running = 0;
      if ((atomic_load_explicit(&wake_seq, memory_order_seq_cst) != seq ||
           xwake_pending()) &&
          atomic_compare_exchange_strong(&state, &running, 2))
        continue;
      return NULL;
    } else {
      idle = false;
      uint64_t now = os_now_ms();
      uint64_t ms = next > now ? next - now : 0;
      /* the coarse clock advances in ticks of a few ms */
      ms += 5;
      struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
      syscall(SYS_futex, &wake_seq, FUTEX_WAIT_PRIVATE, seq, &ts, NULL, 0);
    }
  }
  return NULL;
}

/* Whether the thread is worth starting. A single-threaded program's first
 * thread costs it the thread's stack and the C library's thread code, which
 * nothing else made resident (logicmin 800: 140 kB at its peak, 3392
 * against 3252 kB with ALLOT_PURGE_THREAD=0): more than the thread would
 * give back below PURGE_THREAD_MIN, which stays until the owner's slow
 * paths (free pages), a prompt return or malloc_trim. So such a program
 * gets it only while its heaps hold that much to give back (read now: a
 * prompt return's collection wants the thread on its way, then purges at
 * once). No other thread runs, so the counters can be read as they are. */
static bool purge_worth_a_thread(void) {
  if (!single_threaded()) return true;
  size_t bytes = large_cached_bytes();
  for (heap_t *h = heaps_first(); h; h = h->next_all)
    bytes += atomic_load_explicit(&h->dirty_pages, memory_order_relaxed) *
                 PAGE_SIZE +
             h->medium_idle;
  return bytes >= PURGE_THREAD_MIN;
}

void purge_maybe_start(void) {
  int expected = 0;
  atomic_store_explicit(&purge_start_wanted, 0, memory_order_relaxed);
  if (!purge_worth_a_thread()) return;
  if (!atomic_compare_exchange_strong(&state, &expected, 1)) return;
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  if (pthread_create(&t, &attr, purge_main, NULL) == 0)
    atomic_store(&state, 2);
  else
    atomic_store(&state, 0); /* try again at the next notify */
  pthread_attr_destroy(&attr);
}

/* ---- prompt return --------------------------------------------------------
 *
 * The purge delay keeps freed memory resident so that a program that frees
 * and allocates again finds it there. A program that frees nearly all it
 * holds and goes on to something else (prints its result and exits, in most
 * of the suite's workloads) would keep it all for the delay: glibc's malloc
 * gives the top of its heap back at the free instead, and where the program
 * touches other memory after the frees (libc's printing and exit code, 300
 * to 550 kB of file pages), allot's peak came at exit, with the freed heap
 * still resident (docs/memory.md, "Prompt return").
 *
 * So when the owner's frees leave its heap nearly empty -- its free resident
 * memory at least PROMPT_RATIO times what it still holds, and at least
 * PROMPT_MIN -- the owner gives the free memory back at once. Bounds on
 * what that costs a program that frees and allocates again in cycles (which
 * faults the memory in anew after each return): only heaps of PROMPT_MAX
 * free bytes or less, and once a PROMPT_INTERVAL delays at most (doubled
 * after a return whose memory the heap took back within it), unless the
 * heap has taken no memory since its last return (the frees that follow in
 * the same episode give back what they free, a PROMPT_STEP at a time). At
 * 32 MiB a second, refaulting costs at most about 2 % of a CPU by the
 * fault-in alone, about 9 % by what logicmin's returns below cost. (Not a
 * bound on bytes a second instead, which would let a small heap return
 * more often: `logicmin`, whose 800 functions each empty a heap of about
 * 1.2 MiB, returned 20 times instead of once and faulted 7 843 pages
 * instead of 1 428, 1.09x its CPU time.)
 *
 * What the heap holds: the carved bytes of its small pages with live blocks
 * (counted per segment as they are carved), the bytes of its live medium
 * chunks. What is free and resident: its dirty free pages (as far as they
 * were touched), its empty pages still in the available lists, and
 * medium_idle. Looked at on the owner's slow paths of
 * free (a page retired, a medium block freed) each time free memory has
 * grown by a step since the last look (purge_prompt_small,
 * purge_prompt_medium_due), or by what it must still free to pass the
 * ratio test if that is less, so a heap being emptied is looked at
 * O(log n) times plus once a PROMPT_STEP, and at the free that empties it
 * enough. */
#define PROMPT_MIN ((size_t)PROMPT_FLOOR_KIB << 10)
#define PROMPT_STEP ((size_t)256 << 10)
#define PROMPT_MAX ((size_t)32 << 20)
#define PROMPT_RATIO 4
#define PROMPT_INTERVAL 20   /* purge delays */
#define PROMPT_BACKOFF_MAX 6 /* the bound doubled: 64 intervals at most */

/* How long after its last return a heap may return again (ms): the
 * interval, doubled for each return it took back within the bound
 * (purge_prompt_took_slow). */
static uint64_t prompt_bound(const heap_t *h) {
  return (uint64_t)g.purge_delay_ms * PROMPT_INTERVAL << h->prompt_backoff;
}

/* The mark free memory must reach before the next look (KiB, less
 * PROMPT_FLOOR_KIB: internal.h): a step more than now, or gap more if that
 * is less (what the heap must still free to pass the ratio test). */
static size_t prompt_stepsize(size_t now) {
  return now / 8 > PROMPT_STEP ? now / 8 : PROMPT_STEP;
}
static uint32_t prompt_step(size_t now, size_t gap) {
  size_t step = prompt_stepsize(now);
  size_t next = (now + (gap < step ? gap : step)) >> 10;
  next = next > PROMPT_FLOOR_KIB ? next - PROMPT_FLOOR_KIB : 0;
  return next > UINT32_MAX ? UINT32_MAX : (uint32_t)next;
}

/* Bytes free and resident, and held, in h's small pages, from its
 * segments' counts; false if they are more than PROMPT_MAX bytes of
 * segments. Each class's last page, kept in its list when it empties
 * (page_retire), counts as free: heap_collect_pages gives it back. */
static bool prompt_small_bytes(heap_t *h, size_t *free_b, size_t *held) {
  size_t segs = 0;
  os_lock(&h->seg_lock);
  for (segment_t *s = h->segs; s; s = s->hnext) {
    if (++segs > PROMPT_MAX / SEG_SIZE + 1) break;
    *held +=
        atomic_load_explicit(&s->carved, memory_order_relaxed) - s->uncarved;
    *free_b += s->dirty_bytes;
  }
  os_unlock(&h->seg_lock);
  if (segs > PROMPT_MAX / SEG_SIZE + 1) return false;
  for (size_t cls = 1; cls < NCLASSES; cls++) {
    const page_t *pg = h->avail[cls].first;
    if (!pg || pg->used) continue;
    size_t carved = (size_t)pg->capacity * pg->bsize;
    *held -= carved < *held ? carved : *held;
    *free_b += carved;
  }
  return true;
}

void purge_prompt(heap_t *h) {
  size_t small_now =
      atomic_load_explicit(&h->dirty_pages, memory_order_relaxed) * PAGE_SIZE;
  if (h->first_class) { /* never: its memory is its owner's to keep */
    atomic_store_explicit(&h->prompt_small, UINT32_MAX, memory_order_relaxed);
    atomic_store_explicit(&h->prompt_medium, UINT32_MAX, memory_order_relaxed);
    return;
  }
  if (h != tls_heap) return;
  uint32_t now = (uint32_t)os_now_ms() & ~PROMPT_FLAGS,
           st = atomic_load_explicit(&h->prompt_state, memory_order_relaxed);
  bool may =
      __atomic_load_n(&g.prompt_return, __ATOMIC_RELAXED) && !g.slow_mode;
  size_t free_b = 0, held = 0, idle;
  bool small_ok = may && prompt_small_bytes(h, &free_b, &held);
  os_lock(&h->medium_lock);
  idle = h->medium_idle;
  /* a heap with no medium region has no medium block, and its chunk heap
   * lies on a page it has not touched (a read alone can make it resident:
   * docs/memory.md, session 23) */
  if (h->medium_segs) held += h->chunks.used_bytes;
  os_unlock(&h->medium_lock);
  free_b += idle;
  uint32_t last = st & ~PROMPT_FLAGS;
  bool due =
      (st & PROMPT_OPEN) || !last || (uint32_t)(now - last) >= prompt_bound(h);
  bool empty = small_ok && free_b >= PROMPT_MIN && free_b <= PROMPT_MAX &&
               free_b >= PROMPT_RATIO * held;
  if (!empty || !due) {
    /* a heap being emptied passes the ratio test after (R * held - free) /
     * (R + 1) more bytes are freed: the next look comes there if that is
     * less than a step, so the frees that end an emptying are not left
     * without a look (each free adds to free what it takes from held);
     * not twice in a row, so that a heap whose free memory goes up and
     * down near the ratio is not looked at on every free */
    size_t gap = SIZE_MAX;
    if (small_ok && free_b <= PROMPT_MAX && free_b < PROMPT_RATIO * held &&
        !(st & PROMPT_GAP))
      gap = (PROMPT_RATIO * held - free_b) / (PROMPT_RATIO + 1) + 1;
    uint32_t nst = st & ~PROMPT_GAP;
    if (empty) /* looked at again once it takes memory (purge_prompt_took) */
      nst |= PROMPT_REFUSED;
    if (gap < prompt_stepsize(small_now) || gap < prompt_stepsize(idle))
      nst |= PROMPT_GAP;
    if (nst != st)
      atomic_store_explicit(&h->prompt_state, nst, memory_order_relaxed);
    atomic_store_explicit(&h->prompt_small, prompt_step(small_now, gap),
                          memory_order_relaxed);
    atomic_store_explicit(&h->prompt_medium, prompt_step(idle, gap),
                          memory_order_relaxed);
    return;
  }
  heap_collect_pages(h, false); /* its empty pages, classes' last ones too */
  segment_purge_heap(h, true);
  medium_purge_heap(h, true);
  atomic_store_explicit(&h->prompt_state, (now ? now : 8) | PROMPT_OPEN,
                        memory_order_relaxed);
  atomic_store_explicit(&h->prompt_small, 0, memory_order_relaxed);
  atomic_store_explicit(&h->prompt_medium, 0, memory_order_relaxed);
}

/* The heap takes memory (purge_prompt_took). After a look the bound refused,
 * the marks fall back to the floor, so that the heap's next emptying is
 * looked at, not only one that frees a step more than the refused one had.
 * After a return, the first memory it takes says whether the return was
 * worth its page faults: taken again within the bound, the memory went
 * back only to be faulted in anew (a program that empties its heap and
 * fills it again in cycles, as the python workload's rounds do), and the
 * bound for the next return doubles, up to PROMPT_BACKOFF_MAX times; taken
 * later, it is one again. */
void purge_prompt_took_slow(heap_t *h, uint32_t st) {
  if (st & PROMPT_REFUSED) {
    atomic_store_explicit(&h->prompt_small, 0, memory_order_relaxed);
    atomic_store_explicit(&h->prompt_medium, 0, memory_order_relaxed);
  }
  if (st & PROMPT_OPEN) {
    uint32_t now = (uint32_t)os_now_ms() & ~PROMPT_FLAGS,
             last = st & ~PROMPT_FLAGS;
    if ((uint32_t)(now - last) >= prompt_bound(h))
      h->prompt_backoff = 0;
    else if (h->prompt_backoff < PROMPT_BACKOFF_MAX)
      h->prompt_backoff++;
  }
  atomic_store_explicit(&h->prompt_state, st & ~(PROMPT_OPEN | PROMPT_REFUSED),
                        memory_order_relaxed);
}

void purge_after_fork_child(void) {
  atomic_store(&state, 0);
  atomic_store(&purge_start_wanted, 1);
}
