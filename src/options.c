/* options.c: allot's options — the one table of them, reading the ALLOT_*
 * environment variables at start-up, and allot_option_get/allot_option_set.
 *
 * The table is the single source of names, defaults and ranges; docs/api.md
 * lists the same. Values live in `g` (internal.h), where the layers read
 * them. Start-up parsing runs inside the first malloc, so it uses nothing
 * that allocates: getenv, hand-written number parsing and write(2). A bad
 * value gives one warning line and the default, never a failure. In
 * set-user-ID programs the environment is not read at all. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/auxv.h>

#define EXPORT __attribute__((visibility("default")))

enum { T_INT, T_BOOL, T_HUGE, T_SIZE, T_FORMAT, T_MADV, T_LEAK };

typedef struct option_def {
  const char *env;
  int type;
  long def, lo, hi;
  bool runtime; /* allot_option_set may change it after start-up */
} option_def_t;

/* Indexed by allot_option_t: keep in the order of include/allot.h. */
static const option_def_t defs[ALLOT_OPTION_COUNT] = {
    [ALLOT_OPTION_SHOW_STATS] = {"ALLOT_SHOW_STATS", T_FORMAT, 0, 0, 2, true},
    [ALLOT_OPTION_VERBOSE] = {"ALLOT_VERBOSE", T_BOOL, 0, 0, 1, true},
    [ALLOT_OPTION_PURGE_DELAY] = {"ALLOT_PURGE_DELAY", T_INT, 50, 0, 3600000,
                                  true},
    [ALLOT_OPTION_PURGE_THREAD] = {"ALLOT_PURGE_THREAD", T_BOOL, 1, 0, 1, true},
    [ALLOT_OPTION_USE_BRK] = {"ALLOT_USE_BRK", T_BOOL, 0, 0, 1, true},
    [ALLOT_OPTION_HUGE_PAGES] = {"ALLOT_HUGE_PAGES", T_HUGE, 2, 0, 2, true},
    [ALLOT_OPTION_SECURE] = {"ALLOT_SECURE", T_BOOL, ALLOT_SECURE_DEFAULT, 0, 1,
                             false},
    [ALLOT_OPTION_SEGMENT_SIZE] = {"ALLOT_SEGMENT_SIZE", T_SIZE, (long)SEG_SIZE,
                                   (long)SEG_SIZE, (long)SEG_SIZE, false},
    [ALLOT_OPTION_STATS] = {"ALLOT_STATS", T_BOOL, 0, 0, 1, true},
    [ALLOT_OPTION_DEBUG] = {"ALLOT_DEBUG", T_BOOL, 0, 0, 1, false},
    [ALLOT_OPTION_PURGE_MADV] = {"ALLOT_PURGE_MADV", T_MADV, 0, 0, 1, true},
    [ALLOT_OPTION_PROMPT_RETURN] = {"ALLOT_PROMPT_RETURN", T_BOOL, 1, 0, 1,
                                    true},
    [ALLOT_OPTION_LEAK_REPORT] = {"ALLOT_LEAK_REPORT", T_LEAK, 2, 0, 2, true},
};

static os_lock_t set_lock; /* serialises allot_option_set */

/* Taken first of allot's locks before fork: allot_option_set takes others
 * while it holds it (statistics mode's start reads every heap, and the
 * segment map is refreshed under the segment list's lock). */
void options_fork(int phase) {
  os_lock_fork(&set_lock, phase);
}
#ifdef ALLOT_TEST_HOOKS
os_lock_t *options_test_lock(const char *name) {
  return strcmp(name, "set") ? NULL : &set_lock;
}
#endif

/* ---- parsing ------------------------------------------------------------ */

static bool word_is(const char *s, const char *w) {
  for (; *s && *w; s++, w++) {
    char c = *s >= 'A' && *s <= 'Z' ? (char)(*s + 32) : *s;
    if (c != *w) return false;
  }
  return !*s && !*w;
}

/* A decimal integer with an optional K, M or G suffix (binary) for sizes. */
static bool parse_number(const char *s, bool suffix, long *out) {
  bool neg = *s == '-';
  if (neg) s++;
  if (*s < '0' || *s > '9') return false;
  unsigned long v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (v > (unsigned long)LONG_MAX / 10) return false;
    v = v * 10 + (unsigned long)(*s - '0');
  }
  if (suffix && *s) {
    int shift = 0;
    if (*s == 'k' || *s == 'K') shift = 10;
    if (*s == 'm' || *s == 'M') shift = 20;
    if (*s == 'g' || *s == 'G') shift = 30;
    if (!shift) return false;
    s++;
    if (*s == 'i' || *s == 'I') s++; /* KiB, MB, ... */
    if (*s == 'b' || *s == 'B') s++;
    if (v > ((unsigned long)LONG_MAX >> shift)) return false;
    v <<= shift;
  }
  if (*s || v > (unsigned long)LONG_MAX) return false;
  *out = neg ? -(long)v : (long)v;
  return true;
}

