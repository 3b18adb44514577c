// test_cxx_mallinfo.cpp: memory from every C++ allocation form is counted
// in mallinfo2(): uordblks (bytes in use) grows by at least what was asked
// for while the blocks are live, and drops by at least as much once they
// are deleted. Run under LD_PRELOAD=liballot.so with a program that does
// not link allot, and linked with it; allot_owns is looked up at run time to
// make sure allot is the allocator answering.
#include <dlfcn.h>
#include <malloc.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

namespace {

int failures;

using std::align_val_t;
using std::size_t;

struct Form {
  const char *name;
  void *(*alloc)(size_t);
  void (*dealloc)(void *, size_t);
};

constexpr align_val_t k64{64};
constexpr align_val_t k4096{4096};

const Form forms[] = {
    {"new", [](size_t n) { return ::operator new(n); },
     [](void *p, size_t) { ::operator delete(p); }},
    {"new[]", [](size_t n) { return ::operator new[](n); },
     [](void *p, size_t) { ::operator delete[](p); }},
    {"new/sized delete", [](size_t n) { return ::operator new(n); },
     [](void *p, size_t n) { ::operator delete(p, n); }},
    {"new[]/sized delete[]", [](size_t n) { return ::operator new[](n); },
     [](void *p, size_t n) { ::operator delete[](p, n); }},
    {"new nothrow", [](size_t n) { return ::operator new(n, std::nothrow); },
     [](void *p, size_t) { ::operator delete(p, std::nothrow); }},
    {"new[] nothrow",
     [](size_t n) { return ::operator new[](n, std::nothrow); },
     [](void *p, size_t) { ::operator delete[](p, std::nothrow); }},
    {"new align 64", [](size_t n) { return ::operator new(n, k64); },
     [](void *p, size_t) { ::operator delete(p, k64); }},
    {"new[] align 4096", [](size_t n) { return ::operator new[](n, k4096); },
     [](void *p, size_t) { ::operator delete[](p, k4096); }},
    {"new align 4096/sized delete",
     [](size_t n) { return ::operator new(n, k4096); },
     [](void *p, size_t n) { ::operator delete(p, n, k4096); }},
    {"new[] align 64/sized delete[]",
     [](size_t n) { return ::operator new[](n, k64); },
     [](void *p, size_t n) { ::operator delete[](p, n, k64); }},
    {"new align 64 nothrow",
     [](size_t n) { return ::operator new(n, k64, std::nothrow); },
     [](void *p, size_t) { ::operator delete(p, k64, std::nothrow); }},
    {"new[] align 4096 nothrow",
     [](size_t n) { return ::operator new[](n, k4096, std::nothrow); },
     [](void *p, size_t) { ::operator delete[](p, k4096, std::nothrow); }},
};

// Small, medium and large blocks; enough of each to stand out of whatever
// else the process allocates meanwhile (stdio buffers, nothing else here).
struct Batch {
  size_t size, count;
};
const Batch batches[] = {{48, 2000}, {1000, 200}, {20000, 20}, {3 << 20, 3}};

size_t in_use() {
  return mallinfo2().uordblks;
}

} // namespace

int main() {
  auto owns = reinterpret_cast<int (*)(const void *)>(
      dlsym(RTLD_DEFAULT, "allot_owns"));
  if (!owns) {
    std::fprintf(stderr, "allot_owns not found: is allot loaded?\n");
    return 1;
  }

  std::vector<void *> blocks;
  blocks.reserve(4096);
  for (const Form &f : forms) {
    for (const Batch &b : batches) {
      const size_t asked = b.size * b.count;
      size_t before = in_use();
      for (size_t i = 0; i < b.count; i++) {
        void *p = f.alloc(b.size);
        if (!p || !owns(p)) {
          std::fprintf(stderr, "%s(%zu): not an allot block\n", f.name, b.size);
          failures++;
        }
        blocks.push_back(p);
      }
      size_t live = in_use();
      if (live < before + asked) {
        std::fprintf(stderr,
                     "%s: %zu x %zu bytes live, uordblks grew by %zd only\n",
                     f.name, b.count, b.size, (ptrdiff_t)(live - before));
        failures++;
      }
      for (void *p : blocks)
        f.dealloc(p, b.size);
      blocks.clear();
      size_t after = in_use();
      if (after + asked > live) {
        std::fprintf(stderr,
                     "%s: %zu x %zu bytes freed, uordblks fell by %zd only\n",
                     f.name, b.count, b.size, (ptrdiff_t)(live - after));
        failures++;
      }
    }
  }
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::puts("ok");
  return 0;
}
