/* purge.c: giving memory back to the OS when the program does not call us.
 *
 * Free pages, free medium chunks and cached large mappings are returned once
 * they have been unused for the purge delay. The owner thread does this in
 * its slow paths, but a program that frees a lot and then sleeps, or only
 * makes fast-path calls, would keep it all. So once there is memory to give
 * back, a background thread is started; it sleeps on a futex until the next
 * purge is due and exits when nothing is pending, so an idle program pays
 * nothing. It is started lazily, from a point in the slow paths where allot
 * holds no lock (pthread_create itself allocates), and again in a forked
 * child on demand. */
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
  if (atomic_load_explicit(&state, memory_order_seq_cst) == 0)
    atomic_store_explicit(&purge_start_wanted, 1, memory_order_relaxed);
}

/* Other threads freed into full pages of a heap whose owner may never come
 * back for them (page_xfree): start the thread if none runs. No wake-up: a
 * running thread sees the flags in its next pass, and one about to end
 * looks for them once more after it has said so (purge_main). */
void purge_notify_xwake(void) {
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

void purge_maybe_start(void) {
  int expected = 0;
  atomic_store_explicit(&purge_start_wanted, 0, memory_order_relaxed);
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

void purge_after_fork_child(void) {
  atomic_store(&state, 0);
  atomic_store(&purge_start_wanted, 1);
}
