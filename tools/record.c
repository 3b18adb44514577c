/* record.c: liballot-record.so, the recorder `allot record` preloads ahead
 * of the allocator. It owns the raw recording (trace.h): every allocation
 * call of the program -- the C, POSIX and glibc functions and every form of
 * C++ new and delete -- is passed to the next definition (allot, a peer, or
 * glibc: found with dlsym(RTLD_NEXT)) and noted in a per-thread buffer,
 * which goes to the file whole, with one O_APPEND write, when it fills, when
 * the thread exits and at process exit.
 *
 * Why the care taken:
 * - dlsym itself may allocate (glibc's error state) before the real functions
 *   are known: those requests come from a static bootstrap buffer, and frees
 *   of it are ignored.
 * - Calls made inside a forwarded call (libstdc++'s operator new calling
 *   malloc) are not recorded twice: a per-thread depth counter.
 * - Ordering across threads comes from one atomic counter, read after an
 *   allocation returns and before a free is made, so the converter can match
 *   every free to its block by address (trace.h).
 * - Nothing here calls malloc: buffers come from mmap.
 * - Cheap per call: a cycle-counter read rather than clock_gettime, events
 *   packed as varint differences (about 10 bytes), and no fence on the
 *   owner's side of the exit handshake (membarrier on the exiting side).
 * Environment: ALLOT_RECORD_FILE, the path ("%p": the pid; one file per
 * process, so forked children record separately). */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "procstatus.h"
#include "trace.h"

#define EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define TLS __thread __attribute__((tls_model("initial-exec")))

/* ---- the next allocator ------------------------------------------------- */

static struct next {
  void *(*malloc)(size_t);
  void *(*calloc)(size_t, size_t);
  void *(*realloc)(void *, size_t);
  void *(*reallocarray)(void *, size_t, size_t);
  void (*free)(void *);
  void *(*aligned_alloc)(size_t, size_t);
  int (*posix_memalign)(void **, size_t, size_t);
  void *(*memalign)(size_t, size_t);
  void *(*valloc)(size_t);
  void *(*pvalloc)(size_t);
  size_t (*usable)(void *);
  void (*free_sized)(void *, size_t);
  void (*free_aligned_sized)(void *, size_t, size_t);
  void *(*new_[8])(size_t, ...); /* operator new forms, see new_names */
  void (*delete_[12])(void *, ...);
} next;

static _Atomic int resolved;
static TLS volatile int resolving; /* inside dlsym: bootstrap buffer */

