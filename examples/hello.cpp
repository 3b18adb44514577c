// hello.cpp: a C++ program built against an installed allot. Linked with
// the shared library, operator new and delete are allot's; linked with the
// static one, they are the C++ runtime's, which allocate with malloc, so
// the memory is allot's either way. The program checks that objects,
// arrays, containers and over-aligned types all land in allot blocks.
#include <allot.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace {

struct alignas(64) CacheLine {
  unsigned char bytes[64];
};

bool check(bool ok, const char *what) {
  if (!ok) std::fprintf(stderr, "hello: %s\n", what);
  return ok;
}

} // namespace

int main() {
  bool ok = check(allot_version() == ALLOT_VERSION,
                  "library and header versions differ");

  auto number = std::make_unique<long>(42);
  ok &= check(allot_owns(number.get()), "new long is not an allot block");

  std::vector<std::string> words{"hello", "from", "allot",
                                 std::string(100, '!')};
  ok &= check(allot_owns(words.data()), "vector storage is not allot's");
  ok &= check(allot_owns(words.back().data()), "string storage is not allot's");

  // C++17 passes the alignment to operator new: allot honours it.
  auto line = std::make_unique<CacheLine>();
  auto lines = std::make_unique<CacheLine[]>(8);
  ok &= check(allot_owns(line.get()) && allot_owns(lines.get()),
              "aligned objects are not allot blocks");
  ok &= check(reinterpret_cast<std::uintptr_t>(line.get()) % 64 == 0 &&
                  reinterpret_cast<std::uintptr_t>(lines.get()) % 64 == 0,
              "alignas(64) not honoured");

  int *none = new (std::nothrow) int[16]();
  ok &= check(none != nullptr && allot_owns(none), "nothrow new failed");
  delete[] none;

  if (!ok) return 1;
  std::printf("%s %s %s (allot %d.%d.%d)\n", words[0].c_str(), words[1].c_str(),
              words[2].c_str(), ALLOT_VERSION_MAJOR, ALLOT_VERSION_MINOR,
              ALLOT_VERSION_PATCH);
  return 0;
}
