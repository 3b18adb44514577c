/* misuse_cxx.cpp: the C++ cases of the misuse suite — new/delete
 * mismatches, sized delete with a wrong size, double delete, absurd new. */
#include <cstdlib>
#include <cstring>
#include <new>

#include "misuse.h"

/* The misuse is the point: no warnings about it. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic ignored "-Wuse-after-free"
#endif
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {

/* Non-trivial destructor: new[] stores an element count (the array cookie)
 * before the elements, so the pointer is 8 bytes past the block's start. */
struct Counted {
  char bytes[16];
  ~Counted() {}
};

/* The destructor body is empty, so delete[] on a non-array pointer reads a
 * bogus count but runs no loop (compiled with -O2). */
template <typename T> T *launder(T *p) {
  return static_cast<T *>(misuse_launder(p));
}

size_t elems(size_t n, size_t each) {
  return n / each ? n / each : 1;
}

void newarr_delete(size_t n) {
  int *a = new int[elems(n, sizeof(int))];
  misuse_begin();
  delete launder(a); /* new[] / delete, trivial type: same pointer */
  misuse_end();
}

void newarr_delete_dtor(size_t n) {
  Counted *a = new Counted[elems(n, sizeof(Counted))];
  misuse_begin();
  delete launder(a); /* frees the pointer past the cookie */
  misuse_end();
}

void new_deletearr(size_t n) {
  Counted *a = new Counted;
  misuse_begin();
  delete[] launder(a); /* frees 8 bytes before the block */
  misuse_end();
  (void)n;
}

/* The same pairs through the unsized operators, as a program built without
 * sized deallocation calls them (clang before version 19 by default): no
 * size gives the mismatch away. */
void newarr_delete_unsized(size_t n) {
  int *a = new int[elems(n, sizeof(int))];
  misuse_begin();
  ::operator delete(launder(a));
  misuse_end();
}

void new_deletearr_trivial(size_t n) {
  int *a = new int(7);
  misuse_begin();
  delete[] launder(a); /* no cookie for a trivial type: the same pointer */
  misuse_end();
  (void)n;
}

void malloc_delete_unsized(size_t n) {
  void *p = std::malloc(n);
  misuse_begin();
  ::operator delete(launder(p));
  misuse_end();
}

void malloc_deletearr(size_t n) {
  char *p = static_cast<char *>(std::malloc(n));
  misuse_begin();
  delete[] launder(p);
  misuse_end();
}

void new_obj_free(size_t n) {
  /* one object of about n bytes, freed by free */
  char *p = static_cast<char *>(::operator new(n));
  misuse_begin();
  std::free(launder(p));
  misuse_end();
}

void new_realloc(size_t n) {
  char *p = new char[n];
  misuse_begin();
  void *q = std::realloc(launder(p), n * 2);
  misuse_end();
  std::free(q);
}

void malloc_delete(size_t n) {
  char *p = static_cast<char *>(std::malloc(n));
  misuse_begin();
  delete launder(p);
  misuse_end();
}

void new_free(size_t n) {
  char *p = new char[n];
  misuse_begin();
  std::free(launder(p));
  misuse_end();
}

void sized_delete_wrong(size_t n) {
  void *p = ::operator new(n);
  misuse_begin();
  ::operator delete(launder(p), n * 4 + 64);
  misuse_end();
}

void delete_twice(size_t n) {
  char *p = new char[n];
  delete[] p;
  misuse_begin();
  delete[] launder(p);
  misuse_end();
}

volatile size_t huge = ~size_t(0) / 2;

void new_huge(size_t n) {
  bool thrown = false;
  try {
    char *p = launder(new char[huge]); /* kept, so the pair is not elided */
    delete[] p;
  } catch (const std::bad_alloc &) {
    thrown = true;
  }
  misuse_property(thrown);
  (void)n;
}

const misuse_case_t cases[] = {
    {"cxx_newarr_delete", "C++ mismatch", "new[] / delete (trivial type)", 1,
     newarr_delete},
    {"cxx_newarr_delete_dtor", "C++ mismatch",
     "new[] / delete (type with a destructor)", 1, newarr_delete_dtor},
    {"cxx_new_deletearr", "C++ mismatch",
     "new / delete[] (type with a destructor)", 0, new_deletearr},
    {"cxx_malloc_delete", "C++ mismatch", "malloc / delete", 1, malloc_delete},
    {"cxx_newarr_delete_unsized", "C++ mismatch",
     "new[] / delete, unsized operator", 1, newarr_delete_unsized},
    {"cxx_new_deletearr_trivial", "C++ mismatch",
     "new / delete[] (trivial type)", 0, new_deletearr_trivial},
    {"cxx_malloc_delete_unsized", "C++ mismatch",
     "malloc / delete, unsized operator", 1, malloc_delete_unsized},
    {"cxx_malloc_deletearr", "C++ mismatch", "malloc / delete[]", 1,
     malloc_deletearr},
    {"cxx_new_free", "C++ mismatch", "new[] / free", 1, new_free},
    {"cxx_new_obj_free", "C++ mismatch", "operator new / free", 1,
     new_obj_free},
    {"cxx_new_realloc", "C++ mismatch", "new[] / realloc", 1, new_realloc},
    {"cxx_sized_delete", "C++ mismatch", "sized delete with a wrong size", 1,
     sized_delete_wrong},
    {"cxx_delete_twice", "C++ mismatch", "delete[] twice", 1, delete_twice},
    {"cxx_new_huge", "absurd size", "new char[SIZE_MAX / 2] throws bad_alloc",
     2, new_huge},
};

} // namespace

extern "C" const misuse_case_t *misuse_cxx_cases(size_t *n) {
  *n = sizeof cases / sizeof cases[0];
  return cases;
}