static bool parse_value(const option_def_t *d, const char *s, long *out) {
  if (d->type == T_BOOL || d->type == T_HUGE || d->type == T_FORMAT) {
    if (word_is(s, "on") || word_is(s, "yes") || word_is(s, "true") ||
        (d->type == T_FORMAT && word_is(s, "text"))) {
      *out = 1;
      return true;
    }
    if (word_is(s, "off") || word_is(s, "no") || word_is(s, "false")) {
      *out = 0;
      return true;
    }
    if (d->type == T_HUGE && word_is(s, "auto")) {
      *out = 2;
      return true;
    }
    if (d->type == T_FORMAT && word_is(s, "json")) {
      *out = 2;
      return true;
    }
  }
  if (d->type == T_MADV && (word_is(s, "dontneed") || word_is(s, "free"))) {
    *out = word_is(s, "free");
    return true;
  }
  if (d->type == T_LEAK) {
    if (word_is(s, "off") || word_is(s, "no") || word_is(s, "false")) {
      *out = 0;
      return true;
    }
    if (word_is(s, "lost")) {
      *out = 1;
      return true;
    }
    if (word_is(s, "all") || word_is(s, "on") || word_is(s, "yes") ||
        word_is(s, "true")) {
      *out = 2;
      return true;
    }
  }
  return parse_number(s, d->type == T_SIZE, out) && *out >= d->lo &&
         *out <= d->hi;
}

/* One line on stderr, built on the stack: no stdio, no allocation. */
typedef struct msg {
  char buf[320];
  size_t n;
} msg_t;

static void msg_put(msg_t *m, const char *s) {
  while (*s && m->n < sizeof m->buf - 2)
    m->buf[m->n++] = *s++;
}
static void msg_num(msg_t *m, long v) {
  char t[24];
  if (v < 0) {
    msg_put(m, "-");
    v = -v;
  }
  os_fmt_dec(t, (size_t)v);
  msg_put(m, t);
}
static void msg_end(msg_t *m) {
  m->buf[m->n++] = '\n';
  m->buf[m->n] = 0;
  os_write_err(m->buf);
}

static void warn_invalid(const option_def_t *d, const char *value) {
  msg_t m = {.n = 0};
  msg_put(&m, "allot: warning: ignoring invalid ");
  msg_put(&m, d->env);
  msg_put(&m, "=");
  char shown[64];
  size_t k = 0;
  for (; value[k] && k < sizeof shown - 4; k++)
    shown[k] = value[k] >= ' ' && value[k] < 127 ? value[k] : '?';
  if (value[k]) shown[k++] = '.', shown[k++] = '.', shown[k++] = '.';
  shown[k] = 0;
  msg_put(&m, shown);
  if (d->lo == d->hi) {
    msg_put(&m, " (fixed at ");
  } else {
    msg_put(&m, " (valid: ");
    msg_num(&m, d->lo);
    msg_put(&m, "..");
  }
  msg_num(&m, d->hi);
  msg_put(&m, "); using ");
  msg_num(&m, d->def);
  msg_end(&m);
}

/* ---- values ---------------------------------------------------------------
 */

static long get_value(allot_option_t o) {
  switch (o) {
  case ALLOT_OPTION_SHOW_STATS:
    return g.show_stats;
  case ALLOT_OPTION_VERBOSE:
    return g.verbose;
  case ALLOT_OPTION_PURGE_DELAY:
    return g.purge_delay_ms;
  case ALLOT_OPTION_PURGE_THREAD:
    return g.purge_thread;
  case ALLOT_OPTION_USE_BRK:
    return g.use_brk;
  case ALLOT_OPTION_HUGE_PAGES:
    return g.huge_pages;
  case ALLOT_OPTION_SECURE:
    return g.secure;
  case ALLOT_OPTION_SEGMENT_SIZE:
    return (long)SEG_SIZE;
  case ALLOT_OPTION_STATS:
    return g.stats;
  case ALLOT_OPTION_DEBUG:
    return g.debug;
  case ALLOT_OPTION_PURGE_MADV:
    return g.purge_madv_free;
  case ALLOT_OPTION_PROMPT_RETURN:
    return g.prompt_return;
  case ALLOT_OPTION_LEAK_REPORT:
    return g.leak_report;
  default:
    return -1;
  }
}

/* Run-time changes race with the layers' plain reads of the same fields
 * (aligned word stores: a reader sees the old or the new value). */
#define SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