static const char *new_names[8] = {
    "_Znwm",
    "_Znam",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
};
static const char *delete_names[12] = {
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

static void *next_sym(const char *name) {
  return dlsym(RTLD_NEXT, name);
}

static void resolve(void) {
  resolving = 1;
  next.malloc = next_sym("malloc");
  next.calloc = next_sym("calloc");
  next.realloc = next_sym("realloc");
  next.reallocarray = next_sym("reallocarray");
  next.free = next_sym("free");
  next.aligned_alloc = next_sym("aligned_alloc");
  next.posix_memalign = next_sym("posix_memalign");
  next.memalign = next_sym("memalign");
  next.valloc = next_sym("valloc");
  next.pvalloc = next_sym("pvalloc");
  next.usable = next_sym("malloc_usable_size");
  next.free_sized = next_sym("free_sized");
  next.free_aligned_sized = next_sym("free_aligned_sized");
  for (int i = 0; i < 8; i++)
    next.new_[i] = next_sym(new_names[i]);
  for (int i = 0; i < 12; i++)
    next.delete_[i] = next_sym(delete_names[i]);
  resolving = 0;
  if (!next.malloc || !next.free || !next.calloc || !next.realloc) {
    static const char msg[] =
        "allot record: the allocator below the recorder was not found\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    abort();
  }
  atomic_store_explicit(&resolved, 1, memory_order_release);
}

/* ---- bootstrap buffer: what dlsym asks for before the functions are
 * known. 16-byte header holding the size, for realloc. ---- */

static _Alignas(16) char boot[1 << 16];
static _Atomic size_t boot_used;

static bool is_boot(const void *p) {
  return (const char *)p >= boot && (const char *)p < boot + sizeof boot;
}

static void *boot_alloc(size_t size, size_t align) {
  if (align < 16) align = 16;
  size_t need = (size + 15) & ~(size_t)15;
  for (;;) {
    size_t at = atomic_load(&boot_used);
    size_t start = ((at + 16 + align - 1) & ~(align - 1));
    if (start + need > sizeof boot) return NULL;
    if (atomic_compare_exchange_weak(&boot_used, &at, start + need)) {
      memcpy(boot + start - 8, &size, sizeof size);
      return boot + start; /* never handed out before: zero */
    }
  }
}

static size_t boot_size(const void *p) {
  size_t s;
  memcpy(&s, (const char *)p - 8, sizeof s);
  return s;
}

static bool ready(void) {
  if (likely(atomic_load_explicit(&resolved, memory_order_acquire)))
    return true;
  if (resolving) return false;
  resolve();
  return true;
}

/* ---- per-thread buffers ---------------------------------------------------
 */

#define BUF_BYTES (128 * 1024 - 128)
#define EVENT_MAX 64 /* an event never packs larger */

typedef struct tbuf {
  struct tbuf *next_all;
  _Atomic int busy; /* the owner is writing an event */
  _Atomic int free; /* owner gone: a new thread may take it */
  uint32_t index, os_tid;
  uint32_t count, len;
  uint64_t last_seq, last_ticks, last_addr; /* deltas within the chunk */
  uint8_t data[BUF_BYTES];
} tbuf_t;

static TLS tbuf_t *tb;
static TLS int depth; /* >0: inside a forwarded call, do not record */
/* index + 1 of this thread, kept when its buffer goes at thread exit: calls
 * made after that (by later destructors) are still this thread's */
static TLS uint32_t my_index;
static tbuf_t *_Atomic all_bufs;
static _Atomic uint32_t next_index;
static _Atomic uint64_t seq = 1;
static _Atomic uint64_t lost;
static _Atomic int stopping;
static pthread_key_t exit_key;
static int fd = -1;
static uint64_t start_ns;
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;

static int use_membarrier; /* else the owner fences every event */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A few ns where clock_gettime takes 20-30: the converter scales ticks to
 * ns from the (ticks, ns) pairs in chunk headers. */
static inline uint64_t ticks(void) {
#if defined(__x86_64__)
  return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
  uint64_t v;
  __asm__ volatile("mrs %0, cntvct_el0" : "=r"(v));
  return v;
#else
  return now_ns();
#endif
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p++ = (uint8_t)v;
  return p;
}

static void write_all(const struct iovec *iov, int n) {
  struct iovec v[2];
  memcpy(v, iov, sizeof(struct iovec) * (size_t)n);
  while (n > 0 && fd >= 0) {
    ssize_t w = writev(fd, v, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    while (n > 0 && (size_t)w >= v[0].iov_len) {
      w -= (ssize_t)v[0].iov_len;
      v[0] = v[1];
      n--;
    }
    if (n > 0) {
      v[0].iov_base = (char *)v[0].iov_base + w;
      v[0].iov_len -= (size_t)w;
    }
  }
}

static void flush(tbuf_t *b) {
  if (!b->count) return;
  raw_chunk_t c = {CHUNK_EVENTS, b->index, b->count, b->os_tid,
                   b->len,       0,        ticks(),  now_ns()};
  struct iovec iov[2] = {{&c, sizeof c}, {b->data, b->len}};
  write_all(iov, 2);
  b->count = 0;
  b->len = 0;
  b->last_seq = b->last_ticks = b->last_addr = 0;
}

static void thread_gone(void *arg) {
  tbuf_t *b = arg;
  atomic_store(&b->busy, 1);
  if (atomic_load(&stopping)) { /* the exit flush writes it */
    atomic_store(&b->busy, 0);
    return;
  }
  flush(b);
  atomic_store(&b->busy, 0);
  if (tb == b) tb = NULL;
  atomic_store(&b->free, 1);
}

static tbuf_t *tbuf_get(void) {
  tbuf_t *b = NULL;
  pthread_mutex_lock(&list_lock);
  for (tbuf_t *x = atomic_load(&all_bufs); x; x = x->next_all) {
    int one = 1;
    if (atomic_compare_exchange_strong(&x->free, &one, 0)) {
      b = x;
      break;
    }
  }
  if (!b) {
    b = mmap(NULL, sizeof(tbuf_t), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) {
      pthread_mutex_unlock(&list_lock);
      return NULL;
    }
    b->next_all = atomic_load(&all_bufs);
    atomic_store(&all_bufs, b);
  }
  pthread_mutex_unlock(&list_lock);
  /* a new index for each thread, even on a reused buffer */
  if (!my_index) my_index = atomic_fetch_add(&next_index, 1) + 1;
  b->index = my_index - 1;
  b->os_tid = (uint32_t)syscall(SYS_gettid);
  b->count = 0;
  b->len = 0;
  b->last_seq = b->last_ticks = b->last_addr = 0;
  tb = b;
  pthread_setspecific(exit_key, b);
  return b;
}

/* Note one event. `s` is the sequence number taken at the right moment by
 * the caller (take_seq). */
static void note(uint64_t s, int op, const void *addr, size_t size,
                 size_t aux) {
  tbuf_t *b = tb;
  if (unlikely(!b)) {
    b = tbuf_get();
    if (!b) {
      atomic_fetch_add(&lost, 1);
      return;
    }
  }
  /* The exit flush sets `stopping`, runs membarrier, then reads `busy`:
   * with it, a compiler barrier here is enough (else a full fence). */
  if (likely(use_membarrier)) {
    atomic_store_explicit(&b->busy, 1, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
  } else {
    atomic_store(&b->busy, 1);
  }
  if (unlikely(atomic_load_explicit(&stopping, memory_order_relaxed))) {
    atomic_store(&b->busy, 0);
    return;
  }
  uint64_t t = ticks(), a = (uint64_t)(uintptr_t)addr;
  uint8_t *p = b->data + b->len;
  *p++ = (uint8_t)(op | (size ? RAW_SIZE : 0) | (aux ? RAW_AUX : 0));
  p = put_varint(p, s - b->last_seq);
  p = put_varint(p, t - b->last_ticks);
  int64_t d = (int64_t)(a - b->last_addr);
  p = put_varint(p, ((uint64_t)d << 1) ^ (uint64_t)(d >> 63)); /* zigzag */
  if (size) p = put_varint(p, size);
  if (aux) p = put_varint(p, aux);
  b->last_seq = s;
  b->last_ticks = t;
  b->last_addr = a;
  b->len = (uint32_t)(p - b->data);
  b->count++;
  if (b->len > BUF_BYTES - EVENT_MAX) flush(b);
  atomic_store_explicit(&b->busy, 0, memory_order_release);
}

static uint64_t take_seq(void) {
  return atomic_fetch_add_explicit(&seq, 1, memory_order_relaxed);
}

static bool recording(void) {
  return depth == 0 && fd >= 0 &&
         !atomic_load_explicit(&stopping, memory_order_relaxed);
}

static void depth_leave(int *unused) {
  (void)unused;
  depth--;
}
/* Leaves the depth on every way out, an exception from operator new too
 * (this file is compiled with -fexceptions). */
#define ENTER                                                                  \
  __attribute__((cleanup(depth_leave))) int depth_guard_ = 0;                  \
  (void)depth_guard_;                                                          \
  depth++

/* ---- start, fork, exit -------------------------------------------------- */

static void open_file(void) {
  const char *pattern = getenv("ALLOT_RECORD_FILE");
  if (!pattern || !*pattern) return;
  char path[4096], pid[24];
  size_t n = 0;
  snprintf(pid, sizeof pid, "%d", (int)getpid());
  for (const char *s = pattern; *s && n + 24 < sizeof path; s++) {
    if (s[0] == '%' && s[1] == 'p') {
      for (const char *q = pid; *q;)
        path[n++] = *q++;
      s++;
    } else {
      path[n++] = *s;
    }
  }
  path[n] = 0;
  int f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (f < 0) return;
  start_ns = now_ns();
  raw_header_t h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, RAW_MAGIC, 8);
  h.version = RAW_VERSION;
  h.pid = (uint32_t)getpid();
  h.start_ns = start_ns;
  h.start_ticks = ticks();
  struct iovec iov = {&h, sizeof h};
  fd = f;
  write_all(&iov, 1);
}

/* The child of a fork records into its own file, from the fork on; the
 * parent's threads' unwritten events are the parent's to write. */
static void after_fork_child(void) {
  if (fd >= 0) close(fd);
  fd = -1;
  for (tbuf_t *x = atomic_load(&all_bufs); x; x = x->next_all) {
    x->count = 0;
    atomic_store(&x->busy, 0);
    if (x != tb) atomic_store(&x->free, 1);
  }
  pthread_mutex_init(&list_lock, NULL);
  open_file();
}

__attribute__((constructor)) static void record_init(void) {
  depth++;
  ready();
  use_membarrier = syscall(SYS_membarrier,
                           MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0;
  pthread_key_create(&exit_key, thread_gone);
  pthread_atfork(NULL, NULL, after_fork_child);
  open_file();
  depth--;
}

/* allot's statistics, read from its JSON so no struct layout is assumed */
static uint64_t json_num(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? strtoull(p + strlen(pat), NULL, 10) : 0;
}

__attribute__((destructor)) static void record_fini(void) {
  if (fd < 0) return;
  depth++;
  atomic_store(&stopping, 1);
  if (use_membarrier)
    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0);
  uint64_t end = now_ns();
  for (tbuf_t *x = atomic_load(&all_bufs); x; x = x->next_all) {
    for (int spins = 0; atomic_load(&x->busy) && spins < 100000; spins++)
      sched_yield();
    flush(x);
  }
  raw_tail_t t;
  memset(&t, 0, sizeof t);
  t.end_ns = end - start_ns;
  t.vm_hwm_kib = proc_status_kib("VmHWM");
  t.lost = atomic_load(&lost);
  size_t (*stats_json)(char *, size_t) =
      (size_t(*)(char *, size_t))dlsym(RTLD_DEFAULT, "allot_stats_json");
  static char json[1 << 16];
  if (stats_json && stats_json(json, sizeof json) < sizeof json) {
    t.has_allot = 1;
    t.allot_stats_mode = strstr(json, "\"stats_mode\":true") != NULL;
    t.allot_in_use_peak = json_num(json, "in_use_peak");
    t.allot_in_use = json_num(json, "in_use");
    t.allot_requested = json_num(json, "requested");
    t.allot_mallocs = json_num(json, "mallocs");
    t.allot_frees = json_num(json, "frees");
    t.allot_committed = json_num(json, "committed");
  }
  raw_chunk_t c = {CHUNK_TAIL, 0, 0, 0, sizeof t, 0, ticks(), now_ns()};
  struct iovec iov[2] = {{&c, sizeof c}, {&t, sizeof t}};
  write_all(iov, 2);
  close(fd);
  fd = -1;
}

/* ---- the interposed functions -------------------------------------------- */

static void *alloc_done(int op, void *p, size_t size, size_t aux) {
  note(take_seq(), op, p, size, aux);
  return p;
}

static void free_start(int op, void *p, size_t size, size_t aux) {
  note(take_seq(), op, p, size, aux);
}

EXPORT void *malloc(size_t size) {
  if (unlikely(!ready())) return boot_alloc(size, 16);
  if (!recording()) return next.malloc(size);
  ENTER;
  return alloc_done(OP_MALLOC, next.malloc(size), size, 0);
}

EXPORT void *calloc(size_t n, size_t size) {
  if (unlikely(!ready())) {
    size_t total_size;
    if (__builtin_mul_overflow(n, size, &total_size)) return NULL;
    return boot_alloc(total_size, 16);
  }
  if (!recording()) return next.calloc(n, size);
  ENTER;
  return alloc_done(OP_CALLOC, next.calloc(n, size), size, n);
}

EXPORT void free(void *p) {
  if (unlikely(is_boot(p))) return;
  if (unlikely(!ready())) return;
  if (!recording()) return next.free(p);
  ENTER;
  free_start(p ? OP_FREE : OP_FREE_NULL, p, 0, 0);
  next.free(p);
}

static void *realloc_common(void *p, size_t n, size_t size, bool array) {
  if (unlikely(is_boot(p))) {
    size_t total_size;
    if (__builtin_mul_overflow(n, size, &total_size)) {
      errno = ENOMEM;
      return NULL;
    }
    void *q = malloc(total_size);
    if (q) {
      size_t old = boot_size(p);
      memcpy(q, p, old < total_size ? old : total_size);
    }
    return q;
  }
  if (!recording())
    return array ? next.reallocarray(p, n, size) : next.realloc(p, size);
  ENTER;
  int op = array ? (p ? OP_REALLOCARRAY : OP_REALLOCARRAY_NEW)
                 : (p ? OP_REALLOC : OP_REALLOC_NEW);
  note(take_seq(), op, p, size, array ? n : 0);
  void *q = array ? next.reallocarray(p, n, size) : next.realloc(p, size);
  note(take_seq(), OP_REALLOC_RESULT, q, 0, 0);
  return q;
}

EXPORT void *realloc(void *p, size_t size) {
  if (unlikely(!ready())) {
    void *q = boot_alloc(size, 16);
    if (q && p) memcpy(q, p, boot_size(p) < size ? boot_size(p) : size);
    return q;
  }
  return realloc_common(p, 1, size, false);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size) {
  if (unlikely(!ready()) || !next.reallocarray) {
    size_t total_size;
    if (__builtin_mul_overflow(n, size, &total_size)) {
      errno = ENOMEM;
      return NULL;
    }
    return realloc(p, total_size);
  }
  return realloc_common(p, n, size, true);
}

EXPORT void *aligned_alloc(size_t align, size_t size) {
  if (unlikely(!ready())) return boot_alloc(size, align);
  if (!recording()) return next.aligned_alloc(align, size);
  ENTER;
  return alloc_done(OP_ALIGNED_ALLOC, next.aligned_alloc(align, size), size,
                    align);
}

EXPORT int posix_memalign(void **out, size_t align, size_t size) {
  if (unlikely(!ready())) {
    *out = boot_alloc(size, align);
    return *out ? 0 : ENOMEM;
  }
  if (!recording()) return next.posix_memalign(out, align, size);
  ENTER;
  void *p = NULL;
  int rc = next.posix_memalign(&p, align, size);
  alloc_done(OP_POSIX_MEMALIGN, rc ? NULL : p, size, align);
  if (!rc) *out = p;
  return rc;
}

EXPORT void *memalign(size_t align, size_t size) {
  if (unlikely(!ready())) return boot_alloc(size, align);
  if (!recording()) return next.memalign(align, size);
  ENTER;
  return alloc_done(OP_MEMALIGN, next.memalign(align, size), size, align);
}

EXPORT void *valloc(size_t size) {
  if (unlikely(!ready())) return boot_alloc(size, 4096);
  if (!recording()) return next.valloc(size);
  ENTER;
  return alloc_done(OP_VALLOC, next.valloc(size), size, 0);
}

EXPORT void *pvalloc(size_t size) {
  if (unlikely(!ready())) return boot_alloc((size + 4095) & ~4095ul, 4096);
  if (!recording()) return next.pvalloc(size);
  ENTER;
  return alloc_done(OP_PVALLOC, next.pvalloc(size), size, 0);
}

EXPORT size_t malloc_usable_size(void *p) {
  if (unlikely(is_boot(p))) return boot_size(p);
  if (unlikely(!ready()) || !next.usable) return 0;
  if (!recording() || !p) return next.usable(p);
  ENTER;
  size_t u = next.usable(p);
  note(take_seq(), OP_USABLE_SIZE, p, u, 0);
  return u;
}

EXPORT void free_sized(void *p, size_t size) {
  if (unlikely(is_boot(p)) || unlikely(!ready())) return;
  void (*f)(void *, size_t) = next.free_sized;
  if (!recording()) {
    if (f)
      f(p, size);
    else
      next.free(p);
    return;
  }
  ENTER;
  free_start(p ? OP_FREE_SIZED : OP_FREE_NULL, p, size, 0);
  if (f)
    f(p, size);
  else
    next.free(p);
}

EXPORT void free_aligned_sized(void *p, size_t align, size_t size) {
  if (unlikely(is_boot(p)) || unlikely(!ready())) return;
  void (*f)(void *, size_t, size_t) = next.free_aligned_sized;
  if (!recording()) {
    if (f)
      f(p, align, size);
    else
      next.free(p);
    return;
  }
  ENTER;
  free_start(p ? OP_FREE_ALIGNED_SIZED : OP_FREE_NULL, p, size, align);
  if (f)
    f(p, align, size);
  else
    next.free(p);
}

/* ---- C++ operators (the mangled names; std::align_val_t is a size_t and
 * std::nothrow_t a reference: both passed as one register) ---------------- */

typedef void *(*new1_t)(size_t);
typedef void *(*new2_t)(size_t, size_t);
typedef void *(*new3_t)(size_t, size_t, const void *);
typedef void (*del1_t)(void *);
typedef void (*del2_t)(void *, size_t);
typedef void (*del3_t)(void *, size_t, size_t);

static void *new_common(int form, size_t size, size_t align,
                        const void *nothrow) {
  void *(*f)(size_t, ...) = ready() ? next.new_[form] : NULL;
  if (!f) {
    /* no C++ runtime below: cannot happen in a program that calls new */
    abort();
  }
  static const int ops[8] = {OP_NEW,
                             OP_NEW_ARRAY,
                             OP_NEW_ALIGNED,
                             OP_NEW_ARRAY_ALIGNED,
                             OP_NEW_NOTHROW,
                             OP_NEW_ARRAY_NOTHROW,
                             OP_NEW_ALIGNED_NOTHROW,
                             OP_NEW_ARRAY_ALIGNED_NOTHROW};
  bool rec = recording();
  ENTER;
  void *p;
  switch (form) {
  case 0:
  case 1:
    p = ((new1_t)f)(size);
    break;
  case 2:
  case 3:
  case 4:
  case 5:
    p = form < 4 ? ((new2_t)f)(size, align)
                 : ((new2_t)f)(size, (size_t)(uintptr_t)nothrow);
    break;
  default:
    p = ((new3_t)f)(size, align, nothrow);
    break;
  }
  if (rec) alloc_done(ops[form], p, size, align);
  return p;
}

EXPORT void *_Znwm(size_t n) {
  return new_common(0, n, 0, NULL);
}
EXPORT void *_Znam(size_t n) {
  return new_common(1, n, 0, NULL);
}
EXPORT void *_ZnwmSt11align_val_t(size_t n, size_t a) {
  return new_common(2, n, a, NULL);
}
EXPORT void *_ZnamSt11align_val_t(size_t n, size_t a) {
  return new_common(3, n, a, NULL);
}
EXPORT void *_ZnwmRKSt9nothrow_t(size_t n, const void *nt) {
  return new_common(4, n, 0, nt);
}
EXPORT void *_ZnamRKSt9nothrow_t(size_t n, const void *nt) {
  return new_common(5, n, 0, nt);
}
EXPORT void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t n, size_t a,
                                                const void *nt) {
  return new_common(6, n, a, nt);
}
EXPORT void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t n, size_t a,
                                                const void *nt) {
  return new_common(7, n, a, nt);
}

