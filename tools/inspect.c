/* inspect.c: liballot-inspect.so, the helper that `allot run --stats` and
 * `allot map` preload after liballot.so. It owns what is written about a
 * running program from inside it: allot's statistics as JSON at exit
 * (ALLOT_STATS_FILE), and dumps of the heap's regions, pages and chunks
 * (ALLOT_MAP_FILE) at exit and, with ALLOT_MAP_SIGNAL, whenever the process
 * receives that signal. docs/tools.md describes the variables and formats.
 *
 * It calls allot through dlsym(RTLD_DEFAULT), so it works with whichever
 * liballot.so the process loaded and says so when allot is not there. It
 * never calls malloc: output is formatted into static buffers and written
 * with write(2), so it runs safely at exit and beside a walk. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "allot.h"
#include "procstatus.h"

typedef size_t (*stats_json_fn)(char *, size_t);
typedef int (*walk_fn)(allot_walk_fn, void *);

/* ---- output: a static buffer flushed with write(2) ------------------------
 */

typedef struct out {
  int fd;
  size_t n;
  int failed;
  char buf[1 << 16];
} out_t;

static void out_flush(out_t *o) {
  size_t off = 0;
  while (off < o->n && !o->failed) {
    ssize_t w = write(o->fd, o->buf + off, o->n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      o->failed = 1;
    else
      off += (size_t)w;
  }
  o->n = 0;
}

static void out_str(out_t *o, const char *s) {
  size_t len = strlen(s);
  if (o->n + len > sizeof o->buf) out_flush(o);
  if (len > sizeof o->buf) len = sizeof o->buf;
  memcpy(o->buf + o->n, s, len);
  o->n += len;
}

static void out_fmt(out_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void out_fmt(out_t *o, const char *fmt, ...) {
  /* vsnprintf of integers and short strings does not allocate */
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  out_str(o, line);
}

static void say(const char *msg) {
  ssize_t r = write(2, msg, strlen(msg));
  (void)r;
}

/* path with %p replaced by the pid and %n by tag ("exit" or a number); when
 * the pattern has no %n and tag is not "exit", ".tag" is appended */
static void expand(char *dst, size_t len, const char *pattern,
                   const char *tag) {
  size_t n = 0;
  int had_n = 0;
  char pid[24];
  snprintf(pid, sizeof pid, "%d", (int)getpid());
  for (const char *s = pattern; *s && n + 1 < len; s++) {
    const char *ins = NULL;
    if (s[0] == '%' && s[1] == 'p') ins = pid;
    if (s[0] == '%' && s[1] == 'n') ins = tag, had_n = 1;
    if (ins) {
      for (; *ins && n + 1 < len; ins++)
        dst[n++] = *ins;
      s++;
    } else {
      dst[n++] = *s;
    }
  }
  dst[n] = 0;
  if (!had_n && strcmp(tag, "exit") != 0 && n + strlen(tag) + 2 < len) {
    dst[n++] = '.';
    strcpy(dst + n, tag);
  }
}

static int open_out(const char *path) {
  /* written to a temporary name and renamed: a reader never sees half */
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  return open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

static void close_out(out_t *o, const char *path) {
  out_flush(o);
  close(o->fd);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  if (!o->failed)
    rename(tmp, path);
  else
    unlink(tmp);
}

static void comm_name(char *dst, size_t len) {
  int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, dst, len - 1) : -1;
  if (fd >= 0) close(fd);
  if (n < 0) n = 0;
  dst[n] = 0;
  for (ssize_t i = 0; i < n; i++)
    if (dst[i] == '\n' || dst[i] == '"' || dst[i] == '\\' ||
        (unsigned char)dst[i] < ' ')
      dst[i] = dst[i] == '\n' ? 0 : '_';
}

static out_t out; /* one writer at a time: guarded by out_lock */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static char stats_json[1 << 16];

/* ---- statistics at exit ------------------------------------------------- */

static void write_stats(const char *pattern) {
  stats_json_fn get = (stats_json_fn)dlsym(RTLD_DEFAULT, "allot_stats_json");
  char path[4096], comm[64];
  expand(path, sizeof path, pattern, "exit");
  out.fd = open_out(path);
  if (out.fd < 0) return;
  out.n = 0;
  out.failed = 0;
  comm_name(comm, sizeof comm);
  out_fmt(&out,
          "{\"pid\":%d,\"ppid\":%d,\"comm\":\"%s\",\"vm_hwm_kib\":%ld,"
          "\"vm_rss_kib\":%ld,\"allot\":",
          (int)getpid(), (int)getppid(), comm, proc_status_kib("VmHWM"),
          proc_status_kib("VmRSS"));
  size_t n = get ? get(stats_json, sizeof stats_json) : 0;
  if (n && n < sizeof stats_json) {
    while (n && (stats_json[n - 1] == '\n'))
      stats_json[--n] = 0;
    out_str(&out, stats_json);
  } else {
    out_str(&out, "null");
  }
  out_str(&out, "}\n");
  close_out(&out, path);
}

/* ---- heap map dumps ------------------------------------------------------
 * Text, one record a line (docs/tools.md):
 *   R kind addr size heap blocks used      a region
 *   P addr class block_size blocks used cells
 *                                         a small page; cells: 64 hex digits,
 *                                         each the use of 1 KiB of it, 0..f
 *   B addr size used overhead             a medium or large block
 */

#define CELLS 64
#define CELL_BYTES (65536 / CELLS)

typedef struct mapstate {
  void *heaps[256];
  int nheaps;
  int page_open;
  uintptr_t page_addr;
  size_t page_class, page_bsize, page_blocks, page_used;
  unsigned cell_used[CELLS]; /* bytes in use per cell */
} mapstate_t;

static mapstate_t ms;

static int heap_index(void *h) {
  if (!h) return 0;
  for (int i = 0; i < ms.nheaps; i++)
    if (ms.heaps[i] == h) return i + 1;
  if (ms.nheaps < 256) ms.heaps[ms.nheaps++] = h;
  return ms.nheaps;
}

static void page_close(void) {
  if (!ms.page_open) return;
  char cells[CELLS + 1];
  for (int i = 0; i < CELLS; i++) {
    unsigned v = (ms.cell_used[i] * 15 + CELL_BYTES / 2) / CELL_BYTES;
    if (v > 15) v = 15;
    if (ms.cell_used[i] && !v) v = 1;
    cells[i] = "0123456789abcdef"[v];
  }
  cells[CELLS] = 0;
  out_fmt(&out, "P %lx %zu %zu %zu %zu %s\n", (unsigned long)ms.page_addr,
          ms.page_class, ms.page_bsize, ms.page_blocks, ms.page_used, cells);
  ms.page_open = 0;
}

static const char *kind_name(int kind) {
  switch (kind) {
  case ALLOT_KIND_SMALL:
    return "small";
  case ALLOT_KIND_MEDIUM:
    return "medium";
  case ALLOT_KIND_LARGE:
    return "large";
  case ALLOT_KIND_ZERO:
    return "zero";
  case ALLOT_KIND_CACHED:
    return "cached";
  case ALLOT_KIND_FIXED:
    return "fixed";
  default:
    return "other";
  }
}

static int visit(const allot_walk_info_t *w, void *arg) {
  (void)arg;
  if (w->type == ALLOT_WALK_REGION) {
    page_close();
    out_fmt(&out, "R %s %lx %zu %d %zu %zu\n", kind_name(w->kind),
            (unsigned long)(uintptr_t)w->addr, w->size, heap_index(w->heap),
            w->blocks, w->blocks_used);
  } else if (w->type == ALLOT_WALK_PAGE) {
    page_close();
    ms.page_open = 1;
    ms.page_addr = (uintptr_t)w->addr;
    ms.page_class = w->size_class;
    ms.page_bsize = w->block_size;
    ms.page_blocks = w->blocks;
    ms.page_used = w->blocks_used;
    memset(ms.cell_used, 0, sizeof ms.cell_used);
  } else if (w->type == ALLOT_WALK_BLOCK) {
    if (w->kind == ALLOT_KIND_SMALL) {
      if (!ms.page_open || !w->in_use) return 0;
      uintptr_t lo = (uintptr_t)w->addr - ms.page_addr, hi = lo + w->size;
      if (hi > 65536) hi = 65536;
      while (lo < hi) {
        size_t cell = lo / CELL_BYTES;
        uintptr_t end = (cell + 1) * CELL_BYTES;
        if (end > hi) end = hi;
        ms.cell_used[cell] += (unsigned)(end - lo);
        lo = end;
      }
    } else {
      page_close();
      out_fmt(&out, "B %lx %zu %d %zu\n", (unsigned long)(uintptr_t)w->addr,
              w->size, w->in_use, w->overhead);
    }
  }
  return 0;
}

static int write_map(const char *pattern, const char *tag) {
  walk_fn walk = (walk_fn)dlsym(RTLD_DEFAULT, "allot_walk");
  if (!walk) {
    say("allot: map: allot is not this process's allocator (no allot_walk); "
        "no heap map written\n");
    return -1;
  }
  char path[4096], comm[64];
  expand(path, sizeof path, pattern, tag);
  out.fd = open_out(path);
  if (out.fd < 0) {
    say("allot: map: cannot create the heap map file\n");
    return -1;
  }
  out.n = 0;
  out.failed = 0;
  memset(&ms, 0, sizeof ms);
  comm_name(comm, sizeof comm);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  out_fmt(&out, "allot-map 1\npid %d\ncomm %s\ntag %s\ntime %ld\nrss_kib %ld\n",
          (int)getpid(), comm, tag, (long)ts.tv_sec, proc_status_kib("VmRSS"));
  int rc = walk(visit, NULL);
  page_close();
  out_fmt(&out, "end %d\n", rc);
  close_out(&out, path);
  return rc;
}

/* ---- on a signal: the handler only wakes a thread, which does the walk
 * (allot_walk takes allot's locks, which the interrupted code may hold) ---- */

static int wake_pipe[2] = {-1, -1};
static const char *map_pattern;
static int map_count;
static pid_t map_owner; /* a forked child has no map thread: it ignores */

static void on_signal(int sig) {
  if (getpid() != map_owner) return;
  int saved = errno;
  char c = (char)sig;
  ssize_t r = write(wake_pipe[1], &c, 1);
  (void)r;
  errno = saved;
}

static void *map_thread(void *arg) {
  (void)arg;
  for (;;) {
    char c;
    ssize_t r = read(wake_pipe[0], &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return NULL;
    char tag[16];
    pthread_mutex_lock(&out_lock);
    snprintf(tag, sizeof tag, "%d", ++map_count);
    write_map(map_pattern, tag);
    pthread_mutex_unlock(&out_lock);
  }
}

static int signal_number(const char *s) {
  static const struct {
    const char *name;
    int sig;
  } names[] = {{"USR1", SIGUSR1},   {"USR2", SIGUSR2}, {"HUP", SIGHUP},
               {"WINCH", SIGWINCH}, {"URG", SIGURG},   {"PROF", SIGPROF},
               {"PWR", SIGPWR},     {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU}};
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0) return names[i].sig;
  char *end;
  long v = strtol(s, &end, 10);
  if (*s && !*end && v > 0 && v < NSIG && v != SIGKILL && v != SIGSTOP)
    return (int)v;
  return 0;
}

static void start_signal_maps(const char *sigspec) {
  int sig = signal_number(sigspec);
  if (!sig) {
    say("allot: map: ignoring bad ALLOT_MAP_SIGNAL (a name such as USR2 or a "
        "number)\n");
    return;
  }
  if (pipe2(wake_pipe, O_CLOEXEC) != 0) return;
  fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK); /* a handler never blocks */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signals */
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int rc = pthread_create(&t, &attr, map_thread, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) return;
  map_owner = getpid();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

/* ---- start and exit ---------------------------------------------------- */

static const char *stats_pattern;
static int map_at_exit;

__attribute__((constructor)) static void inspect_init(void) {
  stats_pattern = getenv("ALLOT_STATS_FILE");
  map_pattern = getenv("ALLOT_MAP_FILE");
  if (stats_pattern && !*stats_pattern) stats_pattern = NULL;
  if (map_pattern && !*map_pattern) map_pattern = NULL;
  const char *at_exit = getenv("ALLOT_MAP_AT_EXIT");
  map_at_exit = map_pattern && !(at_exit && strcmp(at_exit, "0") == 0);
  const char *sig = getenv("ALLOT_MAP_SIGNAL");
  if (map_pattern && sig && *sig) start_signal_maps(sig);
}

__attribute__((destructor)) static void inspect_fini(void) {
  pthread_mutex_lock(&out_lock);
  if (map_at_exit) write_map(map_pattern, "exit");
  if (stats_pattern) write_stats(stats_pattern);
  pthread_mutex_unlock(&out_lock);
}
