/* new.cpp: the replaceable C++ allocation and deallocation functions (every
 * form of operator new and operator delete up to C++17: plain, array,
 * nothrow, sized, aligned and their combinations), on top of the C API.
 *
 * Compiled only when allot replaces the standard names (ALLOT_OVERRIDE): the
 * prefixed library must not change a program's operator new. The shared
 * library always carries them; for static linking they are opt-in, see
 * cmake/cxx.cmake and allot(3).
 *
 * Every allocating form tries once inline and leaves the new-handler loop
 * of [new.delete] to an out-of-line, cold function, so the fast path is one
 * call and one test.
 *
 * In debug and secure mode (checked_families set, src/checked.c) every form
 * goes to checked mode with its family — new or new[] — which the block
 * keeps, so that a block freed the wrong way (new[] with delete or free,
 * new with delete[], malloc with delete) aborts naming the mismatch. The
 * default mode pays one load and one predictable branch per call. */
#include "allot.h"

#include <cstddef>
#include <new>

#if defined(ALLOT_OVERRIDE) && ALLOT_OVERRIDE

/* The library is compiled with -fvisibility=hidden; these must stay
 * visible to interpose on libstdc++'s definitions. */
#define ALLOT_CXX_EXPORT __attribute__((visibility("default")))
#define ALLOT_COLD __attribute__((cold, noinline))

/* The C functions never throw; saying so lets the noexcept deletes reach
 * them by a tail jump, with no unwind path to std::terminate. (GCC accepts
 * the attribute on a redeclaration; clang takes it for a conflicting
 * exception specification.) */
#if !defined(__clang__)
extern "C" {
void *allot_malloc(size_t) __attribute__((nothrow));
void *allot_aligned_alloc(size_t, size_t) __attribute__((nothrow));
void allot_free(void *) __attribute__((nothrow));
void allot_free_sized(void *, size_t) __attribute__((nothrow));
void allot_free_aligned_sized(void *, size_t, size_t) __attribute__((nothrow));
}
#endif

/* src/checked.c (hidden: the library's own) */
#define ALLOT_CXX_HIDDEN __attribute__((visibility("hidden")))
extern "C" {
ALLOT_CXX_HIDDEN extern int checked_families;
ALLOT_CXX_HIDDEN void *checked_new(std::size_t size, std::size_t align,
                                   int fam) noexcept;
ALLOT_CXX_HIDDEN void checked_delete(void *p, int fam, std::size_t size,
                                     std::size_t align) noexcept;
}