static void put_value(allot_option_t o, long v) {
  switch (o) {
  case ALLOT_OPTION_SHOW_STATS:
    SET(g.show_stats, (int)v);
    break;
  case ALLOT_OPTION_VERBOSE:
    SET(g.verbose, (int)v);
    break;
  case ALLOT_OPTION_PURGE_DELAY:
    SET(g.purge_delay_ms, v);
    break;
  case ALLOT_OPTION_PURGE_THREAD:
    SET(g.purge_thread, (int)v);
    break;
  case ALLOT_OPTION_USE_BRK:
    SET(g.use_brk, (int)v);
    break;
  case ALLOT_OPTION_HUGE_PAGES:
    SET(g.huge_pages, (int)v);
    break;
  case ALLOT_OPTION_SECURE:
    SET(g.secure, (int)v);
    break;
  case ALLOT_OPTION_STATS:
    SET(g.stats, (int)v);
    break;
  case ALLOT_OPTION_DEBUG:
    SET(g.debug, (int)v);
    break;
  case ALLOT_OPTION_PURGE_MADV:
    SET(g.purge_madv_free, (int)v);
    break;
  case ALLOT_OPTION_PROMPT_RETURN:
    SET(g.prompt_return, (int)v);
    break;
  case ALLOT_OPTION_LEAK_REPORT:
    SET(g.leak_report, (int)v);
    break;
  default:
    break;
  }
}

/* Whether the environment turns option o on, read without setting anything:
 * for constructors that prepare a mode before allot's start-up (at the first
 * malloc) reads the options. */
bool options_env_on(allot_option_t o) {
  if (getauxval(AT_SECURE)) return defs[o].def != 0;
  const char *v = getenv(defs[o].env);
  long x;
  if (!v || !*v || !parse_value(&defs[o], v, &x)) return defs[o].def != 0;
  return x != 0;
}

void options_init(void) {
  os_lock_init(&set_lock);
  for (int i = 0; i < ALLOT_OPTION_COUNT; i++)
    put_value((allot_option_t)i, defs[i].def);
  /* set-user-ID: the environment is hostile, keep the defaults */
  if (!getauxval(AT_SECURE)) {
    for (int i = 0; i < ALLOT_OPTION_COUNT; i++) {
      const char *v = getenv(defs[i].env);
      long x;
      if (!v || !*v) continue;
      if (parse_value(&defs[i], v, &x))
        put_value((allot_option_t)i, x);
      else
        warn_invalid(&defs[i], v);
    }
  }
  if (g.verbose) {
    for (int i = 0; i < ALLOT_OPTION_COUNT; i++) {
      long v = get_value((allot_option_t)i);
      if (v == defs[i].def) continue;
      msg_t m = {.n = 0};
      msg_put(&m, "allot: option ");
      msg_put(&m, defs[i].env);
      msg_put(&m, "=");
      msg_num(&m, v);
      msg_end(&m);
    }
  }
  /* statistics mode takes the checked path; checked.c adds its own modes */
  checked_configure(g.stats);
  prof_configure(); /* ALLOT_PROF: after the modes it cannot run with */
}

/* ---- statistics mode at run time ------------------------------------------
 */

/* No page stays current, so every small malloc of every heap reaches the
 * checked path. Other threads' heaps are written without their owners'
 * cooperation: an owner between loading its current page and popping from it
 * makes that one allocation uncounted (see docs/api.md). */
static void drop_current_pages(void) {
  for (heap_t *h = heaps_first(); h; h = h->next_all)
    for (size_t c = 0; c < NCLASSES; c++)
      __atomic_store_n(&h->current[c], &empty_page, __ATOMIC_RELAXED);
}

INTERNAL void stats_mode_start(void); /* introspect.c: baseline counters */

static bool meta_modes(void) {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return g.debug || g.secure || g.valgrind;
#endif
}

/* ---- the API --------------------------------------------------------------
 */

EXPORT long allot_option_get(allot_option_t option) {
  if ((unsigned)option >= ALLOT_OPTION_COUNT) {
    errno = EINVAL;
    return -1;
  }
  allot_process_init();
  return get_value(option);
}

EXPORT int allot_option_set(allot_option_t option, long value) {
  if ((unsigned)option >= ALLOT_OPTION_COUNT) return EINVAL;
  const option_def_t *d = &defs[option];
  if (value < d->lo || value > d->hi) return EINVAL;
  allot_process_init();
  if (value == get_value(option)) return 0;
  if (!d->runtime) return EPERM;
  os_lock(&set_lock);
  if (option == ALLOT_OPTION_STATS) {
    if (value) {
      stats_mode_start();
      SET(g.stats, 1);
      atomic_thread_fence(memory_order_seq_cst);
      SET(g.slow_mode, 1);
      drop_current_pages();
      segmap_refresh(); /* free's fast path: leave blocks to checked.c */
    } else {
      SET(g.stats, 0);
      if (!meta_modes()) {
        SET(g.slow_mode, 0);
        segmap_refresh();
      }
    }
  } else {
    put_value(option, value);
    if (option == ALLOT_OPTION_PURGE_THREAD && value) purge_notify();
  }
  os_unlock(&set_lock);
  return 0;
}

EXPORT const char *allot_option_name(allot_option_t option) {
  if ((unsigned)option >= ALLOT_OPTION_COUNT) return NULL;
  return defs[option].env;
}

EXPORT long allot_option_default(allot_option_t option) {
  if ((unsigned)option >= ALLOT_OPTION_COUNT) return -1;
  return defs[option].def;
}
