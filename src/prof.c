/* prof.c: the sampled heap profile (ALLOT_PROF=1, run by `allot prof`).
 *
 * Owns the sampling decision, the sampled blocks' records, the per-stack
 * totals with their peak snapshot, and the profile written at exit. Nothing
 * is added to the malloc and free fast paths: bytes are counted where the
 * slow paths hand memory out (a small page's blocks when they are given to
 * the fast path, each medium and large allocation), against per-thread
 * countdowns drawn from an exponential distribution (mean ALLOT_PROF_RATE,
 * 512 KiB), so the sampled bytes form a Poisson process over the bytes
 * counted. The counting is inlined into those slow paths (internal.h:
 * prof_count_small, prof_count_medium), a subtraction from a thread-local
 * countdown; this file is called when one ends. A sampled small block stays
 * the block of its page that the malloc took; its page counts its live
 * samples (psamples), and while it has any, free's fast path does not take
 * the page's blocks (page_set_queue), so their frees reach prof_small_free.
 * The frees of medium and large blocks test a counting filter over the
 * samples' addresses, and only on a hit take the lock and look the block
 * up. Each sample keeps its stack and the weight size / P(sampled), so the
 * sums are unbiased estimates (docs/tools.md). Tables live in os_map'd
 * memory or .bss: this file never calls malloc. */
#include "internal.h"

#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <time.h>
#include <unistd.h>
#include <unwind.h>

#define PROF_FRAMES 64
#define PROF_RATE_DEFAULT ((int64_t)512 << 10)

/* ---- state ------------------------------------------------------------- */

typedef struct pstack {
  uint64_t hash;
  uintptr_t *frames;
  uint32_t depth;
  int64_t live, live_n;   /* estimated live bytes, live samples */
  int64_t snap, snap_n;   /* the same when snapshot `epoch` was taken */
  uint64_t epoch;         /* the snapshot current when live last changed */
  int64_t total, total_n; /* estimated bytes allocated, samples taken */
} pstack_t;

typedef struct psample {
  uintptr_t addr; /* 0: empty slot */
  uint32_t stack;
  int64_t weight;
} psample_t;

/* A cut's list set aside on its page's cross-thread list (cut), kept so
 * that it comes back whole (prof_collect_xfree): rest, n blocks, behind
 * whatever other threads push in front of it; tail: the last block the cut
 * left on the page's free list, or NULL. */
typedef struct pcut {
  page_t *pg; /* NULL: a free slot */
  block_t *tail, *rest;
  uint32_t n;
} pcut_t;
/* Cuts kept a thread: one cut while all are taken has its list walked by
 * the allocator, as any cross-thread list. */
#define CUTS 8

/* The countdowns themselves, and the classes whose next slow-path malloc
 * is a sample, are prof_small_tls and prof_left_big (internal.h), which the
 * hooks read inline. */
typedef struct pthread_state {
  uint64_t rng; /* xorshift64* */
  int init, busy;
  int big;    /* prof_left_big drawn (at its first medium or large) */
  int forced; /* prof_collect_xfree saved the countdown in forced_left */
  int64_t forced_left;
  /* the page whose kept cut list prof_collect_xfree took back since the
   * last hook: a borrower's block from it may be the lender's sample */
  page_t *taken;
  uint32_t next_cut; /* the slot taken when none is free */
  uint32_t ncuts;    /* slots in use */
  /* lists cut, and of them taken back whole, not yet in cut_lists and
   * cut_lists_whole (cuts_fold) */
  uint32_t cuts_n, whole_n;
  pcut_t cuts[CUTS];
} pthread_state_t;

static __thread pthread_state_t T;
INTERNAL __thread prof_small_tls_t prof_small_tls;
INTERNAL __thread int64_t prof_left_big;

static int64_t rate = PROF_RATE_DEFAULT;
static char out_path[1024];
static _Atomic int ready;          /* the constructor ran with ALLOT_PROF set */
static uintptr_t self_lo, self_hi; /* allot's code: leading frames skipped */
static const os_unwind_t *uw;      /* libgcc's unwinder, found by prof_start */
static os_lock_t lock;             /* guards everything below */

static pstack_t *stacks;
static size_t nstacks, stacks_cap;
static uint32_t *stack_index; /* stack id + 1, open addressing */
static size_t index_cap;
static psample_t *samples;
static size_t nsamples, samples_cap;
static uint8_t *arena_next, *arena_end; /* frames of the stacks */
static int64_t class_weight[NCLASSES];  /* a class's samples' (tables_init) */
/* The filter over the addresses of live samples (internal.h): a free whose
 * group bit is clear is no sample, known without the lock; else prof_free
 * reads the slot's count, the samples it holds (one that reached 255 stays
 * there), also without the lock. Under lock: the counts, and the group bits.
 * A group's 32 counts are half a line, the slot's own: a group whose last
 * sample goes is found empty there, without a count of the group's slots in
 * use (a table of its own, another line at each record and each free of a
 * sample). (A group's bit left on until a free found the group empty, to
 * spare the record and the free the group's count, sent a free to that test
 * about 6 000 times in aligned 300000 instead of 1 300: more instructions,
 * not fewer.) In .bss: untouched, and so not resident, unless profiling. */
#define FILTER_SLOTS ((size_t)1 << PROF_FILTER_BITS)
#define GROUP_SLOTS ((size_t)1 << PROF_FILTER_GROUP)
INTERNAL _Alignas(64) _Atomic uint64_t
    prof_filter_sum[(FILTER_SLOTS / GROUP_SLOTS) / 64];
static _Alignas(4096) _Atomic uint8_t filter_count[FILTER_SLOTS];
_Static_assert(GROUP_SLOTS == 32, "a group's counts are four words");

static int64_t live_total, peak_total;
static uint64_t epoch; /* snapshots taken */
static uint64_t start_ns, start_ticks, peak_ticks, busy_ticks;
static uint64_t taken, dropped;
/* lists cut (cut), and those of them taken back whole (page_take_xfree):
 * counted by each thread, and added here under lock at its next small
 * sample, the sample the cut was for (two atomic operations a small
 * sample fewer), at its exit (prof_uncut) and at the profile's. */
static uint64_t cut_lists, cut_lists_whole;
static ALWAYS_INLINE void cuts_fold(pthread_state_t *t) {
  cut_lists += t->cuts_n;
  cut_lists_whole += t->whole_n;
  t->cuts_n = t->whole_n = 0;
}

/* The hash tables (samples, stack index, filter) are made resident when
 * they are made (os_populate). A page of them that is first read (a probe)
 * is the kernel's shared zero page, and the write that follows faults again
 * to replace it and flushes its TLB entry, with an interprocessor interrupt
 * when another thread of the process is running (microseconds on both CPUs
 * in a virtual machine). `threadchurn 400` took 72 such faults a run in
 * these tables and the unwinder's (tlb:tlb_flush from do_wp_page, perf
 * record); 0.1 after. */
static void *table_map(size_t bytes) {
  void *p = os_map(bytes);
  if (p) os_populate(p, bytes);
  return p;
}
/* The unwinder's tables (x86-64), bigger and used in a few places, instead
 * get a write that changes nothing on each page before it is first read: a
 * fault for a fresh page, and no flush. */
