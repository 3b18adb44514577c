/* test_tools_cxx.cpp: C++ allocation for the tests of `allot record` and
 * `allot replay` (test/tools.cmake): every form of operator new and delete
 * (plain, array, aligned, sized, nothrow), containers, and a std::bad_alloc
 * thrown by operator new that must unwind through the recorder's frames.
 * Prints "cxx: ok" and exits 0. */
#include <cstdio>
#include <map>
#include <new>
#include <string>
#include <vector>

struct alignas(64) Wide {
  char bytes[200];
};

static void *volatile sink;

int main() {
  std::map<int, std::string> m;
  for (int i = 0; i < 2000; i++)
    m[i] = std::string(40 + i % 200, 'x');
  std::vector<Wide *> wides;
  for (int i = 0; i < 300; i++)
    wides.push_back(new Wide);
  for (Wide *w : wides)
    delete w; /* aligned (and sized) delete */
  for (int i = 0; i < 300; i++) {
    char *a = new char[100 + i];
    sink = a; /* observed: no compiler may elide the pair */
    delete[] a;
    Wide *arr = new Wide[3];
    sink = arr;
    delete[] arr;
    void *p = ::operator new(64, std::nothrow);
    ::operator delete(p, std::nothrow);
    void *q = ::operator new[](64, std::align_val_t(128), std::nothrow);
    ::operator delete[](q, std::align_val_t(128), std::nothrow);
    void *r = ::operator new(48);
    ::operator delete(r, 48);
  }
  bool threw = false;
  try {
    sink = ::operator new(~(size_t)0 / 2);
  } catch (const std::bad_alloc &) {
    threw = true;
  }
  if (!threw) {
    std::puts("cxx: FAIL no bad_alloc");
    return 1;
  }
  m.clear();
  std::puts("cxx: ok");
  return 0;
}