/* forms: 0 plain, 1 [], 2 sized, 3 [] sized, 4 aligned, 5 [] aligned,
 * 6 sized aligned, 7 [] sized aligned, 8..11 nothrow of 0, 1, 4, 5 */
static void delete_common(int form, void *p, size_t size, size_t align,
                          const void *nothrow) {
  if (unlikely(is_boot(p))) return;
  if (unlikely(!ready())) return;
  void (*f)(void *, ...) = next.delete_[form];
  if (!f) {
    next.free(p);
    return;
  }
  static const int ops[12] = {OP_DELETE,
                              OP_DELETE_ARRAY,
                              OP_DELETE_SIZED,
                              OP_DELETE_ARRAY_SIZED,
                              OP_DELETE_ALIGNED,
                              OP_DELETE_ARRAY_ALIGNED,
                              OP_DELETE_SIZED_ALIGNED,
                              OP_DELETE_ARRAY_SIZED_ALIGNED,
                              OP_DELETE,
                              OP_DELETE_ARRAY,
                              OP_DELETE_ALIGNED,
                              OP_DELETE_ARRAY_ALIGNED};
  bool rec = recording();
  ENTER;
  if (rec) free_start(p ? ops[form] : OP_FREE_NULL, p, size, align);
  switch (form) {
  case 0:
  case 1:
    ((del1_t)f)(p);
    break;
  case 2:
  case 3:
    ((del2_t)f)(p, size);
    break;
  case 4:
  case 5:
    ((del2_t)f)(p, align);
    break;
  case 6:
  case 7:
    ((del3_t)f)(p, size, align);
    break;
  case 8:
  case 9:
    ((del2_t)f)(p, (size_t)(uintptr_t)nothrow);
    break;
  default:
    ((del3_t)f)(p, align, (size_t)(uintptr_t)nothrow);
    break;
  }
}