namespace {

/* checked.c's families; kNoSize: an unsized delete */
constexpr int kNew = 1, kNewArray = 2;
constexpr std::size_t kNoSize = ~std::size_t(0);

inline bool checked() {
  return __builtin_expect(checked_families != 0, 0);
}

/* Alignments the plain forms guarantee without asking for more: allot
 * aligns every block to 16 bytes, which is also the C++ default. */
constexpr std::size_t kBaseAlign = 16;
static_assert(__STDCPP_DEFAULT_NEW_ALIGNMENT__ <= kBaseAlign,
              "allot_malloc's alignment must cover the default new alignment");

inline void *try_alloc(std::size_t size, std::size_t align, int fam) {
  if (checked()) return checked_new(size, align, fam);
  if (align <= kBaseAlign) return allot_malloc(size);
  return allot_aligned_alloc(align, size);
}

/* [new.delete.single]: call the new-handler until the allocation succeeds;
 * with no handler installed, throw std::bad_alloc. The handler may itself
 * throw (std::bad_alloc or derived), which propagates. */
ALLOT_COLD void *alloc_failed(std::size_t size, std::size_t align, int fam) {
  /* operator new(0) must return a distinct non-null pointer. */
  if (size == 0) size = 1;
  for (;;) {
    void *p = try_alloc(size, align, fam);
    if (p) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}

/* The nothrow forms behave as if they called the throwing form and
 * returned null when it threw: the handler still runs. */
ALLOT_COLD void *alloc_failed_nothrow(std::size_t size, std::size_t align,
                                      int fam) noexcept {
  try {
    return alloc_failed(size, align, fam);
  } catch (const std::bad_alloc &) {
    return nullptr;
  }
}

inline void *alloc(std::size_t size, std::size_t align, int fam) {
  void *p = try_alloc(size, align, fam);
  if (__builtin_expect(p != nullptr, 1)) return p;
  return alloc_failed(size, align, fam);
}

inline void *alloc_nothrow(std::size_t size, std::size_t align,
                           int fam) noexcept {
  void *p = try_alloc(size, align, fam);
  if (__builtin_expect(p != nullptr, 1)) return p;
  return alloc_failed_nothrow(size, align, fam);
}

inline std::size_t align_of(std::align_val_t al) {
  return static_cast<std::size_t>(al);
}

/* The sized deletes pass the size (and alignment) on: allot checks them
 * against the block. Without a size there is nothing to check the
 * alignment against, so the unsized aligned forms are a plain free. */
inline void dealloc(void *p, int fam) noexcept {
  if (checked()) return checked_delete(p, fam, kNoSize, 0);
  allot_free(p);
}

inline void dealloc_sized(void *p, std::size_t size, int fam) noexcept {
  if (checked()) return checked_delete(p, fam, size, 0);
  allot_free_sized(p, size);
}

inline void dealloc_aligned_sized(void *p, std::size_t size, std::size_t align,
                                  int fam) noexcept {
  if (checked()) return checked_delete(p, fam, size, align);
  if (align <= kBaseAlign)
    allot_free_sized(p, size);
  else
    allot_free_aligned_sized(p, align, size);
}

} // namespace

/* ---- operator new ------------------------------------------------------ */

ALLOT_CXX_EXPORT void *operator new(std::size_t size) {
  return alloc(size, kBaseAlign, kNew);
}

ALLOT_CXX_EXPORT void *operator new[](std::size_t size) {
  return alloc(size, kBaseAlign, kNewArray);
}

ALLOT_CXX_EXPORT void *operator new(std::size_t size,
                                    const std::nothrow_t &) noexcept {
  return alloc_nothrow(size, kBaseAlign, kNew);
}

ALLOT_CXX_EXPORT void *operator new[](std::size_t size,
                                      const std::nothrow_t &) noexcept {
  return alloc_nothrow(size, kBaseAlign, kNewArray);
}

ALLOT_CXX_EXPORT void *operator new(std::size_t size, std::align_val_t al) {
  return alloc(size, align_of(al), kNew);
}

ALLOT_CXX_EXPORT void *operator new[](std::size_t size, std::align_val_t al) {
  return alloc(size, align_of(al), kNewArray);
}

ALLOT_CXX_EXPORT void *operator new(std::size_t size, std::align_val_t al,
                                    const std::nothrow_t &) noexcept {
  return alloc_nothrow(size, align_of(al), kNew);
}

ALLOT_CXX_EXPORT void *operator new[](std::size_t size, std::align_val_t al,
                                      const std::nothrow_t &) noexcept {
  return alloc_nothrow(size, align_of(al), kNewArray);
}

/* ---- operator delete --------------------------------------------------- */

ALLOT_CXX_EXPORT void operator delete(void *p) noexcept {
  dealloc(p, kNew);
}

ALLOT_CXX_EXPORT void operator delete[](void *p) noexcept {
  dealloc(p, kNewArray);
}

ALLOT_CXX_EXPORT void operator delete(void *p, std::size_t size) noexcept {
  dealloc_sized(p, size, kNew);
}

ALLOT_CXX_EXPORT void operator delete[](void *p, std::size_t size) noexcept {
  dealloc_sized(p, size, kNewArray);
}

ALLOT_CXX_EXPORT void operator delete(void *p,
                                      const std::nothrow_t &) noexcept {
  dealloc(p, kNew);
}

ALLOT_CXX_EXPORT void operator delete[](void *p,
                                        const std::nothrow_t &) noexcept {
  dealloc(p, kNewArray);
}

ALLOT_CXX_EXPORT void operator delete(void *p, std::align_val_t al) noexcept {
  dealloc(p, kNew);
}

ALLOT_CXX_EXPORT void operator delete[](void *p, std::align_val_t al) noexcept {
  dealloc(p, kNewArray);
}

ALLOT_CXX_EXPORT void operator delete(void *p, std::size_t size,
                                      std::align_val_t al) noexcept {
  dealloc_aligned_sized(p, size, align_of(al), kNew);
}

ALLOT_CXX_EXPORT void operator delete[](void *p, std::size_t size,
                                        std::align_val_t al) noexcept {
  dealloc_aligned_sized(p, size, align_of(al), kNewArray);
}

ALLOT_CXX_EXPORT void operator delete(void *p, std::align_val_t al,
                                      const std::nothrow_t &) noexcept {
  dealloc(p, kNew);
}

ALLOT_CXX_EXPORT void operator delete[](void *p, std::align_val_t al,
                                        const std::nothrow_t &) noexcept {
  dealloc(p, kNewArray);
}

#endif /* ALLOT_OVERRIDE */
