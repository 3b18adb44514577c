/* os.c: everything allot asks of the kernel.
 *
 * Mapping and unmapping, aligned reservations, giving pages back (madvise),
 * moving mappings (mremap), the clock, the random seed, a futex lock that
 * works before libc's threads are set up and after fork, finding libgcc's
 * unwinder, and fatal error reports that use nothing but write(2) and
 * abort(). No layer above calls the kernel directly. */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

INTERNAL os_stats_t os_stats;

#ifdef ALLOT_TEST_HOOKS
/* Test builds only (the hostile_osfail test): make kernel calls that can fail
 * fail on demand, so every caller's failure path runs. Calls are counted from
 * the last allot_test_fail_os(); calls first .. first+count-1 fail with
 * ENOMEM. The label of the last failed call tells the test which kind of call
 * it hit. */
static _Atomic long hook_calls, hook_first, hook_count;
static const char *_Atomic hook_site;
__attribute__((visibility("default"))) void allot_test_fail_os(long first,
                                                               long count) {
  atomic_store(&hook_calls, 0);
  atomic_store(&hook_count, count);
  atomic_store(&hook_first, first);
}
__attribute__((visibility("default"))) long allot_test_os_calls(void) {
  return atomic_load(&hook_calls);
}
__attribute__((visibility("default"))) const char *allot_test_os_site(void) {
  return atomic_load(&hook_site);
}
/* Hold a lock: the next time any thread takes the lock at `lock`, it keeps
 * it `us` microseconds before going on, and allot_test_holding() says 1
 * meanwhile (2 once it let go), so that a test can fork while a lock is held
 * for certain (hostile/forkheld.c). allot_test_lock names the locks. */
static os_lock_t *_Atomic hold_lock;
static _Atomic long hold_us;
static _Atomic int holding;
__attribute__((visibility("default"))) void allot_test_hold_lock(void *lock,
                                                                 long us) {
  atomic_store(&holding, 0);
  atomic_store(&hold_us, us);
  atomic_store(&hold_lock, (os_lock_t *)lock);
}
__attribute__((visibility("default"))) int allot_test_holding(void) {
  return atomic_load(&holding);
}
static void hook_hold(os_lock_t *l) {
  os_lock_t *want = l;
  if (atomic_load_explicit(&hold_lock, memory_order_relaxed) != l ||
      !atomic_compare_exchange_strong(&hold_lock, &want, NULL))
    return;
  long us = atomic_load(&hold_us);
  struct timespec ts = {us / 1000000, us % 1000000 * 1000};
  atomic_store(&holding, 1);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
  atomic_store(&holding, 2);
}
static os_lock_t brk_lock;
__attribute__((visibility("default"))) void *allot_test_lock(const char *n) {
  os_lock_t *l = NULL;
  if (!strcmp(n, "brk")) l = &brk_lock;
  if (!l) l = options_test_lock(n);
  if (!l) l = heapapi_test_lock(n);
  if (!l) l = segments_test_lock(n);
  if (!l) l = large_test_lock(n);
  if (!l) l = heaps_test_lock(n);
  return l;
}
static bool hook_fail(const char *site) {
  long n = atomic_fetch_add(&hook_calls, 1) + 1;
  long first = atomic_load(&hook_first);
  if (first <= 0 || n < first || n - first >= atomic_load(&hook_count))
    return false;
  atomic_store(&hook_site, site);
  errno = ENOMEM;
  return true;
}
#else
#define hook_fail(site) false
#define hook_hold(l) ((void)0)
#endif

/* ---- the clock ---------------------------------------------------------
 * Read straight from the vDSO, whose function is found once in the auxiliary
 * vector's ELF image, not through libc's clock_gettime: that sits in a
 * 64 KiB window of libc's code that a program which never reads the clock
 * does not otherwise touch, and fault-around made the whole window resident
 * in every such process (64 kB of RSS in bignum, logicmin, cache-scratch,
 * threadchurn; docs/memory.md, "The fixed footprint"). No vDSO, or no such
 * symbol in it: the system call. */