EXPORT void _ZdlPv(void *p) {
  delete_common(0, p, 0, 0, NULL);
}
EXPORT void _ZdaPv(void *p) {
  delete_common(1, p, 0, 0, NULL);
}
EXPORT void _ZdlPvm(void *p, size_t n) {
  delete_common(2, p, n, 0, NULL);
}
EXPORT void _ZdaPvm(void *p, size_t n) {
  delete_common(3, p, n, 0, NULL);
}
EXPORT void _ZdlPvSt11align_val_t(void *p, size_t a) {
  delete_common(4, p, 0, a, NULL);
}
EXPORT void _ZdaPvSt11align_val_t(void *p, size_t a) {
  delete_common(5, p, 0, a, NULL);
}
EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t n, size_t a) {
  delete_common(6, p, n, a, NULL);
}
EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t n, size_t a) {
  delete_common(7, p, n, a, NULL);
}
EXPORT void _ZdlPvRKSt9nothrow_t(void *p, const void *nt) {
  delete_common(8, p, 0, 0, nt);
}
EXPORT void _ZdaPvRKSt9nothrow_t(void *p, const void *nt) {
  delete_common(9, p, 0, 0, nt);
}
EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t a,
                                                const void *nt) {
  delete_common(10, p, 0, a, nt);
}
EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t a,
                                                const void *nt) {
  delete_common(11, p, 0, a, nt);
}