static __attribute__((unused)) void write_first(void *p, size_t bytes) {
  uintptr_t a = (uintptr_t)p, end = a + bytes;
  for (; a < end; a = (a | 4095) + 1)
    __atomic_fetch_or((uint8_t *)a, 0, __ATOMIC_RELAXED);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A sample's timestamps: the CPU's counter, a few cycles where
 * clock_gettime is a hundred instructions; converted to nanoseconds at exit
 * by the run's length in both. */
static ALWAYS_INLINE uint64_t ticks(void) {
#if defined(__x86_64__)
  return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
  uint64_t v;
  __asm__ volatile("isb\n\tmrs %0, cntvct_el0" : "=r"(v));
  return v;
#else
  return now_ns();
#endif
}

/* ---- numbers: no libm in allot --------------------------------------------
 */

#define LN2 0.6931471805599453

/* ln(u) for u in (0, 1]: u = m 2^e, ln m by the atanh series (|t| < 0.18,
 * six terms: error below 1e-11). */
static double ln(double u) {
  uint64_t bits;
  memcpy(&bits, &u, 8);
  int e = (int)((bits >> 52) & 0x7ff) - 1023;
  bits = (bits & (((uint64_t)1 << 52) - 1)) | ((uint64_t)1023 << 52);
  double m;
  memcpy(&m, &bits, 8);
  if (m > 1.4142135623730951) {
    m /= 2;
    e++;
  }
  double t = (m - 1) / (m + 1), t2 = t * t;
  double s =
      t * (2 + t2 * (2.0 / 3 +
                     t2 * (2.0 / 5 +
                           t2 * (2.0 / 7 + t2 * (2.0 / 9 + t2 * 2.0 / 11)))));
  return s + e * LN2;
}

/* 1 - e^-x for 0 <= x < ln 2: x (1 - x/2! + x^2/3! - ... - x^13/14!), by
 * Horner; the first term left out, x^14/15!, is below 1e-14 of the sum. */
static double one_minus_exp_neg_small(double x) {
  double r = -1.0 / 87178291200;
  r = r * x + 1.0 / 6227020800;
  r = r * x - 1.0 / 479001600;
  r = r * x + 1.0 / 39916800;
  r = r * x - 1.0 / 3628800;
  r = r * x + 1.0 / 362880;
  r = r * x - 1.0 / 40320;
  r = r * x + 1.0 / 5040;
  r = r * x - 1.0 / 720;
  r = r * x + 1.0 / 120;
  r = r * x - 1.0 / 24;
  r = r * x + 1.0 / 6;
  r = r * x - 1.0 / 2;
  r = r * x + 1;
  return x * r;
}

/* 1 - e^-x for x >= 0: above 1/2, e^-x = 2^-n e^-r with x = n ln 2 + r,
 * 0 <= r < ln 2; above 37, e^-x is below half an ulp of 1. */
static double one_minus_exp_neg(double x) {
  if (x >= 37) return 1;
  if (x <= 0.5) return one_minus_exp_neg_small(x);
  int n = (int)(x * 1.4426950408889634);
  double r = x - n * LN2;
  uint64_t bits = (uint64_t)(1023 - n) << 52; /* 2^-n */
  double scale;
  memcpy(&scale, &bits, 8);
  return 1 - (1 - one_minus_exp_neg_small(r)) * scale;
}

/* An allocation of size bytes is sampled with probability 1 - e^(-size/rate)
 * (the countdown is memoryless), so it stands for size / that probability
 * bytes: the Horvitz-Thompson weight. */
static double inv_rate; /* 1 / rate: a multiplication, not a division */
static int64_t weight_of(size_t size) {
  double x = (double)size * inv_rate;
  if (x <= 0.5) {
    /* size / p = rate x / (1 - e^-x) = rate (1 + x/2 + sum of B_2k x^2k /
     * (2k)!), the Bernoulli numbers' series (it converges for x < 2 pi): to
     * x^10, the first term left out below 2e-13 of the sum at x = 1/2. No
     * division and 5 multiply-adds, where 1 - e^-x took 14 and size / p a
     * division: most medium samples are below rate / 2. */
    double x2 = x * x;
    double f =
        x2 *
        (1.0 / 12 -
         x2 * (1.0 / 720 - x2 * (1.0 / 30240 - x2 * (1.0 / 1209600 -
                                                     x2 * (1.0 / 47900160)))));
    return (int64_t)((double)rate * (1 + f) + (double)size * 0.5 + 0.5);
  }
  double p = one_minus_exp_neg(x);
  return (int64_t)((double)size / p + 0.5);
}

/* The countdown's logarithm (draw), without ln's division: for m in [1, 2)
 * in the i-th of LN_PARTS equal parts, whose middle is c, ln m = ln c +
 * ln(1 + r) with r = m (1 / c) - 1, |r| < 1 / (2 LN_PARTS), and ln(1 + r) by
 * three terms of its series (the first left out, r^4 / 4, below 1.5e-8: a
 * countdown of mean 512 KiB off by less than a hundredth of a byte; five
 * terms, 3e-12, were two more steps of the chain of multiply-adds that is
 * most of the draw's time). */
#define LN_PARTS 32
static struct { double inv, ln; /* 1 / c, ln c */ } ln_part[LN_PARTS];

static void tables_init(void) {
  inv_rate = 1.0 / (double)rate;
  for (size_t cls = 1; cls < NCLASSES; cls++)
    class_weight[cls] = weight_of(class_size[cls]);
  for (int i = 0; i < LN_PARTS; i++) {
    double c = 1 + (i + 0.5) / LN_PARTS;
    ln_part[i].inv = 1 / c;
    ln_part[i].ln = -ln(1 / c);
  }
}

/* ln x for an integer 1 <= x <= 2^53, by ln_part */
static ALWAYS_INLINE double ln_int(uint64_t x) {
  double d = (double)x; /* exact */
  uint64_t bits;
  memcpy(&bits, &d, 8);
  int e = (int)(bits >> 52) - 1023;
  size_t i = (size_t)(bits >> (52 - 5)) & (LN_PARTS - 1);
  _Static_assert(LN_PARTS == 1 << 5, "the part is the mantissa's top bits");
  bits = (bits & (((uint64_t)1 << 52) - 1)) | ((uint64_t)1023 << 52);
  double m;
  memcpy(&m, &bits, 8);
  double r = m * ln_part[i].inv - 1;
  double s = r * (1 - r * (1.0 / 2 - r * (1.0 / 3)));
  return s + ln_part[i].ln + e * LN2;
}

static uint64_t next_random(pthread_state_t *t) {
  uint64_t x = t->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  t->rng = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* Bytes until the next sample: exponential with mean `rate`, at least 1:
 * -rate ln u for u = x 2^-53 uniform in (0, 1]. */
static int64_t draw(pthread_state_t *t) {
  uint64_t x = (next_random(t) >> 11) + 1;
  return (int64_t)((double)rate * (53 * LN2 - ln_int(x))) + 1;
}

static uint64_t seed; /* the process's, from the constructor */

/* A thread's first count. Its generator starts from the process's seed,
 * the CPU's counter and the thread's own address, mixed (splitmix64): no
 * system call, and no counter shared by the threads (whose cache line went
 * from one CPU to the other at each start of threadchurn's threads). */
static void thread_start(pthread_state_t *t) {
  uint64_t x = seed + (ticks() ^ (uintptr_t)t) * 0x9E3779B97F4A7C15ull;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  t->rng = x ? x : 1;
  prof_small_tls.left = draw(t);
  t->init = 1;
}

/* ---- backtraces ---------------------------------------------------------
 */

typedef struct ubuf {
  uintptr_t *ip;
  int n;
} ubuf_t;

static _Unwind_Reason_Code unwind_step(struct _Unwind_Context *ctx, void *arg) {
  ubuf_t *b = arg;
  uintptr_t ip = uw->get_ip(ctx);
  if (!ip) return _URC_END_OF_STACK;
  if (b->n == 0 && ip >= self_lo && ip < self_hi) return _URC_NO_REASON;
  b->ip[b->n++] = ip;
  return b->n == PROF_FRAMES ? _URC_END_OF_STACK : _URC_NO_REASON;
}

static ALWAYS_INLINE int capture_libgcc(uintptr_t *ip) {
  ubuf_t b = {ip, 0};
  uw->backtrace(unwind_step, &b);
  return b.n;
}

static int check_unwind; /* ALLOT_PROF_CHECK=1: both unwinders, compared */
/* Frames a walk keeps: PROF_FRAMES for the profile, NFRAMES for debug
 * mode's allocation sites (prof_unwind_start). */
static int walk_frames = PROF_FRAMES;
/* the unwinder's tables are set up (unwinder_start) */
static _Atomic int unwind_on;
static bool sites_on; /* debug mode's sites use it (prof_unwind_start) */
static _Atomic uint64_t unwind_fallbacks, unwind_mismatches;

struct walk;
typedef struct walk_ref {
  struct walk *w; /* where capture_fast stored this walk, or NULL */
  uint32_t gen;
  long id; /* its stack id if known, else -1 */
} walk_ref_t;

#if defined(__x86_64__)
/* A cached unwinder for x86-64. libgcc's interprets a function's call frame
 * information again for every frame of every backtrace (about 1.5 k
 * instructions a frame); here each return address's rule -- where the
 * caller's stack pointer (the CFA) is, and where rbp was saved -- is worked
 * out once from the same information (_Unwind_Find_FDE finds it) and kept
 * in a table, so a frame costs a lookup and two loads. Anything beyond the
 * plain rules compilers emit for rsp- and rbp-based frames (signal frames,
 * CFA expressions, realigned stacks) sends the whole backtrace to libgcc. */
struct dwarf_eh_bases {
  void *tbase, *dbase, *func;
};

enum { RULE_EMPTY, RULE_OK, RULE_LAST, RULE_HARD };
#define RBP_SAME INT16_MIN
typedef struct urule {
  uintptr_t ip;    /* the frame's address (for a caller, its return address) */
  int32_t cfa_off; /* CFA = (cfa_rbp ? rbp : rsp) + cfa_off */
  int16_t rbp_off; /* the caller's rbp at CFA + rbp_off, or RBP_SAME */
  uint8_t cfa_rbp, kind;
} urule_t;
#define URULES 8192
static urule_t *urules; /* direct-mapped by ip; under ulock */
static os_lock_t ulock;
/* urules' pages written to (write_first); under ulock */
static uint64_t urules_ready[(URULES * 16 / 4096 + 63) / 64];
_Static_assert(sizeof(urule_t) == 16, "urules_ready counts 256 a page");

static uint64_t uleb(const uint8_t **p) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    uint8_t b = *(*p)++;
    if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}
static int64_t sleb(const uint8_t **p) {
  uint64_t v = 0;
  int shift = 0;
  uint8_t b;
  do {
    b = *(*p)++;
    if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
    shift += 7;
  } while (b & 0x80);
  if (shift < 64 && (b & 0x40)) v |= ~(uint64_t)0 << shift;
  return (int64_t)v;
}
/* Bytes of a pointer-encoded value (DW_EH_PE_*), or -1 for a LEB. */
static int enc_size(uint8_t enc) {
  switch (enc & 0x0f) {
  case 0x00:
  case 0x04:
  case 0x0c:
    return 8;
  case 0x02:
  case 0x0a:
    return 2;
  case 0x03:
  case 0x0b:
    return 4;
  default:
    return -1;
  }
}
static bool skip_enc(const uint8_t **p, uint8_t enc) {
  if (enc == 0xff) return true; /* DW_EH_PE_omit */
  int n = enc_size(enc);
  if (n < 0) {
    if ((enc & 0x0f) != 0x01 && (enc & 0x0f) != 0x09) return false;
    uleb(p);
  } else {
    *p += n;
  }
  return true;
}

typedef struct cfa_state {
  int cfa_reg;
  int64_t cfa_off;
  int rbp_how, rip_how; /* 0 same / unset, 1 at CFA + off, 2 undefined */
  int64_t rbp_off, rip_off;
} cfa_state_t;

/* Run call frame instructions [p, end) from loc while the row covers
 * target. False for anything this unwinder does not follow. */
static bool run_cfa(const uint8_t *p, const uint8_t *end, uintptr_t loc,
                    uintptr_t target, uint64_t code_align, int64_t data_align,
                    cfa_state_t *st, const cfa_state_t *initial) {
  cfa_state_t saved[8];
  int nsaved = 0;
  while (p < end && loc <= target) {
    uint8_t op = *p++;
    uint64_t reg = op & 0x3f, delta = 0;
    int64_t off;
    switch (op >> 6) {
    case 1: /* advance_loc */
      loc += reg * code_align;
      continue;
    case 2: /* offset */
      off = (int64_t)uleb(&p) * data_align;
      goto set_offset;
    case 3: /* restore */
      goto restore;
    }
    switch (op) {
    case 0x00: /* nop */
      continue;
    case 0x02:
      delta = *p++;
      loc += delta * code_align;
      continue;
    case 0x03:
      delta = (uint64_t)p[0] | (uint64_t)p[1] << 8;
      p += 2;
      loc += delta * code_align;
      continue;
    case 0x04:
      delta = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
              (uint64_t)p[3] << 24;
      p += 4;
      loc += delta * code_align;
      continue;
    case 0x05: /* offset_extended */
      reg = uleb(&p);
      off = (int64_t)uleb(&p) * data_align;
      goto set_offset;
    case 0x11: /* offset_extended_sf */
      reg = uleb(&p);
      off = sleb(&p) * data_align;
      goto set_offset;
    case 0x2f: /* GNU_negative_offset_extended */
      reg = uleb(&p);
      off = -(int64_t)uleb(&p) * data_align;
      goto set_offset;
    case 0x06: /* restore_extended */
      reg = uleb(&p);
      goto restore;
    case 0x07: /* undefined */
    case 0x08: /* same_value */
      reg = uleb(&p);
      if (reg == 6) st->rbp_how = op == 0x07 ? 2 : 0;
      if (reg == 16) st->rip_how = op == 0x07 ? 2 : 0;
      continue;
    case 0x09: /* register */
      reg = uleb(&p);
      uleb(&p);
      if (reg == 6 || reg == 16) return false;
      continue;
    case 0x0a: /* remember_state */
      if (nsaved == 8) return false;
      saved[nsaved++] = *st;
      continue;
    case 0x0b: /* restore_state */
      if (!nsaved) return false;
      *st = saved[--nsaved];
      continue;
    case 0x0c: /* def_cfa */
      st->cfa_reg = (int)uleb(&p);
      st->cfa_off = (int64_t)uleb(&p);
      continue;
    case 0x12: /* def_cfa_sf */
      st->cfa_reg = (int)uleb(&p);
      st->cfa_off = sleb(&p) * data_align;
      continue;
    case 0x0d: /* def_cfa_register */
      st->cfa_reg = (int)uleb(&p);
      continue;
    case 0x0e: /* def_cfa_offset */
      st->cfa_off = (int64_t)uleb(&p);
      continue;
    case 0x13: /* def_cfa_offset_sf */
      st->cfa_off = sleb(&p) * data_align;
      continue;
    case 0x10: /* expression */
    case 0x16: /* val_expression */
      reg = uleb(&p);
      p += uleb(&p);
      if (reg == 6 || reg == 16) return false;
      continue;
    case 0x14: /* val_offset */
      reg = uleb(&p);
      uleb(&p);
      if (reg == 6 || reg == 16) return false;
      continue;
    case 0x15: /* val_offset_sf */
      reg = uleb(&p);
      sleb(&p);
      if (reg == 6 || reg == 16) return false;
      continue;
    case 0x2e: /* GNU_args_size */
      uleb(&p);
      continue;
    default: /* set_loc, def_cfa_expression, vendor extensions */
      return false;
    }
  set_offset:
    if (reg == 6) st->rbp_how = 1, st->rbp_off = off;
    if (reg == 16) st->rip_how = 1, st->rip_off = off;
    continue;
  restore:
    if (!initial) return false; /* in the CIE itself */
    if (reg == 6)
      st->rbp_how = initial->rbp_how, st->rbp_off = initial->rbp_off;
    if (reg == 16)
      st->rip_how = initial->rip_how, st->rip_off = initial->rip_off;
  }
  return true;
}

/* The rule of the frame at ip (target: ip, or a return address - 1). */
static void rule_for(uintptr_t target, urule_t *r) {
  r->kind = RULE_HARD;
  struct dwarf_eh_bases bases;
  const uint8_t *fde = uw->find_fde((void *)target, &bases);
  if (!fde) {
    r->kind = RULE_LAST; /* no information: the unwinders stop here */
    return;
  }
  uint32_t len, cie_off, clen;
  memcpy(&len, fde, 4);
  memcpy(&cie_off, fde + 4, 4);
  if (len == 0xffffffffu || !cie_off) return;
  const uint8_t *fend = fde + 4 + len, *cie = fde + 4 - cie_off;
  memcpy(&clen, cie, 4);
  if (clen == 0xffffffffu) return;
  const uint8_t *cend = cie + 4 + clen, *c = cie + 8;
  uint8_t version = *c++;
  const char *aug = (const char *)c;
  c += strlen(aug) + 1;
  if (aug[0] && aug[0] != 'z') return;
  uint64_t code_align = uleb(&c);
  int64_t data_align = sleb(&c);
  uint64_t ra = version == 1 ? *c++ : uleb(&c);
  uint8_t fde_enc = 0;
  if (aug[0] == 'z') {
    uint64_t alen = uleb(&c);
    const uint8_t *aend = c + alen;
    for (const char *a = aug + 1; *a; a++) {
      if (*a == 'R') {
        fde_enc = *c++;
      } else if (*a == 'P') {
        uint8_t enc = *c++;
        if (!skip_enc(&c, enc)) return;
      } else if (*a == 'L') {
        c++;
      } else {
        return; /* 'S' (a signal frame) and anything unknown */
      }
    }
    c = aend;
  }
  if (ra != 16) return;
  const uint8_t *q = fde + 8;
  if (!skip_enc(&q, fde_enc) || !skip_enc(&q, fde_enc & 0x0f)) return;
  if (aug[0] == 'z') q += uleb(&q);
  cfa_state_t st = {-1, 0, 0, 0, 0, 0}, initial;
  uintptr_t start = (uintptr_t)bases.func;
  if (!run_cfa(c, cend, start, UINTPTR_MAX, code_align, data_align, &st, NULL))
    return;
  initial = st;
  if (!run_cfa(q, fend, start, target, code_align, data_align, &st, &initial))
    return;
  if (st.rip_how == 2) {
    r->kind = RULE_LAST; /* the outermost frame (_start, a thread's start) */
    return;
  }
  if ((st.cfa_reg != 7 && st.cfa_reg != 6) || st.rip_how != 1 ||
      st.rip_off != -8 || st.cfa_off < 8 || st.cfa_off > INT32_MAX ||
      (st.rbp_how == 1 && (st.rbp_off <= -32768 || st.rbp_off >= 0)) ||
      st.rbp_how == 2)
    return;
  r->cfa_off = (int32_t)st.cfa_off;
  r->cfa_rbp = st.cfa_reg == 6;
  r->rbp_off = st.rbp_how == 1 ? (int16_t)st.rbp_off : RBP_SAME;
  r->kind = RULE_OK;
}

static size_t urule_slot(uintptr_t ip) {
  return (size_t)((ip * 0x9E3779B97F4A7C15ull) >> 51) & (URULES - 1);
}

/* The walks taken lately, by where they started. A program that allocates
 * in a loop is sampled at the same stack again and again: then each value
 * the walk reads from the stack (the return addresses and saved rbp) is the
 * one it read last time at the same place, and since the rest is a function
 * of those values (the rules are of the addresses read), the walk and its
 * frames are the same, found by checking them instead of looking each
 * frame's rule up; so is the stack's id in the table (record). */
#define WALKS 64
#define WALK_READS 96
typedef struct walk {
  uintptr_t sp, bp; /* the walk's start (bp 1: not used); sp 0: no walk */
  uintptr_t thread; /* &T: the same thread block, so the same stack */
  uint32_t gen;     /* which walk is stored: record's id goes to its own */
  uint32_t next;    /* in a set's first: the way to be replaced next */
  int nreads, n;
  long id;                       /* the frames' stack id, -1 until known */
  uintptr_t read[WALK_READS][2]; /* the words it read: address, value */
  uintptr_t out[PROF_FRAMES];
} walk_t;
/* Under lock, not ulock: a reused walk goes on to record under the same
 * lock, one lock a sample instead of two (each an atomic operation, about
 * 14 ns a pair here). */
static walk_t *walks;         /* under lock */
static uint64_t walks_reused; /* under lock */

/* A set of WALK_WAYS slots: walks from one depth by different paths (the
 * aligned_alloc and memalign of a loop) share it. The walks of one thread
 * from different depths take different sets, those of two threads sets far
 * apart: sp itself, not a hash of it, picks one. */
#define WALK_WAYS 4
static uint32_t sets_ready; /* sets written to (write_first); under lock */
_Static_assert(WALKS / WALK_WAYS <= 32, "sets_ready has a bit a set");
static walk_t *walk_set(uintptr_t sp) {
  uintptr_t t = (((uintptr_t)&T >> 12) * 0x9E3779B97F4A7C15ull) >> 32;
  size_t i = ((sp >> 4) + t) & (WALKS / WALK_WAYS - 1);
  if (unlikely(!(sets_ready >> i & 1))) {
    sets_ready |= (uint32_t)1 << i;
    write_first(&walks[i * WALK_WAYS], WALK_WAYS * sizeof *walks);
  }
  return &walks[i * WALK_WAYS];
}

static urule_t *urule_at(uintptr_t ip) {
  size_t i = urule_slot(ip), pg = i >> 8;
  if (unlikely(!(urules_ready[pg >> 6] >> (pg & 63) & 1))) {
    urules_ready[pg >> 6] |= (uint64_t)1 << (pg & 63);
    write_first(&urules[i], sizeof *urules);
  }
  return &urules[i];
}

/* The stored walk from (sp, bp) if every value it read is still there. */
static ALWAYS_INLINE bool walk_same(const walk_t *w, uintptr_t sp,
                                    uintptr_t bp) {
  if (w->sp != sp || (w->bp != bp && w->bp != 1) || w->thread != (uintptr_t)&T)
    return false;
  const uintptr_t(*r)[2] = w->read, (*end)[2] = r + w->nreads;
  /* two words a test: one branch and one loop step for both */
  for (; r + 1 < end; r += 2)
    if (((*(const uintptr_t *)r[0][0] ^ r[0][1]) |
         (*(const uintptr_t *)r[1][0] ^ r[1][1])) != 0)
      return false;
  return r == end || *(const uintptr_t *)(*r)[0] == (*r)[1];
}

/* -1: libgcc must do this one; otherwise the frames' count, with lock
 * held. */
static NOINLINE int capture_fast(uintptr_t *out, walk_ref_t *ref) {
  uintptr_t ip, sp, bp;
  __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2"
                   : "=r"(ip), "=r"(sp), "=r"(bp));
  uintptr_t sp0 = sp, bp0 = bp;
  os_lock(&lock);
  walk_t *set = walks ? walk_set(sp) : NULL, *w = NULL;
  for (int i = 0; set && i < WALK_WAYS; i++) {
    w = &set[i];
    if (walk_same(w, sp, bp)) {
      int n = w->n;
      /* with the stack's id known, record needs no frames */
      if (w->id < 0 || check_unwind)
        memcpy(out, w->out, (size_t)n * sizeof *out);
      *ref = (walk_ref_t){w, w->gen, w->id};
      walks_reused++;
      return n;
    }
  }
  if (set) w = &set[set->next++ % WALK_WAYS]; /* replaced in turn */
  os_unlock(&lock);
  uintptr_t reads[WALK_READS][2];
  int nreads = 0;
  uintptr_t target = ip; /* the first frame is not a return address */
  int n = 0;
  /* In code built without frame pointers rbp holds anything, and so do the
   * copies of it the frames save: only a value that a frame's CFA is taken
   * from is kept to be checked (bp_at: where bp was read, 0 for bp0). */
  bool bp_used = false, bp_kept = false;
  uintptr_t bp_at = 0;
  os_lock(&ulock);
  for (;;) {
    urule_t *r = urule_at(ip);
    if (r->ip != ip || r->kind == RULE_EMPTY) {
      urule_t fresh;
      os_unlock(&ulock); /* _Unwind_Find_FDE may take the loader's lock */
      rule_for(target, &fresh);
      fresh.ip = ip;
      os_lock(&ulock);
      r = urule_at(ip);
      *r = fresh;
    }
    if (r->kind == RULE_HARD) {
      os_unlock(&ulock);
      return -1;
    }
    if (r->kind == RULE_LAST) break;
    if (r->cfa_rbp && !bp_at) bp_used = true;
    if (r->cfa_rbp && bp_at && !bp_kept) {
      if (nreads < WALK_READS) reads[nreads][0] = bp_at, reads[nreads][1] = bp;
      nreads++;
      bp_kept = true;
    }
    uintptr_t cfa = (r->cfa_rbp ? bp : sp) + (uintptr_t)(int64_t)r->cfa_off;
    if (cfa <= sp || (cfa & 7)) break; /* the stack grows down */
    if (r->rbp_off != RBP_SAME) {
      bp_at = cfa + (uintptr_t)(int64_t)r->rbp_off;
      bp = *(uintptr_t *)bp_at;
      bp_kept = false;
    }
    uintptr_t ret = *(uintptr_t *)(cfa - 8);
    if (nreads < WALK_READS) reads[nreads][0] = cfa - 8, reads[nreads][1] = ret;
    nreads++;
    sp = cfa;
    if (!ret) break;
    if (n || ret < self_lo || ret >= self_hi) {
      out[n++] = ret;
      if (n == walk_frames) break;
    }
    ip = ret;
    target = ret - 1; /* the call, not the instruction after it */
  }
  os_unlock(&ulock);
  os_lock(&lock);
  *ref = (walk_ref_t){NULL, 0, -1};
  if (w && nreads <= WALK_READS) {
    w->sp = sp0;
    w->bp = bp_used ? bp0 : 1;
    w->thread = (uintptr_t)&T;
    w->gen++;
    w->nreads = nreads;
    w->n = n;
    w->id = -1;
    memcpy(w->read, reads, (size_t)nreads * sizeof *reads);
    memcpy(w->out, out, (size_t)n * sizeof *out);
    *ref = (walk_ref_t){w, w->gen, -1};
  }
  return n;
}
#endif