typedef int (*vdso_clock_t)(clockid_t, struct timespec *);
#if defined(__aarch64__)
#define VDSO_CLOCK "__kernel_clock_gettime"
#else
#define VDSO_CLOCK "__vdso_clock_gettime"
#endif
/* an array, not a literal: .rodata is laid out with the hot code, string
 * literals are not (cmake/layout.cmake) */
static const char vdso_name[] = VDSO_CLOCK;
#define VDSO_NONE ((uintptr_t)1)
static _Atomic uintptr_t vdso_clock; /* 0 not looked for, VDSO_NONE, or fn */

static bool name_is(const char *a, const char *b) {
  while (*a && *a == *b) {
    a++;
    b++;
  }
  return *a == *b;
}

static uintptr_t vdso_lookup(void) {
  uintptr_t base = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
  if (!base) return VDSO_NONE;
  const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)base;
  const ElfW(Phdr) *ph = (const ElfW(Phdr) *)(base + eh->e_phoff);
  const ElfW(Dyn) *dyn = NULL;
  uintptr_t bias = 0;
  bool loaded = false;
  for (int i = 0; i < eh->e_phnum; i++) {
    if (ph[i].p_type == PT_LOAD && !loaded) {
      bias = base + ph[i].p_offset - ph[i].p_vaddr;
      loaded = true;
    } else if (ph[i].p_type == PT_DYNAMIC) {
      dyn = (const ElfW(Dyn) *)(base + ph[i].p_offset);
    }
  }
  if (!loaded || !dyn) return VDSO_NONE;
  const char *strtab = NULL;
  const ElfW(Sym) *sym = NULL;
  const Elf32_Word *hash = NULL; /* [1]: the number of symbols */
  for (; dyn->d_tag != DT_NULL; dyn++) {
    if (dyn->d_tag == DT_STRTAB)
      strtab = (const char *)(bias + dyn->d_un.d_ptr);
    else if (dyn->d_tag == DT_SYMTAB)
      sym = (const ElfW(Sym) *)(bias + dyn->d_un.d_ptr);
    else if (dyn->d_tag == DT_HASH)
      hash = (const Elf32_Word *)(bias + dyn->d_un.d_ptr);
  }
  if (!strtab || !sym || !hash) return VDSO_NONE;
  for (Elf32_Word i = 0; i < hash[1]; i++)
    if ((sym[i].st_info & 0xf) == STT_FUNC && sym[i].st_shndx != SHN_UNDEF &&
        name_is(strtab + sym[i].st_name, vdso_name))
      return bias + sym[i].st_value;
  return VDSO_NONE;
}

static void clock_read(clockid_t id, struct timespec *ts) {
  uintptr_t fn = atomic_load_explicit(&vdso_clock, memory_order_relaxed);
  if (unlikely(!fn)) {
    /* threads racing here find the same answer */
    fn = vdso_lookup();
    atomic_store_explicit(&vdso_clock, fn, memory_order_relaxed);
  }
  if (fn != VDSO_NONE && ((vdso_clock_t)fn)(id, ts) == 0) return;
  int saved = errno;
  if (syscall(SYS_clock_gettime, id, ts) != 0) ts->tv_sec = ts->tv_nsec = 0;
  errno = saved;
}

/* Statistics mode: the time spent in the kernel calls below (allot run
 * --stats reports it). Two vDSO clock reads per call, and only then. */
