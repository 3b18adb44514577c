/* allot.h: the public interface of the allot memory allocator.
 *
 * Every function here works whether or not allot also replaces the
 * standard allocation functions: the prefixed names never call the
 * system allocator and never depend on interposition. */
#ifndef ALLOT_H
#define ALLOT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALLOT_VERSION_MAJOR 0
#define ALLOT_VERSION_MINOR 1
#define ALLOT_VERSION_PATCH 0
/* One integer that grows with every release: major*10000 + minor*100 + patch. */
#define ALLOT_VERSION                                                          \
  (ALLOT_VERSION_MAJOR * 10000 + ALLOT_VERSION_MINOR * 100 + ALLOT_VERSION_PATCH)

#if defined(__GNUC__)
#define ALLOT_EXPORT __attribute__((visibility("default")))
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
ALLOT_EXPORT void *allot_malloc(size_t size) ALLOT_MALLOC_ATTR ALLOT_ALLOC_SIZE(1);
ALLOT_EXPORT void *allot_calloc(size_t count, size_t size)
    ALLOT_MALLOC_ATTR ALLOT_ALLOC_SIZE2(1, 2);
ALLOT_EXPORT void *allot_realloc(void *p, size_t size) ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT void *allot_reallocarray(void *p, size_t count, size_t size)
    ALLOT_ALLOC_SIZE2(2, 3);
ALLOT_EXPORT void allot_free(void *p);
ALLOT_EXPORT void allot_free_sized(void *p, size_t size);
ALLOT_EXPORT void allot_free_aligned_sized(void *p, size_t alignment, size_t size);
ALLOT_EXPORT void *allot_aligned_alloc(size_t alignment, size_t size)
    ALLOT_MALLOC_ATTR ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT int allot_posix_memalign(void **out, size_t alignment, size_t size);
ALLOT_EXPORT void *allot_memalign(size_t alignment, size_t size)
    ALLOT_MALLOC_ATTR ALLOT_ALLOC_SIZE(2);
ALLOT_EXPORT void *allot_valloc(size_t size) ALLOT_MALLOC_ATTR ALLOT_ALLOC_SIZE(1);
ALLOT_EXPORT void *allot_pvalloc(size_t size) ALLOT_MALLOC_ATTR;
ALLOT_EXPORT size_t allot_malloc_usable_size(const void *p);

/* 1 if p is the start of a live block that allot handed out, else 0. Never
 * faults and never aborts, whatever p is. */
ALLOT_EXPORT int allot_owns(const void *p);

/* ---- Process-wide control ------------------------------------------------ */

/* Return every free page that can be returned to the OS now, in this thread's
 * heap and in the shared caches. Also run by malloc_trim(). */
ALLOT_EXPORT void allot_collect(void);

#ifdef __cplusplus
}
#endif
#endif /* ALLOT_H */
