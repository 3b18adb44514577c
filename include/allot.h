/* allot.h: the public interface of the allot memory allocator.
 *
 * Every function here works whether or not allot also replaces the
 * standard allocation functions: the prefixed names never call the
 * system allocator and never depend on interposition. */
#ifndef ALLOT_H
#define ALLOT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALLOT_VERSION_MAJOR 0
#define ALLOT_VERSION_MINOR 1
#define ALLOT_VERSION_PATCH 0
/* One integer that grows with every release: major*10000 + minor*100 + patch.
 */
#define ALLOT_VERSION                                                          \
  (ALLOT_VERSION_MAJOR * 10000 + ALLOT_VERSION_MINOR * 100 +                   \
   ALLOT_VERSION_PATCH)

#if defined(__GNUC__)
/* nothrow: C++ callers (operator delete above all) need no unwind tables. */
#define ALLOT_EXPORT __attribute__((visibility("default"), nothrow))
#define ALLOT_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#define ALLOT_ALLOC_SIZE(n) __attribute__((alloc_size(n)))
#define ALLOT_ALLOC_SIZE2(n, m) __attribute__((alloc_size(n, m)))
#else
#define ALLOT_EXPORT
#define ALLOT_MALLOC_ATTR
#define ALLOT_ALLOC_SIZE(n)
#define ALLOT_ALLOC_SIZE2(n, m)
#endif

/* The version of the library actually loaded (ALLOT_VERSION at its build). */
ALLOT_EXPORT int allot_version(void);

/* ---- The standard functions, prefixed ------------------------------------
 * Same contracts as the C, POSIX and glibc functions of the same name. */