static uint64_t os_clock(void) {
  if (likely(!g.stats)) return 0;
  struct timespec ts;
  clock_read(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void os_clocked(uint64_t t0) {
  if (likely(!t0)) return;
  uint64_t t1 = os_clock();
  if (t1 > t0)
    atomic_fetch_add_explicit(&os_stats.ns, t1 - t0, memory_order_relaxed);
}

static void stat_mapped(ptrdiff_t delta) {
  size_t now = atomic_fetch_add_explicit(&os_stats.mapped, (size_t)delta,
                                         memory_order_relaxed) +
               (size_t)delta;
  size_t peak =
      atomic_load_explicit(&os_stats.mapped_peak, memory_order_relaxed);
  while (now > peak && !atomic_compare_exchange_weak_explicit(
                           &os_stats.mapped_peak, &peak, now,
                           memory_order_relaxed, memory_order_relaxed)) {
  }
}

/* brk as the source of segments: optional, for programs whose address-space
 * layout or kernel accounting prefers it. Memory from brk is never returned
 * with munmap, only purged. */
#ifndef ALLOT_TEST_HOOKS
static os_lock_t brk_lock;
#endif
static uintptr_t brk_lo, brk_hi;

void os_brk_fork(int phase) {
  os_lock_fork(&brk_lock, phase);
}

static void *brk_alloc(size_t size, size_t align) {
  os_lock(&brk_lock);
  uint64_t t0 = os_clock();
  void *cur = sbrk(0);
  void *res = NULL;
  if (cur != (void *)-1 && !hook_fail("sbrk")) {
    uintptr_t start = ((uintptr_t)cur + align - 1) & ~(uintptr_t)(align - 1);
    size_t grow = start - (uintptr_t)cur + size;
    if (sbrk((intptr_t)grow) == cur) {
      res = (void *)start;
      if (!brk_lo) brk_lo = start;
      brk_hi = start + size;
    }
  }
  os_clocked(t0);
  os_unlock(&brk_lock);
  return res;
}

static bool is_brk(const void *p) {
  return (uintptr_t)p >= brk_lo && (uintptr_t)p < brk_hi;
}

void *os_map(size_t size) {
  if (hook_fail("mmap")) return NULL;
  uint64_t t0 = os_clock();
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  os_clocked(t0);
  atomic_fetch_add_explicit(&os_stats.mmaps, 1, memory_order_relaxed);
  if (p == MAP_FAILED) return NULL;
  stat_mapped((ptrdiff_t)size);
  return p;
}

/* Map size bytes at an address that is a multiple of align: map more, then
 * cut off both ends, so the kernel does the placement. */
static void *map_aligned(size_t size, size_t align, int prot) {
  size_t over = size + align;
  if (over < size) return NULL;
  if (hook_fail(prot == PROT_NONE ? "mmap_reserve" : "mmap_aligned"))
    return NULL;
  uint64_t t0 = os_clock();
  void *p = mmap(NULL, over, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  atomic_fetch_add_explicit(&os_stats.mmaps, 1, memory_order_relaxed);
  if (p == MAP_FAILED) {
    os_clocked(t0);
    return NULL;
  }
  uintptr_t start = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
  size_t head = start - (uintptr_t)p;
  size_t tail = over - head - size;
  if (head) munmap(p, head);
  if (tail) munmap((void *)(start + size), tail);
  os_clocked(t0);
  return (void *)start;
}

void *os_map_aligned(size_t size, size_t align) {
  if (g.use_brk) {
    void *p = brk_alloc(size, align);
    if (p) {
      stat_mapped((ptrdiff_t)size);
      return p;
    }
  }
  void *p = map_aligned(size, align, PROT_READ | PROT_WRITE);
  if (p) stat_mapped((ptrdiff_t)size);
  /* ALLOT_HUGE_PAGES (docs/memory.md): 1 (on) asks for transparent huge
   * pages on every segment and large mapping, 0 (off) refuses them even where
   * the system gives them unasked; 2 (auto) leaves the system's policy. */
  if (p && g.huge_pages != 2) {
    uint64_t t0 = os_clock();
    madvise(p, size, g.huge_pages == 1 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    os_clocked(t0);
  }
  return p;
}

void *os_reserve_aligned(size_t size, size_t align) {
  return map_aligned(size, align, PROT_NONE);
}

void os_unmap(void *p, size_t size) {
  if (!p || !size) return;
  stat_mapped(-(ptrdiff_t)size);
  if (is_brk(p)) {
    os_purge(p, size);
    return;
  }
  atomic_fetch_add_explicit(&os_stats.munmaps, 1, memory_order_relaxed);
  uint64_t t0 = os_clock();
  munmap(p, size);
  os_clocked(t0);
}

void os_purge(void *p, size_t size) {
  uintptr_t lo = ((uintptr_t)p + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1);
  uintptr_t hi = ((uintptr_t)p + size) & ~(uintptr_t)(OS_PAGE - 1);
  if (hi <= lo) return;
  atomic_fetch_add_explicit(&os_stats.purges, 1, memory_order_relaxed);
  uint64_t t0 = os_clock();
  /* ALLOT_PURGE_MADV=free: the kernel takes the pages only under memory
   * pressure (cheaper to reuse, but they stay in RSS until then). Not in
   * debug or secure mode, whose checks rely on purged memory reading zero. */
  if (!g.purge_madv_free || g.debug || g.secure ||
      madvise((void *)lo, hi - lo, MADV_FREE) != 0)
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
  os_clocked(t0);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
/* Fault in and write [p, p + size) now, in one system call (Linux 5.14 and
 * later), else by a write per page: a table's page that is first read maps
 * the kernel's zero page, and the write after it faults again and flushes a
 * TLB entry (the profiler's tables: prof.c). */
void os_populate(void *p, size_t size) {
  uint64_t t0 = os_clock();
  if (madvise(p, size, MADV_POPULATE_WRITE) != 0)
    for (size_t i = 0; i < size; i += OS_PAGE)
      atomic_store_explicit((_Atomic uint8_t *)p + i, 0, memory_order_relaxed);
  os_clocked(t0);
}

bool os_protect_none(void *p, size_t size) {
  if (hook_fail("mprotect")) return false;
  uint64_t t0 = os_clock();
  bool ok = mprotect(p, size, PROT_NONE) == 0;
  os_clocked(t0);
  return ok;
}

bool os_commit(void *p, size_t size) {
  uint64_t t0 = os_clock();
  bool ok = mprotect(p, size, PROT_READ | PROT_WRITE) == 0;
  os_clocked(t0);
  if (!ok) return false;
  stat_mapped((ptrdiff_t)size);
  return true;
}

void os_unreserve(void *p, size_t size) {
  if (!p || !size) return;
  uint64_t t0 = os_clock();
  munmap(p, size);
  os_clocked(t0);
}

/* Move a mapping to target (a reservation made by os_reserve_aligned) without
 * copying: the kernel moves the page tables. */
void *os_remap_fixed(void *old, size_t old_size, size_t new_size,
                     void *target) {
  if (hook_fail("mremap_fixed")) return NULL;
  atomic_fetch_add_explicit(&os_stats.remaps, 1, memory_order_relaxed);
  uint64_t t0 = os_clock();
  void *p =
      mremap(old, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  os_clocked(t0);
  if (p == MAP_FAILED) return NULL;
  stat_mapped((ptrdiff_t)new_size - (ptrdiff_t)old_size);
  return p;
}

bool os_remap_inplace(void *old, size_t old_size, size_t new_size) {
  if (is_brk(old) || hook_fail("mremap_inplace")) return false;
  atomic_fetch_add_explicit(&os_stats.remaps, 1, memory_order_relaxed);
  uint64_t t0 = os_clock();
  void *p = mremap(old, old_size, new_size, 0);
  os_clocked(t0);
  if (p == MAP_FAILED) return false;
  stat_mapped((ptrdiff_t)new_size - (ptrdiff_t)old_size);
  return true;
}

/* The CPUs this process may run on (its affinity when first asked; at
 * least 1), and giving the CPU to another runnable thread: heap.c's wait
 * for an exiting thread's heap (heap_wait_exiting). */
int os_cpus(void) {
  static _Atomic int cpus;
  int n = atomic_load_explicit(&cpus, memory_order_relaxed);
  if (n) return n;
  unsigned long set[16] = {0}; /* 1024 CPUs */
  long got = syscall(SYS_sched_getaffinity, 0, sizeof set, set);
  n = 0;
  /* not __builtin_popcountl: without -mpopcnt it calls libgcc's
   * __popcountdi2, linked into the cold code (a 44 kB window resident) */
  for (long i = 0; i < got / (long)sizeof set[0]; i++)
    for (unsigned long w = set[i]; w; w &= w - 1)
      n++;
  /* a mask too small for the machine (EINVAL): more than it holds */
  if (got < 0) n = (int)sizeof set * 8;
  if (n < 1) n = 1;
  atomic_store_explicit(&cpus, n, memory_order_relaxed);
  return n;
}

void os_yield(void) {
  syscall(SYS_sched_yield);
}

uint64_t os_now_ms(void) {
  struct timespec ts;
  clock_read(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t os_random_seed(void) {
  uint64_t x = 0x243F6A8885A308D3ull;
  /* the kernel's 16 random bytes need not be 8-byte aligned */
  const uint8_t *r = (const uint8_t *)getauxval(AT_RANDOM);
  if (r) {
    uint64_t r0, r1;
    memcpy(&r0, r, 8);
    memcpy(&r1, r + 8, 8);
    x ^= r0 ^ (r1 << 1);
  }
  struct timespec ts;
  clock_read(CLOCK_MONOTONIC, &ts);
  x ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull;
  x ^= (uintptr_t)&x; /* stack address: ASLR adds entropy */
  /* splitmix64 finaliser */
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

/* ---- fork handlers -----------------------------------------------------
 * Registered with pthread_atfork only once the process has a second thread.
 * A fork can find one of allot's locks held only if another thread holds it,
 * and glibc's registration reads a line of libc's read-only data that a C
 * program does not otherwise touch: fault-around made its 64 KiB window
 * resident, 4 % of a small program's peak RSS (bench/bignum: 1724 against
 * glibc's own 1572 kB, exact, from /proc/PID/smaps).
 *
 * The registration must be done while the process has one thread: done
 * later, it could wait for the handler list's lock that a fork in another
 * thread holds from its prepare handlers to its parent and child handlers
 * (a fork whose child would then start with a lock taken, or deadlock, if
 * that thread allocated meanwhile). glibc's pthread_create clears
 * __libc_single_threaded and then, before the thread exists, calls calloc
 * for the new thread's TLS vector (allocate_dtv; a thread's first stack is
 * never a cached one), so calloc checks (os_fork_check, internal.h;
 * test/fork_lazy.c checks that the first thread finds them registered):
 * the thread creating the first one, allot's purge thread included,
 * registers the handlers there, while it is the only thread. os_lock and
 * os_trylock check too, as a fallback for a thread that came some other
 * way; a registration by a process that has since forked (the word holds
 * its pid) is started again in the child. */
static void (*fork_prepare_fn)(void), (*fork_parent_fn)(void),
    (*fork_child_fn)(void);
static _Atomic int fork_fns_set;
/* futex word: 0 not yet, FORK_ARMED done, else 2 + 2 * pid of the process
 * registering them */
INTERNAL _Atomic int os_fork_state;
static __thread bool fork_arming; /* pthread_atfork may itself allocate */

void os_fork_arm(void) {
  if (fork_arming || !atomic_load_explicit(&fork_fns_set, memory_order_acquire))
    return; /* os_fork_handlers registers them when it gets them */
  int mine = 2 + 2 * (int)getpid();
  for (;;) {
    int seen = 0;
    if (atomic_compare_exchange_strong(&os_fork_state, &seen, mine)) {
      fork_arming = true;
      pthread_atfork(fork_prepare_fn, fork_parent_fn, fork_child_fn);
      fork_arming = false;
      atomic_store_explicit(&os_fork_state, FORK_ARMED, memory_order_release);
      syscall(SYS_futex, &os_fork_state, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL,
              NULL, 0);
      return;
    }
    if (seen == FORK_ARMED) return;
    if (seen != mine) {
      /* a parent's registration, cut off by the fork that made us */
      atomic_compare_exchange_strong(&os_fork_state, &seen, 0);
      continue;
    }
    /* another thread of ours is registering: no lock before it is done */
    syscall(SYS_futex, &os_fork_state, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
  }
}

void os_fork_handlers(void (*prepare)(void), void (*parent)(void),
                      void (*child)(void)) {
  fork_prepare_fn = prepare;
  fork_parent_fn = parent;
  fork_child_fn = child;
  atomic_store_explicit(&fork_fns_set, 1, memory_order_release);
#if ALLOT_OVERRIDE
  if (!single_threaded()) os_fork_arm();
#else
  /* the allot_* names alone: the program's threads get their TLS vectors
   * from the C library's calloc, not ours, so register them now */
  os_fork_arm();
#endif
}

/* A three-state futex lock (0 free, 1 taken, 2 taken with waiters): no
 * dependency on libpthread's initialisation, trivially reset after fork. */
void os_lock_init(os_lock_t *l) {
  atomic_store(&l->state, 0);
}

static ALWAYS_INLINE void lock_acquire(os_lock_t *l) {
  int c = 0;
  if (likely(atomic_compare_exchange_strong_explicit(
          &l->state, &c, 1, memory_order_acquire, memory_order_relaxed)))
    return;
  for (int spin = 0; spin < 64; spin++) {
    c = 0;
    if (atomic_load_explicit(&l->state, memory_order_relaxed) == 0 &&
        atomic_compare_exchange_weak_explicit(
            &l->state, &c, 1, memory_order_acquire, memory_order_relaxed))
      return;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  }
  if (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) == 0) return;
  while (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) != 0)
    syscall(SYS_futex, &l->state, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

void os_lock(os_lock_t *l) {
  os_fork_check();
  lock_acquire(l);
  hook_hold(l);
}

struct code_query {
  uintptr_t at, lo, hi;
  bool found, shared;
};

static int code_visit(struct dl_phdr_info *info, size_t size, void *arg) {
  struct code_query *q = arg;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (q->at >= lo && q->at < lo + ph->p_memsz) {
      q->lo = lo;
      q->hi = lo + ph->p_memsz;
      q->found = true;
      q->shared = info->dlpi_name && info->dlpi_name[0];
      return 1;
    }
  }
  (void)size;
  return 0;
}

bool os_code_range(const void *code, uintptr_t *lo, uintptr_t *hi,
                   bool *shared) {
  struct code_query q = {.at = (uintptr_t)code};
  dl_iterate_phdr(code_visit, &q);
  *lo = q.lo;
  *hi = q.hi;
  *shared = q.shared;
  return q.found;
}

/* ---- the unwinder ------------------------------------------------------
 * Backtraces (debug mode's allocation sites, the heap profile) come from
 * libgcc's unwinder. The static library refers to it by name, so a program's
 * link brings it in (libgcc_s, or libgcc_eh when fully static). liballot.so
 * is built with ALLOT_SHARED_LIB and does not link libgcc_s: every process
 * that preloads allot would map it (84 KiB of RSS) for two modes that few
 * use. It looks the unwinder up at its first use instead: in the process (a
 * C++ program has libgcc_s loaded, or another unwinder with the same
 * interface), else in libgcc_s.so.1 loaded then. dlopen allocates, so the
 * modes call os_unwind() first from their constructors, outside malloc. */
#if ALLOT_SHARED_LIB
static os_unwind_t unwind_fns;
static bool unwind_found;
static _Atomic int unwind_state; /* 0 not looked for, 1 looking, 2 done */

static bool unwind_lookup(void *lib) {
  unwind_fns.backtrace = (_Unwind_Reason_Code(*)(
      _Unwind_Trace_Fn, void *))dlsym(lib, "_Unwind_Backtrace");
  unwind_fns.get_ip =
      (_Unwind_Ptr(*)(struct _Unwind_Context *))dlsym(lib, "_Unwind_GetIP");
  unwind_fns.find_fde = (const void *(*)(void *, struct dwarf_eh_bases *))dlsym(
      lib, "_Unwind_Find_FDE");
  return unwind_fns.backtrace && unwind_fns.get_ip && unwind_fns.find_fde;
}

const os_unwind_t *os_unwind(void) {
  int state = atomic_load_explicit(&unwind_state, memory_order_acquire);
  if (likely(state == 2)) return unwind_found ? &unwind_fns : NULL;
  /* another thread is looking: no backtrace this once, rather than a wait
   * (or a lock that a fork could leave taken) */
  if (state == 1 || !atomic_compare_exchange_strong(&unwind_state, &state, 1))
    return NULL;
  bool found = unwind_lookup(RTLD_DEFAULT);
  if (!found) {
    void *lib = dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_LOCAL);
    found = lib && unwind_lookup(lib); /* never closed */
  }
  unwind_found = found;
  atomic_store_explicit(&unwind_state, 2, memory_order_release);
  return found ? &unwind_fns : NULL;
}
#else
extern const void *_Unwind_Find_FDE(void *pc, struct dwarf_eh_bases *bases);

const os_unwind_t *os_unwind(void) {
  static const os_unwind_t direct = {_Unwind_Backtrace, _Unwind_GetIP,
                                     _Unwind_Find_FDE};
  return &direct;
}
#endif

bool os_trylock(os_lock_t *l) {
  os_fork_check();
  int c = 0;
  bool ok = atomic_compare_exchange_strong_explicit(
      &l->state, &c, 1, memory_order_acquire, memory_order_relaxed);
  if (ok) hook_hold(l);
  return ok;
}

void os_unlock(os_lock_t *l) {
  if (atomic_exchange_explicit(&l->state, 0, memory_order_release) == 2)
    syscall(SYS_futex, &l->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

void os_write_err(const char *s) {
  size_t n = strlen(s);
  while (n) {
    ssize_t w = write(2, s, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    s += w;
    n -= (size_t)w;
  }
}

void os_fmt_hex(char *out, uintptr_t v) {
  static const char digits[] = "0123456789abcdef";
  char tmp[2 + 16 + 1];
  int n = 0;
  do {
    tmp[n++] = digits[v & 15];
    v >>= 4;
  } while (v);
  *out++ = '0';
  *out++ = 'x';
  while (n)
    *out++ = tmp[--n];
  *out = 0;
}

void os_fmt_dec(char *out, size_t v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n)
    *out++ = tmp[--n];
  *out = 0;
}

/* The one-line report of detected heap corruption. Uses only write() and
 * abort(): after corruption nothing that allocates can be trusted. */
void fault(const char *fn, const char *what, const void *addr) {
  char line[256], hex[24];
  os_fmt_hex(hex, (uintptr_t)addr);
  line[0] = 0;
  strcat(line, "allot: ");
  strncat(line, fn, 40);
  strcat(line, "(): ");
  strncat(line, what, 100);
  strcat(line, " at ");
  strcat(line, hex);
  strcat(line, "\n");
  os_write_err(line);
  abort();
}

/* allot cuts memory at 4 KiB (OS_PAGE): purges, secure mode's guard pages,
 * a large block's header, the ends trimmed off aligned mappings. A kernel
 * with bigger pages (aarch64 ones may run 16 or 64 KiB) rounds madvise and
 * mprotect ranges out to its own pages, so a purge would discard and a guard
 * would protect live blocks beside them, and munmap of the trimmed ends
 * fails. allot stops at start-up there, before its first mapping, rather
 * than corrupt memory later (docs/design.md, "Page size"). */
#ifdef ALLOT_TEST_HOOKS
static _Atomic unsigned long hook_page_size; /* 0: the kernel's */
__attribute__((visibility("default"))) void
allot_test_page_size(unsigned long size) {
  atomic_store(&hook_page_size, size);
}
#define kernel_page_size()                                                     \
  (atomic_load(&hook_page_size) ? atomic_load(&hook_page_size)                 \
                                : getauxval(AT_PAGESZ))
#else
#define kernel_page_size() getauxval(AT_PAGESZ)
#endif

static COLD _Noreturn void page_size_fault(unsigned long size) {
  char num[24];
  os_fmt_dec(num, size);
  os_write_err("allot: the kernel's page size is ");
  os_write_err(num);
  os_write_err(" bytes; allot needs 4096-byte pages\n");
  abort();
}

void os_init(void) {
  unsigned long page = kernel_page_size(); /* 0: no auxiliary vector entry */
  if (unlikely(page != OS_PAGE && page != 0)) page_size_fault(page);
  os_lock_init(&brk_lock);
}

/* ---- the code's tiers ----------------------------------------------------
 * The kernel maps a file's pages by the 64 KiB window around a fault,
 * clamped to the mapping that holds it. cmake/layout.cmake lays the code
 * the default mode runs out in tiers (cmake/hot-functions.txt): the core
 * first, then each tier after ALIGN(OS_PAGE) and one of these markers, then
 * the cold code. Giving the tiers "threads" and "rest" another advice splits
 * the code mapping into one mapping per tier, so a tier becomes resident
 * only when code of it runs, and then no more than itself: a small
 * single-threaded program has 28 kB of allot's code resident instead of 64
 * (docs/memory.md, "The code's tiers"). It must be done before any tier's
 * code runs, so the IFUNC resolver does it, from a segment of its own
 * (BOOT_CODE). MADV_RANDOM, because it changes nothing else there: it turns
 * off readahead on a page-cache miss, which cold code does not need, and
 * fault-around does not read it. Distinct bodies, so that no pass folds two
 * markers into one address; sections of their own, outside .text.*, so that
 * no "file os.c" rule of the layout takes them. */
#define TIER_MARK(name, n)                                                     \
  NOINLINE __attribute__((section(".allot_tier." #name))) int os_tier_##name(  \
      void) {                                                                  \
    return n;                                                                  \
  }
TIER_MARK(threads, 1)
TIER_MARK(medium, 2)
TIER_MARK(rest, 3)
TIER_MARK(cold, 4)

/* madvise(2) by the system call itself: this runs from the IFUNC resolver
 * (heap.c), while the loader is still relocating liballot.so. */
static BOOT_CODE long raw_madvise(uintptr_t addr, size_t len, int advice) {
#if defined(__x86_64__)
  long r;
  __asm__ volatile("syscall"
                   : "=a"(r)
                   : "0"((long)SYS_madvise), "D"(addr), "S"(len),
                     "d"((long)advice)
                   : "rcx", "r11", "memory");
  return r;
#elif defined(__aarch64__)
  register long x8 __asm__("x8") = SYS_madvise;
  register long x0 __asm__("x0") = (long)addr;
  register long x1 __asm__("x1") = (long)len;
  register long x2 __asm__("x2") = advice;
  __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
  return x0;
#else
  (void)addr, (void)len, (void)advice;
  return -1;
#endif
}

BOOT_CODE void os_code_tiers(void) {
  uintptr_t t = (uintptr_t)os_tier_threads, m = (uintptr_t)os_tier_medium,
            r = (uintptr_t)os_tier_rest, c = (uintptr_t)os_tier_cold;
  /* without the layout (ALLOT_LAYOUT=OFF, another linker, liballot.a) the
   * markers are wherever the compiler put them: nothing to split */
  if (((t | m | r | c) & (OS_PAGE - 1)) || !(t < m && m < r && r < c)) return;
  raw_madvise(t, m - t, MADV_RANDOM);
  raw_madvise(r, c - r, MADV_RANDOM);
}