/* Inlined into the hooks: each frame of allot's own that the unwinder walks
 * costs as much as one of the program's. ref: the walk as capture_fast
 * stored it (x86-64), for its stack id. Returns with lock held; libgcc's
 * unwinder runs without it (_Unwind_Find_FDE takes the loader's lock, and
 * the loader may call malloc). */
static ALWAYS_INLINE int capture(uintptr_t *ip, walk_ref_t *ref) {
  *ref = (walk_ref_t){NULL, 0, -1};
  int n;
#if defined(__x86_64__)
  if (urules) {
    n = capture_fast(ip, ref);
    if (n < 0) {
      atomic_fetch_add_explicit(&unwind_fallbacks, 1, memory_order_relaxed);
      n = capture_libgcc(ip);
      os_lock(&lock);
      return n;
    }
    if (unlikely(check_unwind)) {
      os_unlock(&lock);
      uintptr_t other[PROF_FRAMES];
      int m = capture_libgcc(other);
      os_lock(&lock);
      if (m != n || memcmp(other, ip, (size_t)n * sizeof *ip)) {
        atomic_fetch_add_explicit(&unwind_mismatches, 1, memory_order_relaxed);
        memcpy(ip, other, (size_t)m * sizeof *ip);
        *ref = (walk_ref_t){NULL, 0, -1};
        return m;
      }
    }
    return n;
  }
#endif
  n = capture_libgcc(ip);
  os_lock(&lock);
  return n;
}