ALLOT_EXPORT void *allot_malloc(size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE(1);
ALLOT_EXPORT void *allot_calloc(size_t count, size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE2(1, 2);
ALLOT_EXPORT void *allot_realloc(void *p, size_t size) ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT void *allot_reallocarray(void *p, size_t count, size_t size)
    ALLOT_ALLOC_SIZE2(2, 3);
ALLOT_EXPORT void allot_free(void *p);
ALLOT_EXPORT void allot_free_sized(void *p, size_t size);
ALLOT_EXPORT void allot_free_aligned_sized(void *p, size_t alignment,
                                           size_t size);
ALLOT_EXPORT void *allot_aligned_alloc(size_t alignment,
                                       size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT int allot_posix_memalign(void **out, size_t alignment,
                                      size_t size);
ALLOT_EXPORT void *allot_memalign(size_t alignment,
                                  size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT void *allot_valloc(size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE(1);
ALLOT_EXPORT void *allot_pvalloc(size_t size) ALLOT_MALLOC_ATTR;
ALLOT_EXPORT size_t allot_malloc_usable_size(const void *p);

/* 1 if p is the start of a live block that allot handed out, else 0. Never
 * faults and never aborts, whatever p is. */
ALLOT_EXPORT int allot_owns(const void *p);

/* ---- Process-wide control ------------------------------------------------ */

/* Return every free page that can be returned to the OS now, in this thread's
 * heap and in the shared caches. Also run by malloc_trim(). */
ALLOT_EXPORT void allot_collect(void);

/* ---- Options (docs/api.md has the table) ----------------------------------
 * Each option is also an environment variable, read once at start-up (not in
 * set-user-ID programs); a bad value gives one warning line and the default. */
typedef enum allot_option {
  ALLOT_OPTION_SHOW_STATS,    /* ALLOT_SHOW_STATS: print stats at exit, 0..2 */
  ALLOT_OPTION_VERBOSE,       /* ALLOT_VERBOSE: report settings, 0..1 */
  ALLOT_OPTION_PURGE_DELAY,   /* ALLOT_PURGE_DELAY: ms, 0..3600000 */
  ALLOT_OPTION_PURGE_THREAD,  /* ALLOT_PURGE_THREAD: 0..1 */
  ALLOT_OPTION_USE_BRK,       /* ALLOT_USE_BRK: 0..1 */
  ALLOT_OPTION_HUGE_PAGES,    /* ALLOT_HUGE_PAGES: 0 off, 1 on, 2 auto */
  ALLOT_OPTION_SECURE,        /* ALLOT_SECURE: 0..1, start-up only */
  ALLOT_OPTION_SEGMENT_SIZE,  /* ALLOT_SEGMENT_SIZE: fixed, 4194304 */
  ALLOT_OPTION_STATS,         /* ALLOT_STATS: statistics mode, 0..1 */
  ALLOT_OPTION_DEBUG,         /* ALLOT_DEBUG: 0..1, start-up only */
  ALLOT_OPTION_PURGE_MADV,    /* ALLOT_PURGE_MADV: 0 dontneed, 1 free */
  ALLOT_OPTION_PROMPT_RETURN, /* ALLOT_PROMPT_RETURN: 0..1 */
  ALLOT_OPTION_LEAK_REPORT,   /* ALLOT_LEAK_REPORT: 0 off, 1 lost, 2 all */
  ALLOT_OPTION_COUNT
} allot_option_t;

/* The current value (-1 and errno EINVAL for an unknown option). */
ALLOT_EXPORT long allot_option_get(allot_option_t option);
/* 0, EINVAL (unknown option or value out of range) or EPERM (the option can
 * only be set at start-up, through its environment variable). */
ALLOT_EXPORT int allot_option_set(allot_option_t option, long value);
/* The environment variable's name ("ALLOT_PURGE_DELAY"), NULL if unknown. */
ALLOT_EXPORT const char *allot_option_name(allot_option_t option);
ALLOT_EXPORT long allot_option_default(allot_option_t option);

/* ---- First-class heaps -----------------------------------------------------
 * A heap of its own: allocate from it, then release all of it at once. Only
 * the thread that created a heap may allocate from it, collect, destroy or
 * delete it; any other thread doing so gets a one-line "allot: ..." message
 * and abort(). Any thread may free its blocks with allot_free() (or free()),
 * and use allot_realloc() on them (a block that must move goes to the calling
 * thread's default heap; allot_heap_realloc keeps it in the heap). */
typedef struct allot_heap allot_heap_t;

/* A new, empty heap owned by the calling thread (NULL when out of memory). */
ALLOT_EXPORT allot_heap_t *allot_heap_new(void);
ALLOT_EXPORT void *allot_heap_malloc(allot_heap_t *heap,
                                     size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT void *allot_heap_calloc(allot_heap_t *heap, size_t count,
                                     size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE2(2, 3);
ALLOT_EXPORT void *allot_heap_realloc(allot_heap_t *heap, void *p, size_t size)
    ALLOT_ALLOC_SIZE(3);
ALLOT_EXPORT void *allot_heap_aligned_alloc(allot_heap_t *heap,
                                            size_t alignment,
                                            size_t size) ALLOT_MALLOC_ATTR
    ALLOT_ALLOC_SIZE(3);
/* Release every block of the heap at once, and the heap. Blocks other threads
 * still hold become invalid: they must not be used or freed afterwards. */
ALLOT_EXPORT void allot_heap_destroy(allot_heap_t *heap);
/* Give the heap's live blocks to the calling thread's default heap (they
 * stay valid and are freed as usual), then release the heap. */
ALLOT_EXPORT void allot_heap_delete(allot_heap_t *heap);
/* Return the heap's empty pages to the OS now. */
ALLOT_EXPORT void allot_heap_collect(allot_heap_t *heap);
/* The calling thread's default heap (malloc's); it cannot be destroyed or
 * deleted. */
ALLOT_EXPORT allot_heap_t *allot_heap_default(void);
/* The heap that owns live block p: a first-class or a thread's heap; NULL for
 * a large block of a thread's heap (large blocks are process-wide), a
 * zero-size block, or anything allot did not hand out. */
ALLOT_EXPORT allot_heap_t *allot_heap_of(const void *p);

/* ---- Statistics -------------------------------------------------------------
 * Gathered when asked for, by reading allot's structures: no counting on the
 * malloc and free fast paths. Fields marked [stats mode] are exact counters
 * kept only in statistics mode (ALLOT_STATS=1 or allot_option_set), in which
 * every call takes the slower checked path; otherwise they are 0. */
#define ALLOT_STATS_ROWS                                                       \
  62 /* 0 zero-size, 1..59 small classes, medium, large */
#define ALLOT_STATS_MEDIUM 60
#define ALLOT_STATS_LARGE 61

typedef struct allot_class_stats {
  size_t block_size; /* small classes: the block size; else 0 */
  size_t blocks;     /* live blocks now */
  size_t bytes;      /* their usable bytes */
  size_t pages;      /* small classes: 64 KiB pages in use */
  size_t mallocs;    /* [stats mode] blocks made since counting began */
  size_t frees;      /* [stats mode] blocks freed */
} allot_class_stats_t;

typedef struct allot_stats {
  size_t in_use;         /* usable bytes of live blocks */
  size_t in_use_peak;    /* [stats mode] highest in_use */
  size_t requested;      /* [stats mode] bytes asked for, in total */
  size_t mallocs, frees; /* [stats mode] calls that made / freed a block */
  size_t committed;      /* bytes of allot's mappings resident in memory */
  size_t committed_peak; /* highest committed seen by a statistics call */
  size_t reserved;       /* bytes of address space mapped */
  size_t reserved_peak;  /* highest reserved */
  size_t free_small;     /* free bytes inside small pages in use */
  size_t free_pages;     /* bytes of unused 64 KiB pages in small segments */
  size_t free_medium;    /* bytes in free medium chunks */
  size_t free_chunks;    /* number of free medium chunks */
  size_t cached;         /* bytes in cached segments and large mappings */
  size_t segments_small, segments_medium, segments_large, segments_cached;
  size_t pages_in_use;         /* small pages in use */
  size_t xfrees;               /* frees by a thread other than the owner */
  size_t os_maps, os_unmaps;   /* process-wide mmap / munmap calls */
  size_t os_purges, os_remaps; /* madvise(DONTNEED) / mremap calls */
  size_t os_time_ns;           /* [stats mode] time in all allot's OS calls */
  size_t heaps;                /* heaps summed here */
  int stats_mode;              /* statistics mode on */
  allot_class_stats_t rows[ALLOT_STATS_ROWS];
} allot_stats_t;

/* The process's statistics (0), or EINVAL for a NULL argument. */
ALLOT_EXPORT int allot_stats_get(allot_stats_t *out);
/* One heap's: its blocks, pages, segments and its own large blocks; os_*
 * fields are process-wide. */
ALLOT_EXPORT int allot_heap_stats(allot_heap_t *heap, allot_stats_t *out);
/* Zero the [stats mode] counters and restart the peaks from now. */
ALLOT_EXPORT void allot_stats_reset(void);
/* Format st as text (json 0) or JSON (json 1) into buf like snprintf: returns
 * the length the whole text needs; buf holds as much as fits, terminated. */
ALLOT_EXPORT size_t allot_stats_format(const allot_stats_t *st, int json,
                                       char *buf, size_t len);
/* The process's statistics as text on fd (0, or an errno value). */
ALLOT_EXPORT int allot_stats_print(int fd);
/* ... and as JSON into buf, like allot_stats_format. */
ALLOT_EXPORT size_t allot_stats_json(char *buf, size_t len);

/* glibc's interfaces, by their allot names. With allot replacing malloc the
 * standard names (mallinfo2, mallinfo, malloc_stats, malloc_info, mallopt)
 * are these; docs/api.md says what each field and parameter means here. */
struct allot_mallinfo2 {
  size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks,
      fordblks, keepcost;
};
ALLOT_EXPORT struct allot_mallinfo2 allot_mallinfo2(void);
ALLOT_EXPORT void allot_malloc_stats(void);
ALLOT_EXPORT int allot_malloc_info(int options, FILE *stream);
ALLOT_EXPORT int allot_mallopt(int param, int value);
ALLOT_EXPORT int allot_malloc_trim(size_t pad);

/* ---- Walking and checking -------------------------------------------------
 */
enum { ALLOT_WALK_REGION = 1, ALLOT_WALK_PAGE = 2, ALLOT_WALK_BLOCK = 3 };
enum {
  ALLOT_KIND_SMALL = 1,  /* blocks up to 8 KiB in 64 KiB pages */
  ALLOT_KIND_MEDIUM = 2, /* boundary-tag chunks */
  ALLOT_KIND_LARGE = 3,  /* one block per mapping */
  ALLOT_KIND_ZERO = 4,   /* the region behind malloc(0) */
  ALLOT_KIND_CACHED = 5, /* an unused region kept for reuse */
  ALLOT_KIND_FIXED = 6   /* a heap in a caller's buffer */
};

typedef struct allot_walk_info {
  int type;        /* ALLOT_WALK_REGION, _PAGE or _BLOCK */
  int kind;        /* ALLOT_KIND_* */
  void *addr;      /* region or page start; a block's user address */
  size_t size;     /* region or page bytes; a block: what malloc_usable_size
                      says of it (0 for a malloc(0) block) */
  size_t overhead; /* block: allot's bytes just before addr (chunk header) */
  int in_use;      /* block: 1 live, 0 free */
  unsigned size_class; /* small pages and blocks: class 1..58 */
  size_t block_size;   /* page: its block size; block: the bytes the heap
                          gave it (blocks' sizes tile pages and regions) */
  size_t blocks;       /* page: blocks it holds; region: blocks in it */
  size_t blocks_used;  /* page and region: blocks in use */
  allot_heap_t *heap;  /* owner (NULL for process-wide regions) */
} allot_walk_info_t;

/* Return nonzero to stop the walk (that value is returned). */
typedef int (*allot_walk_fn)(const allot_walk_info_t *info, void *arg);

/* Visit every region, page and block of the process (allot_heap_walk: of one
 * heap). Each region is read under its lock into a snapshot, and visit runs
 * with no allot lock held, so it may allocate and free; what it sees of a
 * region is that region at one moment. The calling thread's heaps are exact;
 * another thread's are exact if it is not allocating meanwhile. Returns 0,
 * the visitor's nonzero value, or -1 (ENOMEM) when no snapshot memory. */
ALLOT_EXPORT int allot_walk(allot_walk_fn visit, void *arg);
ALLOT_EXPORT int allot_heap_walk(allot_heap_t *heap, allot_walk_fn visit,
                                 void *arg);

/* Verify every invariant allot can check (segment headers and map, page
 * descriptors, free lists and marks, page lists, chunk tags, bins and counts,
 * large blocks; in debug and secure mode also canaries and quarantine). 0 if
 * all hold; else one line naming the first inconsistency goes to stderr and 1
 * is returned. Never aborts on what it finds. Other threads' small pages are
 * checked only by their own thread's call. */
ALLOT_EXPORT int allot_check(void);
/* The same, with the line written to buf (when not NULL) instead of stderr. */
ALLOT_EXPORT int allot_check_report(char *buf, size_t len);

/* ---- Heaps in a caller's buffer ---------------------------------------------
 * A boundary-tag heap inside memory the caller provides: it never calls the
 * OS, never grows beyond the buffer, and malloc, free, memalign and realloc
 * run in bounded O(1) time (two bit scans, a constant number of headers).
 * Exhaustion returns NULL. Not thread-safe: the caller serialises calls on
 * one heap. Per block: a 16-byte header and rounding to 16; per heap: a
 * header at the start of the buffer whose bin table is sized by the buffer
 * (608 bytes of overhead for 1 KiB, 992 for 4 KiB, 3296 for 1 GiB). */
typedef struct allot_fixed allot_fixed_t;

typedef struct allot_fixed_stats {
  size_t size;         /* the buffer */
  size_t overhead;     /* heap header and region sentinels */
  size_t in_use;       /* usable bytes of live blocks */
  size_t in_use_peak;  /* highest in_use */
  size_t blocks;       /* live blocks */
  size_t free;         /* bytes in free chunks, headers included */
  size_t largest_free; /* a request this large is sure to succeed */
  size_t mallocs, frees, failures;
} allot_fixed_stats_t;

/* The smallest buffer allot_fixed_create accepts. */
ALLOT_EXPORT size_t allot_fixed_min_size(void);
/* A heap in [buf, buf+size): buf is aligned up to 16 bytes internally. NULL
 * (errno EINVAL) if the buffer is smaller than allot_fixed_min_size(). */
ALLOT_EXPORT allot_fixed_t *allot_fixed_create(void *buf, size_t size);
ALLOT_EXPORT void *allot_fixed_malloc(allot_fixed_t *heap, size_t size);
ALLOT_EXPORT void *allot_fixed_calloc(allot_fixed_t *heap, size_t count,
                                      size_t size);
ALLOT_EXPORT void *allot_fixed_memalign(allot_fixed_t *heap, size_t alignment,
                                        size_t size);
ALLOT_EXPORT void *allot_fixed_realloc(allot_fixed_t *heap, void *p,
                                       size_t size);
/* A pointer not from this heap, or freed twice: "allot: ..." and abort(). */
ALLOT_EXPORT void allot_fixed_free(allot_fixed_t *heap, void *p);
ALLOT_EXPORT size_t allot_fixed_usable_size(allot_fixed_t *heap, const void *p);
/* Visit the region and every chunk (kind ALLOT_KIND_FIXED) in address order:
 * each chunk's addr + size is the next chunk's header. visit must not
 * allocate from or free into this heap. */
ALLOT_EXPORT int allot_fixed_walk(allot_fixed_t *heap, allot_walk_fn visit,
                                  void *arg);
/* 0 if every invariant holds; else 1, with the first inconsistency written to
 * buf (when not NULL). */
ALLOT_EXPORT int allot_fixed_check(allot_fixed_t *heap, char *buf, size_t len);
ALLOT_EXPORT void allot_fixed_stats(allot_fixed_t *heap,
                                    allot_fixed_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif /* ALLOT_H */