/* ---- tables (under lock) -------------------------------------------------
 */

static void *grow(void *old, size_t old_bytes, size_t new_bytes) {
  void *n = os_map(new_bytes);
  if (!n) return NULL;
  if (old) {
    memcpy(n, old, old_bytes);
    os_unmap(old, old_bytes);
  }
  return n;
}

static uint64_t hash_frames(const uintptr_t *ip, int n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
  for (int i = 0; i < n; i++) {
    h ^= ip[i];
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  return h;
}

static size_t addr_slot(uintptr_t a, size_t cap) {
  return (size_t)(((a >> 4) * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

static bool index_rebuild(size_t cap) {
  uint32_t *idx = table_map(cap * sizeof *idx);
  if (!idx) return false;
  for (size_t i = 0; i < nstacks; i++) {
    size_t j = stacks[i].hash & (cap - 1);
    while (idx[j])
      j = (j + 1) & (cap - 1);
    idx[j] = (uint32_t)i + 1;
  }
  if (stack_index) os_unmap(stack_index, index_cap * sizeof *stack_index);
  stack_index = idx;
  index_cap = cap;
  return true;
}

/* The stack's id, adding it if new; -1 when out of memory. */
static long stack_id(const uintptr_t *ip, int n) {
  uint64_t h = hash_frames(ip, n);
  if (index_cap) {
    for (size_t j = h & (index_cap - 1); stack_index[j];
         j = (j + 1) & (index_cap - 1)) {
      pstack_t *s = &stacks[stack_index[j] - 1];
      if (s->hash == h && s->depth == (uint32_t)n &&
          !memcmp(s->frames, ip, (size_t)n * sizeof *ip))
        return (long)stack_index[j] - 1;
    }
  }
  if (nstacks >= UINT32_MAX - 1) return -1;
  if (nstacks == stacks_cap) {
    size_t cap = stacks_cap ? stacks_cap * 2 : 1024;
    pstack_t *ns =
        grow(stacks, stacks_cap * sizeof *stacks, cap * sizeof *stacks);
    if (!ns) return -1;
    stacks = ns;
    stacks_cap = cap;
  }
  if ((nstacks + 1) * 2 > index_cap &&
      !index_rebuild(index_cap ? index_cap * 2 : 1024))
    return -1;
  size_t bytes = (size_t)n * sizeof *ip;
  if (!arena_next || bytes > (size_t)(arena_end - arena_next)) {
    size_t chunk = (size_t)256 << 10;
    arena_next = os_map(chunk);
    if (!arena_next) {
      arena_end = NULL;
      return -1;
    }
    arena_end = arena_next + chunk;
  }
  pstack_t *s = &stacks[nstacks];
  memset(s, 0, sizeof *s);
  s->hash = h;
  s->depth = (uint32_t)n;
  s->frames = (uintptr_t *)arena_next;
  memcpy(s->frames, ip, bytes);
  arena_next += bytes;
  s->epoch = epoch; /* it held nothing at the last snapshot */
  size_t j = h & (index_cap - 1);
  while (stack_index[j])
    j = (j + 1) & (index_cap - 1);
  stack_index[j] = (uint32_t)nstacks + 1;
  return (long)nstacks++;
}

/* Before a stack's live bytes change: if they have not changed since the
 * last snapshot, what they are now is what they were then. Snapshots thus
 * cost O(1), not a copy of the table. */
static void touch(pstack_t *s) {
  if (s->epoch != epoch) {
    s->snap = s->live;
    s->snap_n = s->live_n;
    s->epoch = epoch;
  }
}

static psample_t *sample_find(uintptr_t a) {
  if (!samples_cap) return NULL;
  for (size_t j = addr_slot(a, samples_cap); samples[j].addr;
       j = (j + 1) & (samples_cap - 1))
    if (samples[j].addr == a) return &samples[j];
  return NULL;
}

/* Under lock: a live sample at a (d 1) or no longer (d -1). The filter
 * says so before the block is handed out and until its free, so a free that
 * reads it unlocked sees its own sample. */
static ALWAYS_INLINE void filter_add(uintptr_t a, int d) {
  size_t i = prof_filter_slot((const void *)a), grp = i / GROUP_SLOTS;
  uint8_t v = atomic_load_explicit(&filter_count[i], memory_order_relaxed);
  if (v == 255) return;
  atomic_store_explicit(&filter_count[i], (uint8_t)(v + d),
                        memory_order_relaxed);
  if (v + d != 0 && v != 0) return; /* the slot stays taken, or free */
  if (d < 0) { /* the slot is free now; the group too? (the counts change
                  only under lock, here: read four at a time) */
    uint64_t c[4];
    memcpy(c, (const void *)&filter_count[grp * GROUP_SLOTS], sizeof c);
    if (c[0] | c[1] | c[2] | c[3]) return;
  }
  _Atomic uint64_t *w = &prof_filter_sum[grp / 64];
  uint64_t bit = (uint64_t)1 << (grp % 64),
           x = atomic_load_explicit(w, memory_order_relaxed);
  atomic_store_explicit(w, d > 0 ? x | bit : x & ~bit, memory_order_relaxed);
}

/* The slot's count, for which prof_maybe_sample's group bit stands. */
static ALWAYS_INLINE bool filter_has(const void *p) {
  return atomic_load_explicit(&filter_count[prof_filter_slot(p)],
                              memory_order_relaxed) != 0;
}

static bool sample_put(uintptr_t a, uint32_t stack, int64_t w) {
  if ((nsamples + 1) * 2 > samples_cap) {
    size_t cap = samples_cap ? samples_cap * 2 : 512;
    psample_t *ns = table_map(cap * sizeof *ns);
    if (!ns) return false;
    for (size_t i = 0; i < samples_cap; i++) {
      if (!samples[i].addr) continue;
      size_t j = addr_slot(samples[i].addr, cap);
      while (ns[j].addr)
        j = (j + 1) & (cap - 1);
      ns[j] = samples[i];
    }
    if (samples) os_unmap(samples, samples_cap * sizeof *samples);
    samples = ns;
    samples_cap = cap;
  }
  size_t j = addr_slot(a, samples_cap);
  while (samples[j].addr)
    j = (j + 1) & (samples_cap - 1);
  samples[j] = (psample_t){a, stack, w};
  nsamples++;
  filter_add(a, 1);
  return true;
}

/* Linear probing without tombstones: later entries of the run move back. */
static void sample_remove(psample_t *e) {
  size_t mask = samples_cap - 1, i = (size_t)(e - samples);
  filter_add(e->addr, -1);
  for (size_t j = (i + 1) & mask; samples[j].addr; j = (j + 1) & mask) {
    size_t home = addr_slot(samples[j].addr, samples_cap);
    /* j's entry may fill the hole at i unless its home lies in (i, j] */
    if (((j - home) & mask) >= ((j - i) & mask)) {
      samples[i] = samples[j];
      i = j;
    }
  }
  samples[i].addr = 0;
  nsamples--;
}

/* ---- taking a sample ------------------------------------------------------
 */

/* The time inside the sampling code is measured on one sample in TIMED,
 * picked at random, and counted TIMED times: each read of the CPU's counter
 * costs about 12 ns on this machine's virtual CPUs, and two a sample were a
 * tenth of what a medium sample cost. At random, not every TIMED-th sample
 * of a thread, which would leave out threads that take fewer (threadchurn's
 * take about 4). The bits are the generator's state, which the countdown's
 * draw moves on at each sample. 0: this sample is not timed. */
#define TIMED 4
static ALWAYS_INLINE uint64_t sample_start(pthread_state_t *t) {
  return t->rng >> 62 ? 0 : ticks();
}

/* Under lock (capture took it): record block p as a sample whose backtrace
 * capture gave (ip, n, ref); w its weight. False if it could not be
 * recorded (out of memory). */
static ALWAYS_INLINE bool record_locked(void *p, int64_t w, const uintptr_t *ip,
                                        int n, const walk_ref_t *ref,
                                        uint64_t t0) {
  long id = ref->id >= 0 ? ref->id : stack_id(ip, n);
#if defined(__x86_64__)
  /* the walk capture_fast stored, if no other has replaced it since */
  if (ref->w && ref->id < 0 && id >= 0 && ref->w->gen == ref->gen)
    ref->w->id = id;
#endif
  bool ok = id >= 0 && sample_put((uintptr_t)p, (uint32_t)id, w);
  if (ok) {
    pstack_t *s = &stacks[id];
    touch(s);
    s->live += w;
    s->live_n++;
    s->total += w;
    s->total_n++;
    live_total += w;
    taken++;
    if (live_total > peak_total) { /* a new peak: snapshot */
      epoch++;
      peak_total = live_total;
      peak_ticks = ticks();
    }
  } else {
    dropped++;
  }
  if (t0) busy_ticks += TIMED * (ticks() - t0);
  return ok;
}

/* Small block p of page pg, just popped for a malloc, is a sample of
 * weight w: recorded, and counted in its page (psamples). A page that
 * counts samples has no available owner (page_set_queue): free's fast path
 * leaves its blocks to small_free_other, which hands a sampled block's free
 * to prof_small_free. Only pg's owner, this thread, adds to the count;
 * frees from any thread take from it. The block stays the page's: until
 * session 19 a sampled small block was a chunk of a heap of the profiler's
 * own, whose free reached medium_free, while the sample held the page's
 * block; that chunk's memory, its allocation and free, and the held block's
 * return were about a third of what profiling added to `aligned`'s CPU
 * time (docs/tools.md, session 19). The backtrace comes first, so that one
 * lock covers it and the record. */
static ALWAYS_INLINE void sample_small(pthread_state_t *t, page_t *pg, void *p,
                                       int64_t w) {
  t->busy = 1;
  uint64_t t0 = sample_start(t);
  uintptr_t ip[PROF_FRAMES];
  walk_ref_t ref;
  int n = capture(ip, &ref); /* takes lock */
  cuts_fold(t);
  bool ok = record_locked(p, w, ip, n, &ref, t0);
  os_unlock(&lock);
  if (ok) {
    atomic_fetch_add_explicit(&pg->psamples, 1, memory_order_relaxed);
    atomic_store_explicit(&pg->avail_owner, NULL, memory_order_relaxed);
  }
  t->busy = 0;
}

/* ---- small blocks -----------------------------------------------------
 */

static block_t *next_checked(block_t *b) {
  block_t *next = link_decode(b->next, b);
  if (next && (((uintptr_t)next ^ (uintptr_t)b) >> PAGE_SHIFT))
    fault("malloc", "corrupted free list", b);
  return next;
}

/* Leave the first k blocks of the page's free list to the fast path and put
 * the rest on the page's cross-thread list (counted in `used`, as blocks
 * there are), so the slow path comes back exactly at the (k+1)-th next
 * malloc of the class. Every path that empties a page's free list collects
 * that list, so the blocks are never lost. What other threads freed into
 * the page is taken over first, as the allocator's next refill would have:
 * then the rest goes onto an empty list in one compare-and-swap, and is
 * kept (t->cuts), so that the collection of that list takes it back whole
 * (prof_collect_xfree): walked block by block like any cross-thread list,
 * it was a fifth of what profiling added to threadchurn's instructions.
 * Appended to a list that was not empty it is walked to its end here, and
 * not kept. */
static void cut(pthread_state_t *t, page_t *pg, size_t k, size_t n) {
  n += page_collect_xfree(pg);
  block_t *rest, *tail = NULL;
  if (k == 0) {
    rest = pg->free;
    pg->free = NULL;
  } else {
    tail = pg->free;
    for (size_t i = 1; i < k; i++)
      tail = next_checked(tail);
    rest = next_checked(tail);
    tail->next = link_encode(NULL, tail);
  }
  if (!rest) return;
  t->cuts_n++;
  pg->used += (uint32_t)(n - k);
  /* usually nobody else has freed into the page: the list goes as it is */
  uintptr_t word = 0;
  if (atomic_compare_exchange_strong_explicit(
          &pg->xfree, &word, xfree_word(rest, n - k), memory_order_release,
          memory_order_relaxed)) {
    pcut_t *c = NULL;
    for (int i = 0; i < CUTS && !c; i++)
      if (!t->cuts[i].pg) c = &t->cuts[i];
    if (c)
      t->ncuts++;
    else
      c = &t->cuts[t->next_cut++ % CUTS]; /* that one's list gets walked */
    *c = (pcut_t){pg, tail, rest, (uint32_t)(n - k)};
    return;
  }
  block_t *last = rest, *nx;
  size_t m = 1;
  for (; (nx = next_checked(last)); last = nx)
    if (++m > n - k) break;
  if (m != n - k) fault("malloc", "corrupted free list", last);
  do {
    last->next = link_encode(xfree_head(word), last);
  } while (!atomic_compare_exchange_weak_explicit(
      &pg->xfree, &word, xfree_word(rest, xfree_count(word) + n - k),
      memory_order_release, memory_order_relaxed));
}

/* The countdown while forced: the hook's subtraction leaves it below 0. */
#define FORCED (INT64_MIN / 2)

/* Where the kept cut c's list goes back to its page pg: after *tail, the cut's
 * tail, if the page's free list still ends there, or as the whole list (*tail
 * NULL) if that is empty. False: neither, and the list is walked as any other.
 * Only the thread that cut collects the page's cross-thread list (a
 * thread's pages are the owner's to collect, the purge thread's only in the
 * full lists, where no page with a cross-thread list goes), and only
 * through prof_collect_xfree and after prof_uncut, which end its cuts
 * first: so the list still ends with rest and the n blocks after it. */
static bool cut_tail(const pcut_t *c, page_t *pg, block_t **tail) {
  *tail = NULL;
  if (!pg->free) return true;
  block_t *b = c->tail;
  if (!b || link_decode(b->next, b) || b->mark != free_mark(b)) return false;
  *tail = b;
  return true;
}

/* page_collect_xfree took over word, the cross-thread list of pg, a page of
 * a class whose sample is pending: in the refill that makes that sample
 * (or in another collection; heap_collect_pages has prof_uncut). A list
 * kept by cut comes back whole, after what other threads pushed in front
 * of it. The countdown is then set so that the next hook, the refill's,
 * calls prof_small, which is where the pending classes are tested: the
 * hooks on every refill do not test them. */
size_t prof_collect_xfree(page_t *pg, uintptr_t word) {
  pthread_state_t *t = &T;
  if (!t->forced) {
    t->forced = 1;
    t->forced_left = prof_small_tls.left;
    prof_small_tls.left = FORCED;
  }
  block_t *tail;
  for (int i = 0; i < CUTS; i++) {
    pcut_t *c = &t->cuts[i];
    if (c->pg != pg) continue;
    c->pg = NULL;
    t->ncuts--;
    t->taken = pg;
    if (!cut_tail(c, pg, &tail)) break;
    t->whole_n++;
    if (xfree_head(word) == c->rest && !tail) {
      /* the usual case: the page's list ran out at the cut and nobody has
       * freed into the page since; page_take_xfree's work then */
      if (c->n > pg->used || xfree_count(word) != c->n)
        fault("malloc", "corrupted free list", c->rest);
      pg->free = c->rest;
      pg->used -= c->n;
      return c->n;
    }
    return page_take_xfree(pg, word, c->rest, c->n, tail);
  }
  return page_take_xfree(pg, word, NULL, 0, NULL);
}

void prof_uncut(heap_t *h) {
  pthread_state_t *t = &T;
  block_t *tail;
  for (int i = 0; i < CUTS && t->ncuts; i++) {
    pcut_t *c = &t->cuts[i];
    page_t *pg = c->pg;
    if (!pg || atomic_load_explicit(&pg->heap, memory_order_relaxed) != h)
      continue;
    c->pg = NULL;
    t->ncuts--;
    uintptr_t word;
    if (cut_tail(c, pg, &tail) && (word = atomic_exchange_explicit(
                                       &pg->xfree, 0, memory_order_acquire))) {
      t->whole_n++;
      page_take_xfree(pg, word, c->rest, c->n, tail);
    }
  }
  if (t->cuts_n | t->whole_n) {
    os_lock(&lock);
    cuts_fold(t);
    os_unlock(&lock);
  }
}

/* The small-object slow path has just refilled the thread's current page
 * for p's class and popped p: the page's list (capacity - used blocks) now
 * goes to the fast path. The hook (prof_count_small) counts p's block and
 * those; when the countdown ends inside them, it comes here, and the list
 * is cut where it ends, so that the malloc that would take that block comes
 * back here, pending, and is the sample: an exact position, not whichever
 * malloc happens to find the list empty (for sites that alternate within a
 * class, that would always be the same site). Here too when the thread has
 * not started counting yet, or when its class's sample is pending. No allot
 * lock is held here. */
static NOINLINE void *small_sample(pthread_state_t *t, void *p, page_t *pg) {
  /* A first-class heap's bytes count too, and a sample point among them is
   * dropped: the points elsewhere stay a Poisson process. */
  if (atomic_load_explicit(&pg->heap, memory_order_relaxed)->first_class) {
    int64_t bytes = (int64_t)(pg->capacity - pg->used + 1) * pg->bsize;
    prof_small_tls.left =
        bytes < prof_small_tls.left ? prof_small_tls.left - bytes : draw(t);
    return p;
  }
  size_t b = pg->bsize;
  uint64_t bit = (uint64_t)1 << pg->cls;
  int64_t w = class_weight[pg->cls];
  size_t held = 1; /* p's block is still to be counted */
  if (prof_small_tls.pending & bit) {
    prof_small_tls.pending &= ~bit;
    sample_small(t, pg, p, w);
    held = 0;
  }
  for (;;) {
    int64_t bytes = (int64_t)(pg->capacity - pg->used + held) * (int64_t)b;
    if (bytes < prof_small_tls.left) {
      prof_small_tls.left -= bytes;
      break;
    }
    /* where it ends; below a page's bytes, so a 32-bit division */
    size_t k = (uint32_t)(prof_small_tls.left - 1) / (uint32_t)b;
    prof_small_tls.left = draw(t);
    if (k == 0 && held) { /* p's malloc is the sample */
      sample_small(t, pg, p, w);
      held = 0;
      continue; /* the list from here on: count it afresh */
    }
    cut(t, pg, k - held, pg->capacity - pg->used);
    prof_small_tls.pending |= bit;
    break;
  }
  return p;
}

/* p's own page; NULL for a block outside the small pages (malloc(0)'s, a
 * medium chunk's). */
static page_t *small_page(void *p) {
  segment_t *s = segment_of(p);
  return s->kind == SEG_SMALL ? page_of(s, p) : NULL;
}

/* p was borrowed from a larger class's page, own (page.c, page_borrow), for
 * a malloc of the class whose current page pg has no block free: the hook
 * counted one block of pg's class (none if pg is empty_page), so when the
 * countdown ends there this malloc is the sample. own's list is neither
 * counted nor cut here: it is the lender's, counted at the lender's refill,
 * and a cut is made only in the list of its class's current page. (No
 * first-class heap borrows: no sample point to drop here.) */
static NOINLINE void *borrowed_sample(pthread_state_t *t, void *p, page_t *pg,
                                      page_t *own) {
  if (pg == &empty_page) return p; /* counted nothing */
  int64_t bytes = (int64_t)(pg->capacity - pg->used + 1) * pg->bsize;
  if (bytes < prof_small_tls.left) {
    prof_small_tls.left -= bytes;
    return p;
  }
  prof_small_tls.left = draw(t);
  sample_small(t, own, p, class_weight[pg->cls]);
  return p;
}

static NOINLINE void *small_slow(pthread_state_t *t, void *p, page_t *pg,
                                 size_t cls, const page_t *taken) {
  /* The hook counted h->current[cls], which is p's page on every path of
   * page_malloc_slow but borrowing's (below); a sample cuts and unpops, so
   * that is made sure of. */
  page_t *own = pg;
  if (unlikely(pg == &empty_page || page_of(segment_of(p), p) != pg)) {
    /* (equal, the addresses say that p is pg's without reading p's
     * segment header, a cache miss at most samples: page_of's result lies
     * in p's own segment, and pg is a page of a small one) */
    if (!(own = small_page(p))) return p;
  }
  if (atomic_load_explicit(&ready, memory_order_acquire) && !g.slow_mode) {
    if (unlikely(!t->init)) thread_start(t);
    /* A borrowed block, unless the borrower took the lender's kept cut list
     * back in this malloc (page_borrow collects a lender's list when it has
     * no block free): then p is the first block after the cut, where the
     * lender's pending sample is, taken below as at the lender's refill. */
    if (unlikely(own->cls != cls) &&
        !(taken == own && prof_small_tls.pending >> own->cls & 1))
      return borrowed_sample(t, p, pg, own);
    int64_t bytes = (int64_t)(own->capacity - own->used + 1) * own->bsize;
    if (bytes < prof_small_tls.left &&
        !(prof_small_tls.pending >> own->cls & 1))
      prof_small_tls.left -= bytes; /* a first call, or a forced one */
    else
      p = small_sample(t, p, own);
  }
  return p;
}

void *prof_small(void *p, page_t *pg, int64_t bytes, size_t cls) {
  pthread_state_t *t = &T;
  const page_t *taken = t->taken;
  t->taken = NULL;
  if (t->forced) {
    t->forced = 0;
    prof_small_tls.left = t->forced_left;
  } else {
    prof_small_tls.left += bytes;
  }
  if (unlikely(t->busy)) return p;
  /* a tail call: no frame to unwind */
  return small_slow(t, p, pg, cls, taken);
}

/* ---- medium and large ---------------------------------------------------
 */

/* Medium and large samples stay where they are, as small ones do: their
 * frees find them through the filter. A sample point
 * in a first-class heap's block is dropped, as for small blocks. Their
 * bytes have a countdown of their own, prof_left_big, which a pending small
 * sample does not hold: two independent exponential countdowns over two
 * sets of bytes sample each allocation with the same probability as one
 * over both. */
static NOINLINE void count_block(pthread_state_t *t, void *p, size_t size,
                                 bool drop) {
  if (!atomic_load_explicit(&ready, memory_order_acquire) || g.slow_mode)
    return;
  if (unlikely(!t->init)) thread_start(t);
  if (unlikely(!t->big)) {
    prof_left_big = draw(t);
    t->big = 1;
  }
  prof_left_big -= (int64_t)size;
  if (prof_left_big > 0) return;
  prof_left_big = draw(t);
  if (drop) return;
  t->busy = 1;
  uint64_t t0 = sample_start(t);
  int64_t w = weight_of(size);
  uintptr_t ip[PROF_FRAMES];
  walk_ref_t ref;
  int n = capture(ip, &ref); /* takes lock */
  record_locked(p, w, ip, n, &ref, t0);
  os_unlock(&lock);
  t->busy = 0;
}

void prof_medium(heap_t *h, void *p, size_t size) {
  pthread_state_t *t = &T;
  prof_left_big += (int64_t)size;
  if (unlikely(t->busy)) return; /* an allocation of the unwinder's */
  count_block(t, p, size, h->first_class);
}

void prof_large(void *p, size_t size) {
  if (likely((prof_left_big -= (int64_t)size) > 0)) return;
  pthread_state_t *t = &T;
  prof_left_big += (int64_t)size;
  if (unlikely(t->busy)) return;
  count_block(t, p, size, false);
}

/* Block p, whose filter slot is taken, is being freed: drop its sample,
 * if it is one. True if it was. */
static bool sample_freed(void *p) {
  os_lock(&lock);
  psample_t *e = sample_find((uintptr_t)p);
  if (e) {
    pstack_t *st = &stacks[e->stack];
    touch(st);
    st->live -= e->weight;
    st->live_n--;
    live_total -= e->weight;
    sample_remove(e);
  }
  os_unlock(&lock);
  return e != NULL;
}

/* A medium or large block whose filter group is set (the caller tested
 * prof_maybe_sample) is being freed. */
void prof_free(void *p) {
  if (filter_has(p)) sample_freed(p);
}

/* A block of page pg, which counts live samples, is being freed, and its
 * filter group is set (small_free_other). A second free of a sampled block
 * finds no sample: small_free's mark test catches it. */
void prof_small_free(page_t *pg, void *p) {
  if (filter_has(p) && sample_freed(p))
    atomic_fetch_sub_explicit(&pg->psamples, 1, memory_order_relaxed);
}

/* realloc moved a large block's pages: its sample moves along. */
void prof_moved(void *from, void *to) {
  if (!prof_maybe_sample(from) || !filter_has(from)) return;
  os_lock(&lock);
  psample_t *e = sample_find((uintptr_t)from);
  if (e) {
    psample_t keep = *e;
    sample_remove(e);
    sample_put((uintptr_t)to, keep.stack, keep.weight);
  }
  os_unlock(&lock);
}

/* ---- start-up -------------------------------------------------------------
 */

static void warn(const char *a, const char *b, const char *c) {
  os_write_err("allot: warning: ");
  os_write_err(a);
  os_write_err(b);
  os_write_err(c);
  os_write_err("\n");
}

static bool word_in(const char *s, const char *const *words) {
  for (; *words; words++)
    if (!strcmp(s, *words)) return true;
  return false;
}

static bool parse_size(const char *s, int64_t *out) {
  uint64_t v = 0;
  if (*s < '0' || *s > '9') return false;
  for (; *s >= '0' && *s <= '9'; s++) {
    v = v * 10 + (uint64_t)(*s - '0');
    if (v > ((uint64_t)1 << 40)) return false;
  }
  int shift = 0;
  if (*s == 'k' || *s == 'K') shift = 10;
  if (*s == 'm' || *s == 'M') shift = 20;
  if (*s == 'g' || *s == 'G') shift = 30;
  if (shift) {
    s++;
    if (*s == 'i' || *s == 'I') s++;
    if (*s == 'b' || *s == 'B') s++;
  }
  v <<= shift;
  if (*s || v < 1 || v > ((uint64_t)1 << 40)) return false;
  *out = (int64_t)v;
  return true;
}

/* End of option parsing (options.c): ALLOT_PROF, ALLOT_PROF_RATE,
 * ALLOT_PROF_OUT. Runs inside the first malloc: no allocation. */
static const char *const yes[] = {"1", "on", "yes", "true", NULL};
static const char *const no[] = {"0", "off", "no", "false", NULL};

/* The profile asked for (ALLOT_PROF, not "no"): the rest of
 * prof_configure, out of the code every process runs at start-up (its
 * tier, cmake/hot-functions.txt). */
static NOINLINE void prof_configure_on(const char *on) {
  if (!word_in(on, yes)) {
    warn("ignoring invalid ALLOT_PROF=", on, " (valid: 0, 1)");
    return;
  }
  if (g.slow_mode) {
    warn("ALLOT_PROF ignored: statistics, debug and secure modes take the ",
         "checked path", "");
    return;
  }
  const char *r = getenv("ALLOT_PROF_RATE");
  if (r && *r && !parse_size(r, &rate))
    warn("ignoring invalid ALLOT_PROF_RATE=", r,
         " (valid: 1 to 2^40 bytes, K, M or G suffix); using 512K");
  const char *o = getenv("ALLOT_PROF_OUT");
  if (!o || !*o) o = "allot-prof.%p";
  size_t n = strlen(o);
  if (n >= sizeof out_path) n = sizeof out_path - 1;
  memcpy(out_path, o, n);
  out_path[n] = 0;
  tables_init();
  os_lock_init(&lock);
  g.prof = 1;
}

void prof_configure(void) {
  if (getauxval(AT_SECURE)) return;
  const char *on = getenv("ALLOT_PROF");
  if (!on || !*on || word_in(on, no)) return;
  prof_configure_on(on);
}

/* Called by heap.c's fork handlers: this lock before allot's, since a
 * sample allocates under it. Whether it was taken is kept, for a fork while
 * prof_start runs (another thread's). */
static bool fork_locked;
void prof_fork_prepare(void) {
  /* set up for the profile (ready implies it) or for debug mode's sites */
  fork_locked = atomic_load_explicit(&unwind_on, memory_order_acquire);
  if (!fork_locked) return;
  os_lock(&lock);
#if defined(__x86_64__)
  os_lock(&ulock);
#endif
}
void prof_fork_parent(void) {
  if (!fork_locked) return;
#if defined(__x86_64__)
  os_unlock(&ulock);
#endif
  os_unlock(&lock);
}
void prof_fork_child(void) {
  if (!fork_locked) return;
#if defined(__x86_64__)
  os_lock_init(&ulock);
#endif
  os_lock_init(&lock);
}

/* ALLOT_PROF_CHECK=1 (not in set-user-ID programs): both unwinders,
 * compared */
static bool check_asked(void) {
  const char *chk = getenv("ALLOT_PROF_CHECK");
  return !getauxval(AT_SECURE) && chk && chk[0] == '1';
}

/* The unwinder: libgcc's functions (which may load libgcc_s: at start-up,
 * outside malloc), allot's code range and the walk's tables. Run by the
 * constructors only (one thread). False without libgcc_s. */
static NOINLINE bool unwinder_start(void) {
  if (atomic_load_explicit(&unwind_on, memory_order_relaxed)) return true;
  uw = os_unwind();
  if (!uw) return false;
  /* allot's own code, when it is a library of its own: its frames lead
   * every stack and are dropped. Linked into the program, nothing is dropped
   * here (the command leaves out allot's functions by name). */
  uintptr_t lo, hi;
  bool shared;
  if (os_code_range((const void *)(uintptr_t)&unwinder_start, &lo, &hi,
                    &shared) &&
      shared) {
    self_lo = lo;
    self_hi = hi;
  }
#if defined(__x86_64__)
  os_lock_init(&ulock);
  urules = os_map(URULES * sizeof *urules); /* NULL: libgcc's only */
  walks = os_map(WALKS * sizeof *walks);    /* NULL: no walk kept */
#endif
  atomic_store_explicit(&unwind_on, 1, memory_order_release);
  return true;
}

/* Debug mode's allocation sites (checked.c) are taken by this unwinder:
 * libgcc's took about 1.5 k instructions a frame, 87 % of a debug run of
 * sed. Called from checked.c's constructor in debug mode, where the profile
 * is off (prof_configure). */
bool prof_unwind_start(int frames) {
  if (!unwinder_start()) return false;
  walk_frames = frames < PROF_FRAMES ? frames : PROF_FRAMES;
  sites_on = true;
  check_unwind = check_asked();
  uintptr_t ip[PROF_FRAMES]; /* warmed up: its first walk binds what it uses */
  prof_unwind(ip, PROF_FRAMES);
  return true;
}

/* ALLOT_PROF_CHECK=1 was set for debug mode's sites (checked.c compares) */
bool prof_unwind_checked(void) {
  return check_unwind;
}

/* Up to max return addresses outside allot into out; -1 where only
 * libgcc's unwinder can (another architecture, allot linked into the
 * program, a frame it does not follow, no prof_unwind_start). */
int prof_unwind(uintptr_t *out, int max) {
#if defined(__x86_64__)
  if (!sites_on || !urules || !self_hi) return -1;
  uintptr_t ip[PROF_FRAMES]; /* a walk the profile kept may be longer */
  walk_ref_t ref;
  int n = capture_fast(ip, &ref); /* with lock held, unless -1 */
  if (n < 0) return -1;
  os_unlock(&lock);
  if (n > max) n = max;
  memcpy(out, ip, (size_t)n * sizeof *out);
  return n;
#else
  (void)out;
  (void)max;
  return -1;
#endif
}

/* Before main: the tables, allot's code range, the unwinder warmed up (its
 * first use loads and binds what it needs, outside malloc). */
static NOINLINE void prof_start_on(void);
static __attribute__((constructor)) void prof_start(void) {
  /* the environment read here, not through allot's start-up (which stays
   * at the first malloc); prof_configure decides, with the modes known */
  const char *on = getenv("ALLOT_PROF");
  if (getauxval(AT_SECURE) || !on || !word_in(on, yes)) return;
  prof_start_on();
}

/* prof_start with ALLOT_PROF set: out of the code every process runs */
static NOINLINE void prof_start_on(void) {
  if (!unwinder_start()) {
    warn("ALLOT_PROF: no unwinder (libgcc_s.so.1); ", "not profiling", "");
    return;
  }
  start_ns = now_ns();
  start_ticks = ticks();
  seed = os_random_seed();
  os_populate(filter_count, sizeof filter_count);
  os_populate(prof_filter_sum, sizeof prof_filter_sum);
  check_unwind = check_asked();
  uintptr_t ip[PROF_FRAMES];
  walk_ref_t ref;
  capture(ip, &ref); /* takes lock */
  os_unlock(&lock);
  atomic_store_explicit(&ready, 1, memory_order_release);
}

/* ---- the profile, written at exit ----------------------------------------
 */

typedef struct out {
  int fd;
  char *buf;
  size_t n, cap;
} out_t;

static void out_flush(out_t *o) {
  size_t off = 0;
  while (off < o->n) {
    ssize_t w = write(o->fd, o->buf + off, o->n - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  o->n = 0;
}
static void out_str(out_t *o, const char *s) {
  size_t len = strlen(s);
  if (o->n + len > o->cap) out_flush(o);
  if (len > o->cap) len = o->cap;
  memcpy(o->buf + o->n, s, len);
  o->n += len;
}
static void out_dec(out_t *o, int64_t v) {
  char t[24];
  if (v < 0) {
    out_str(o, "-");
    v = -v;
  }
  os_fmt_dec(t, (size_t)v);
  out_str(o, t);
}
static void out_kv(out_t *o, const char *k, int64_t v) {
  out_str(o, k);
  out_str(o, " ");
  out_dec(o, v);
  out_str(o, "\n");
}

/* ALLOT_PROF_OUT with %p replaced by the pid */
static void out_name(char *name, size_t cap) {
  char pid[24];
  os_fmt_dec(pid, (size_t)getpid());
  size_t n = 0;
  for (const char *s = out_path; *s && n + 24 < cap; s++) {
    if (s[0] == '%' && s[1] == 'p') {
      for (const char *d = pid; *d; d++)
        name[n++] = *d;
      s++;
    } else {
      name[n++] = *s;
    }
  }
  name[n] = 0;
}

static NOINLINE void prof_write(void) {
  char name[sizeof out_path + 32];
  out_name(name, sizeof name);
  int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    warn("ALLOT_PROF: cannot write the profile to ", name, "");
    return;
  }
  size_t cap = (size_t)64 << 10;
  out_t o = {fd, os_map(cap), 0, cap};
  if (!o.buf) {
    close(fd);
    return;
  }
  os_lock(&lock);
  cuts_fold(&T);
  uint64_t end = now_ns(), end_ticks = ticks();
  if (live_total > peak_total) { /* the exit is the peak */
    epoch++;
    peak_total = live_total;
    peak_ticks = end_ticks;
  }
  double ns_per_tick =
      end_ticks > start_ticks
          ? (double)(end - start_ns) / (double)(end_ticks - start_ticks)
          : 0;
  int64_t peak_ns =
      peak_ticks > start_ticks
          ? (int64_t)((double)(peak_ticks - start_ticks) * ns_per_tick)
          : 0;
  out_str(&o, "allot-prof 1\n");
  out_kv(&o, "pid", getpid());
  out_kv(&o, "rate", rate);
  out_kv(&o, "run_ns", (int64_t)(end - start_ns));
  out_kv(&o, "samples", (int64_t)taken);
  out_kv(&o, "dropped", (int64_t)dropped);
  out_kv(&o, "sampling_ns", (int64_t)((double)busy_ticks * ns_per_tick));
  out_kv(&o, "unwind_fallbacks", (int64_t)unwind_fallbacks);
  out_kv(&o, "unwind_mismatches", (int64_t)unwind_mismatches);
#if defined(__x86_64__)
  out_kv(&o, "unwind_reused", (int64_t)walks_reused);
#endif
  out_kv(&o, "cut_lists", (int64_t)cut_lists);
  out_kv(&o, "cut_lists_whole", (int64_t)cut_lists_whole);
  out_kv(&o, "peak_bytes", peak_total);
  out_kv(&o, "peak_ns", peak_ns);
  out_kv(&o, "exit_bytes", live_total);
  out_kv(&o, "stacks", (int64_t)nstacks);
  /* s peak_bytes peak_n exit_bytes exit_n total_bytes total_n depth frames */
  for (size_t i = 0; i < nstacks; i++) {
    pstack_t *s = &stacks[i];
    bool same = s->epoch != epoch; /* unchanged since the peak */
    out_str(&o, "s ");
    out_dec(&o, same ? s->live : s->snap);
    out_str(&o, " ");
    out_dec(&o, same ? s->live_n : s->snap_n);
    out_str(&o, " ");
    out_dec(&o, s->live);
    out_str(&o, " ");
    out_dec(&o, s->live_n);
    out_str(&o, " ");
    out_dec(&o, s->total);
    out_str(&o, " ");
    out_dec(&o, s->total_n);
    out_str(&o, " ");
    out_dec(&o, s->depth);
    for (uint32_t k = 0; k < s->depth; k++) {
      char hex[24];
      os_fmt_hex(hex, s->frames[k]);
      out_str(&o, " ");
      out_str(&o, hex);
    }
    out_str(&o, "\n");
  }
  os_unlock(&lock);
  /* the mappings, so that the command can name the frames afterwards */
  out_str(&o, "maps\n");
  out_flush(&o);
  int mfd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (mfd >= 0) {
    ssize_t r;
    while ((r = read(mfd, o.buf, o.cap)) > 0) {
      o.n = (size_t)r;
      out_flush(&o);
    }
    close(mfd);
  }
  out_str(&o, "end\n");
  out_flush(&o);
  close(fd);
  os_unmap(o.buf, cap);
}

/* Every process runs this at exit, and only its test when not profiling:
 * it is in the core tier of the code (cmake/hot-functions.txt), the
 * writing (6 KiB) with the cold code. */
static __attribute__((destructor)) void prof_finish(void) {
  /* g.prof first: every process runs this, and `ready` lies on a page of
   * the profiler's own that a read alone makes resident where the kernel
   * maps no zero page for it (docs/memory.md, session 23) */
  if (!g.prof || !atomic_load_explicit(&ready, memory_order_acquire)) return;
  prof_write();
}
