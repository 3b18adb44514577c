// test_cxx_new.cpp: every replaceable operator new/delete form — which
// definition the program uses, that its memory is an allot block, the
// alignment of alignas types, std::bad_alloc, nothrow and the new-handler.
//
// One source, several builds (see test/package.cmake), named by argv[1]:
//   shared          linked with liballot.so: operators are liballot's
//   preload         not linked, run under LD_PRELOAD=liballot.so: same
//   static          linked with liballot-cxx.a: operators are in the program
//   static-default  linked with liballot.a only: operators are libstdc++'s,
//                   their memory allot's (the static operators are opt-in)
//   static-full     -static with liballot-cxx.a: no dynamic symbols to look
//                   at; memory and semantics only
// ALLOT_TEST_DIRECT is defined when the program links allot (all but
// preload): then it calls allot_owns itself instead of looking it up.
#include <allot.h>

#include <dlfcn.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,    \
                   #cond);                                                     \
      failures++;                                                              \
    }                                                                          \
  } while (0)

int (*owns)(const void *);

enum class Mode { Shared, Preload, Static, StaticDefault, StaticFull };
Mode mode;

bool aligned(const void *p, std::size_t a) {
  return reinterpret_cast<std::uintptr_t>(p) % a == 0;
}

// Sizes the optimiser cannot see, so huge requests reach operator new
// (and draw no -Walloc-size-larger-than warnings).
volatile std::size_t huge_sizes[] = {SIZE_MAX / 2, SIZE_MAX - 4096, SIZE_MAX};

// Fill a block so a block smaller than asked for would corrupt the heap,
// which the later checks (and allot's own) would notice.
void touch(void *p, std::size_t n) {
  std::memset(p, 0xA5, n);
  asm volatile("" : : "r"(p) : "memory");
}

/* ---- which definition ------------------------------------------------ */

struct Form {
  const char *mangled;
  void *fn;
};

template <typename F> void *fn_addr(F f) {
  return reinterpret_cast<void *>(f);
}

using std::align_val_t;
using std::nothrow_t;
using std::size_t;

const Form forms[] = {
    {"_Znwm", fn_addr(static_cast<void *(*)(size_t)>(&::operator new))},
    {"_Znam", fn_addr(static_cast<void *(*)(size_t)>(&::operator new[]))},
    {"_ZnwmRKSt9nothrow_t",
     fn_addr(static_cast<void *(*)(size_t, const nothrow_t &) noexcept>(
         &::operator new))},
    {"_ZnamRKSt9nothrow_t",
     fn_addr(static_cast<void *(*)(size_t, const nothrow_t &) noexcept>(
         &::operator new[]))},
    {"_ZnwmSt11align_val_t",
     fn_addr(static_cast<void *(*)(size_t, align_val_t)>(&::operator new))},
    {"_ZnamSt11align_val_t",
     fn_addr(static_cast<void *(*)(size_t, align_val_t)>(&::operator new[]))},
    {"_ZnwmSt11align_val_tRKSt9nothrow_t",
     fn_addr(
         static_cast<void *(*)(size_t, align_val_t,
                               const nothrow_t &) noexcept>(&::operator new))},
    {"_ZnamSt11align_val_tRKSt9nothrow_t",
     fn_addr(static_cast<void *(*)(size_t, align_val_t,
                                   const nothrow_t &) noexcept>(
         &::operator new[]))},
    {"_ZdlPv",
     fn_addr(static_cast<void (*)(void *) noexcept>(&::operator delete))},
    {"_ZdaPv",
     fn_addr(static_cast<void (*)(void *) noexcept>(&::operator delete[]))},
    {"_ZdlPvm", fn_addr(static_cast<void (*)(void *, size_t) noexcept>(
                    &::operator delete))},
    {"_ZdaPvm", fn_addr(static_cast<void (*)(void *, size_t) noexcept>(
                    &::operator delete[]))},
    {"_ZdlPvRKSt9nothrow_t",
     fn_addr(static_cast<void (*)(void *, const nothrow_t &) noexcept>(
         &::operator delete))},
    {"_ZdaPvRKSt9nothrow_t",
     fn_addr(static_cast<void (*)(void *, const nothrow_t &) noexcept>(
         &::operator delete[]))},
    {"_ZdlPvSt11align_val_t",
     fn_addr(static_cast<void (*)(void *, align_val_t) noexcept>(
         &::operator delete))},
    {"_ZdaPvSt11align_val_t",
     fn_addr(static_cast<void (*)(void *, align_val_t) noexcept>(
         &::operator delete[]))},
    {"_ZdlPvmSt11align_val_t",
     fn_addr(static_cast<void (*)(void *, size_t, align_val_t) noexcept>(
         &::operator delete))},
    {"_ZdaPvmSt11align_val_t",
     fn_addr(static_cast<void (*)(void *, size_t, align_val_t) noexcept>(
         &::operator delete[]))},
    {"_ZdlPvSt11align_val_tRKSt9nothrow_t",
     fn_addr(
         static_cast<void (*)(void *, align_val_t, const nothrow_t &) noexcept>(
             &::operator delete))},
    {"_ZdaPvSt11align_val_tRKSt9nothrow_t",
     fn_addr(
         static_cast<void (*)(void *, align_val_t, const nothrow_t &) noexcept>(
             &::operator delete[]))},
};

int local_function() {
  return 0;
}

// The object (shared library or the program) that defines allot_malloc.
const void *allot_object() {
  Dl_info info;
#ifdef ALLOT_TEST_DIRECT
  void *addr = fn_addr(&allot_malloc);
#else
  void *addr = dlsym(RTLD_DEFAULT, "allot_malloc");
#endif
  if (!addr || !dladdr(addr, &info)) return nullptr;
  return info.dli_fbase;
}

void test_which_definition() {
  if (mode == Mode::StaticFull) return;
  const void *allot_base = allot_object();
  CHECK(allot_base != nullptr);
  Dl_info self;
  CHECK(dladdr(fn_addr(&local_function), &self));
  if (mode == Mode::Static || mode == Mode::StaticDefault)
    CHECK(allot_base == self.dli_fbase); // liballot.a is inside the program
  else
    CHECK(allot_base != self.dli_fbase);

  for (const Form &f : forms) {
    Dl_info info;
    if (!dladdr(f.fn, &info)) {
      std::fprintf(stderr, "%s: dladdr found no object\n", f.mangled);
      failures++;
      continue;
    }
    bool from_allot = info.dli_fbase == allot_base;
    bool want_allot = mode != Mode::StaticDefault;
    if (from_allot != want_allot) {
      std::fprintf(stderr, "%s: defined in %s, wanted %s\n", f.mangled,
                   info.dli_fname, want_allot ? "allot" : "the C++ runtime");
      failures++;
    }
    // In a shared object the symbol found must be the very form asked for.
    if (mode == Mode::Shared || mode == Mode::Preload) {
      if (!info.dli_sname || std::strcmp(info.dli_sname, f.mangled) != 0 ||
          info.dli_saddr != f.fn) {
        std::fprintf(stderr, "%s: address is symbol %s\n", f.mangled,
                     info.dli_sname ? info.dli_sname : "(none)");
        failures++;
      }
    }
  }
}

/* ---- every form: memory, alignment, deallocation ------------------------ */

const size_t sizes[] = {0, 1, 24, 200, 5000, 9000, 100000, 3 << 20};
const size_t alignments[] = {16, 32, 64, 256, 4096, 65536, size_t(1) << 21};

void check_block(void *p, size_t size, size_t align) {
  CHECK(p != nullptr);
  if (!p) return;
  CHECK(owns(p));
  CHECK(aligned(p, align));
  touch(p, size);
}

// Allocate with one form, free with its partner, and check the block was
// live in between and is no longer an allot block after: the delete really
// freed it. (The copy hidden from the compiler keeps -Wuse-after-free quiet
// about looking at a freed pointer, which is the point here.)
template <typename New, typename Delete>
void round_trip(size_t n, size_t align, New alloc, Delete dealloc) {
  void *p = alloc(n);
  check_block(p, n, align);
  void *q = p;
  asm volatile("" : "+r"(q));
  dealloc(p, n);
  CHECK(!owns(q));
}

void test_plain_forms() {
  for (size_t n : sizes) {
    round_trip(
        n, 16, [](size_t s) { return ::operator new(s); },
        [](void *p, size_t) { ::operator delete(p); });
    round_trip(
        n, 16, [](size_t s) { return ::operator new[](s); },
        [](void *p, size_t) { ::operator delete[](p); });
    round_trip(
        n, 16, [](size_t s) { return ::operator new(s); },
        [](void *p, size_t s) { ::operator delete(p, s); });
    round_trip(
        n, 16, [](size_t s) { return ::operator new[](s); },
        [](void *p, size_t s) { ::operator delete[](p, s); });
    round_trip(
        n, 16, [](size_t s) { return ::operator new(s, std::nothrow); },
        [](void *p, size_t) { ::operator delete(p, std::nothrow); });
    round_trip(
        n, 16, [](size_t s) { return ::operator new[](s, std::nothrow); },
        [](void *p, size_t) { ::operator delete[](p, std::nothrow); });
  }
}

void test_aligned_forms() {
  for (size_t a : alignments) {
    align_val_t al{a};
    for (size_t n : sizes) {
      if (n > (size_t(1) << 20) && a > 4096) continue; // keep it quick
      round_trip(
          n, a, [al](size_t s) { return ::operator new(s, al); },
          [al](void *p, size_t) { ::operator delete(p, al); });
      round_trip(
          n, a, [al](size_t s) { return ::operator new[](s, al); },
          [al](void *p, size_t) { ::operator delete[](p, al); });
      round_trip(
          n, a, [al](size_t s) { return ::operator new(s, al); },
          [al](void *p, size_t s) { ::operator delete(p, s, al); });
      round_trip(
          n, a, [al](size_t s) { return ::operator new[](s, al); },
          [al](void *p, size_t s) { ::operator delete[](p, s, al); });
      round_trip(
          n, a, [al](size_t s) { return ::operator new(s, al, std::nothrow); },
          [al](void *p, size_t) { ::operator delete(p, al, std::nothrow); });
      round_trip(
          n, a,
          [al](size_t s) { return ::operator new[](s, al, std::nothrow); },
          [al](void *p, size_t) { ::operator delete[](p, al, std::nothrow); });
    }
  }
}

void test_delete_null() {
  align_val_t al{64};
  ::operator delete(nullptr);
  ::operator delete[](nullptr);
  ::operator delete(nullptr, size_t(8));
  ::operator delete[](nullptr, size_t(8));
  ::operator delete(nullptr, std::nothrow);
  ::operator delete[](nullptr, std::nothrow);
  ::operator delete(nullptr, al);
  ::operator delete[](nullptr, al);
  ::operator delete(nullptr, size_t(8), al);
  ::operator delete[](nullptr, size_t(8), al);
  ::operator delete(nullptr, al, std::nothrow);
  ::operator delete[](nullptr, al, std::nothrow);
}

// Distinct calls, distinct blocks, even for size 0.
void test_zero_size_distinct() {
  void *a = ::operator new(0), *b = ::operator new(0);
  void *c = ::operator new[](0), *d = ::operator new[](0);
  CHECK(a && b && c && d);
  CHECK(a != b && c != d && a != c);
  ::operator delete(a);
  ::operator delete(b);
  ::operator delete[](c);
  ::operator delete[](d);
}

/* ---- new-expressions and alignas types ------------------------------ */

struct alignas(64) A64 {
  unsigned char b[64];
};
struct alignas(256) A256 {
  unsigned char b[200];
};
struct alignas(4096) A4096 {
  unsigned char b[10];
};

// With a destructor, new T[n] stores the count in front of the elements.
int live_objects;
struct alignas(128) Counted {
  unsigned char b[40];
  Counted() { live_objects++; }
  ~Counted() { live_objects--; }
};

template <typename T> void test_alignas_type() {
  const size_t a = alignof(T);
  T *p = new T;
  check_block(p, sizeof(T), a);
  delete p;

  T *v = new T[5];
  check_block(v, 5 * sizeof(T), a);
  delete[] v;

  p = new (std::nothrow) T;
  check_block(p, sizeof(T), a);
  delete p;

  v = new (std::nothrow) T[3];
  check_block(v, 3 * sizeof(T), a);
  delete[] v;

  auto u = std::make_unique<T>();
  check_block(u.get(), sizeof(T), a);
  auto ua = std::make_unique<T[]>(7);
  check_block(ua.get(), 7 * sizeof(T), a);

  std::vector<T> vec(33);
  check_block(vec.data(), vec.size() * sizeof(T), a);
  vec.resize(1000); // reallocates through the allocator
  check_block(vec.data(), vec.size() * sizeof(T), a);

  // Big enough for the medium and large paths.
  v = new T[(3 << 20) / sizeof(T)];
  check_block(v, ((3 << 20) / sizeof(T)) * sizeof(T), a);
  delete[] v;
}

void test_new_expressions() {
  test_alignas_type<A64>();
  test_alignas_type<A256>();
  test_alignas_type<A4096>();

  for (int n : {1, 7, 100, 5000}) {
    Counted *v = new Counted[n];
    CHECK(live_objects == n);
    CHECK(aligned(v, alignof(Counted)));
    touch(v, n * sizeof(Counted));
    delete[] v;
    CHECK(live_objects == 0);
  }

  auto s = std::make_shared<A256>();
  CHECK(aligned(s.get(), 256));

  std::string text(1000, 'x');
  CHECK(owns(text.data()));
  std::vector<int> ints(12345, 7);
  CHECK(owns(ints.data()));
}

/* ---- failure: std::bad_alloc, nothrow, the new-handler ----------------- */

// A new-expression whose result is only compared may be elided (and
// folded to non-null) by the compiler; this makes the result escape.
void *escape(void *p) {
  asm volatile("" : "+r"(p));
  return p;
}

template <typename F> bool throws_bad_alloc(F f) {
  try {
    void *p = f();
    std::fprintf(stderr, "allocation that should fail returned %p\n", p);
    return false;
  } catch (const std::bad_alloc &) {
    return true;
  }
}

void test_bad_alloc() {
  CHECK(std::get_new_handler() == nullptr);
  align_val_t al{64};
  for (size_t n : huge_sizes) {
    CHECK(throws_bad_alloc([n] { return ::operator new(n); }));
    CHECK(throws_bad_alloc([n] { return ::operator new[](n); }));
    CHECK(throws_bad_alloc([n] { return new char[n]; }));
    CHECK(throws_bad_alloc([n] { return new A256[n / 1024]; }));
    CHECK(::operator new(n, std::nothrow) == nullptr);
    CHECK(::operator new[](n, std::nothrow) == nullptr);
    // libstdc++'s own aligned forms (GCC 12) round the size up to the
    // alignment without an overflow check, so a size within the alignment
    // of SIZE_MAX wraps to a tiny block: only allot's forms are held to it.
    if (mode == Mode::StaticDefault && n > SIZE_MAX - 64) continue;
    CHECK(throws_bad_alloc([n, al] { return ::operator new(n, al); }));
    CHECK(throws_bad_alloc([n, al] { return ::operator new[](n, al); }));
    CHECK(::operator new(n, al, std::nothrow) == nullptr);
    CHECK(::operator new[](n, al, std::nothrow) == nullptr);
    CHECK(escape(new (std::nothrow) char[n]) == nullptr);
    CHECK(escape(new (std::nothrow) A4096[n / 8192]) == nullptr);
  }
  // A count whose byte size overflows: GCC throws bad_array_new_length (a
  // bad_alloc), clang asks operator new[] for SIZE_MAX bytes, which
  // libstdc++'s aligned form (above) gets wrong.
  volatile size_t count = SIZE_MAX / 64;
  if (mode != Mode::StaticDefault)
    CHECK(throws_bad_alloc([&] { return new A256[count]; }));
}

int handler_calls;
int handler_limit;

// Gives up (uninstalls itself) after handler_limit calls.
void counting_handler() {
  if (++handler_calls >= handler_limit) std::set_new_handler(nullptr);
}

void throwing_handler() {
  handler_calls++;
  throw std::bad_alloc();
}

void test_new_handler() {
  align_val_t al{256};
  volatile size_t n = huge_sizes[0];
  using Alloc = void *(*)(size_t, align_val_t);
  const Alloc throwing[] = {
      [](size_t s, align_val_t) { return ::operator new(s); },
      [](size_t s, align_val_t) { return ::operator new[](s); },
      [](size_t s, align_val_t a) { return ::operator new(s, a); },
      [](size_t s, align_val_t a) { return ::operator new[](s, a); },
  };
  const Alloc nothrowing[] = {
      [](size_t s, align_val_t) { return ::operator new(s, std::nothrow); },
      [](size_t s, align_val_t) { return ::operator new[](s, std::nothrow); },
      [](size_t s, align_val_t a) {
        return ::operator new(s, a, std::nothrow);
      },
      [](size_t s, align_val_t a) {
        return ::operator new[](s, a, std::nothrow);
      },
  };

  // The handler runs until it uninstalls itself; then bad_alloc (or null).
  for (Alloc f : throwing) {
    handler_calls = 0;
    handler_limit = 3;
    std::set_new_handler(counting_handler);
    CHECK(throws_bad_alloc([&] { return f(n, al); }));
    CHECK(handler_calls == 3);
    CHECK(std::get_new_handler() == nullptr);
  }
  for (Alloc f : nothrowing) {
    handler_calls = 0;
    handler_limit = 3;
    std::set_new_handler(counting_handler);
    CHECK(f(n, al) == nullptr);
    CHECK(handler_calls == 3); // nothrow forms call the handler too
    CHECK(std::get_new_handler() == nullptr);
  }

  // A handler that throws: the exception propagates, or nothrow gives null.
  for (Alloc f : throwing) {
    handler_calls = 0;
    std::set_new_handler(throwing_handler);
    CHECK(throws_bad_alloc([&] { return f(n, al); }));
    CHECK(handler_calls == 1);
  }
  for (Alloc f : nothrowing) {
    handler_calls = 0;
    std::set_new_handler(throwing_handler);
    CHECK(f(n, al) == nullptr);
    CHECK(handler_calls == 1);
  }
  std::set_new_handler(nullptr);

  // No handler call when the allocation succeeds.
  handler_calls = 0;
  std::set_new_handler(throwing_handler);
  for (int i = 0; i < 4; i++) {
    void *p = throwing[i](100, al);
    CHECK(p && owns(p));
    if (i == 0)
      ::operator delete(p);
    else if (i == 1)
      ::operator delete[](p);
    else if (i == 2)
      ::operator delete(p, al);
    else
      ::operator delete[](p, al);
  }
  CHECK(handler_calls == 0);
  std::set_new_handler(nullptr);
}

/* The classic use of the handler: release a reserve so the retry succeeds.
 * Under an address-space limit a request fails while the reserve is held,
 * and must succeed once the handler has freed it — in a child process, so
 * the limit stays there. */
void *reserve;
const size_t kReserve = size_t(320) << 20;

void releasing_handler() {
  handler_calls++;
  if (reserve) {
    ::operator delete(reserve);
    reserve = nullptr;
    malloc_trim(0); // give the freed space back to the system
  } else {
    std::set_new_handler(nullptr);
  }
}

size_t mapped_bytes() {
  FILE *f = std::fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f) {
    if (std::fscanf(f, "%lu", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  return pages * size_t(sysconf(_SC_PAGESIZE));
}

int reserve_child(bool aligned_form) {
  struct rlimit lim;
  if (getrlimit(RLIMIT_AS, &lim) != 0) return 10;
  lim.rlim_cur = mapped_bytes() + (size_t(512) << 20);
  if (setrlimit(RLIMIT_AS, &lim) != 0) return 11;

  reserve = ::operator new(kReserve);
  if (!reserve) return 12;
  handler_calls = 0;
  std::set_new_handler(releasing_handler);
  void *p;
  try {
    p = aligned_form ? ::operator new (kReserve, align_val_t{4096})
                     : ::operator new[](kReserve);
  } catch (const std::bad_alloc &) {
    std::fprintf(stderr, "reserve released, allocation still failed\n");
    return 13;
  }
  if (handler_calls != 1) {
    std::fprintf(stderr, "handler called %d times, wanted 1\n", handler_calls);
    return 14;
  }
  if (reserve || !owns(p) || !aligned(p, 4096)) return 15;
  touch(p, 4096);
  return 0;
}

void test_handler_releases_reserve() {
  for (bool aligned_form : {false, true}) {
    std::fflush(nullptr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) _exit(reserve_child(aligned_form));
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "reserve child (%s): status %#x\n",
                   aligned_form ? "aligned" : "plain", status);
      failures++;
    }
  }
}

/* ---- across threads ---------------------------------------------------- */

void test_threads() {
  std::vector<A64 *> made(1000);
  std::thread maker([&] {
    for (auto &p : made)
      p = new A64;
  });
  maker.join();
  std::thread breaker([&] {
    for (auto p : made) {
      CHECK(owns(p) && aligned(p, 64));
      delete p;
    }
  });
  breaker.join();
}

} // namespace

int main(int argc, char **argv) {
  const char *m = argc > 1 ? argv[1] : "";
  if (!std::strcmp(m, "shared"))
    mode = Mode::Shared;
  else if (!std::strcmp(m, "preload"))
    mode = Mode::Preload;
  else if (!std::strcmp(m, "static"))
    mode = Mode::Static;
  else if (!std::strcmp(m, "static-default"))
    mode = Mode::StaticDefault;
  else if (!std::strcmp(m, "static-full"))
    mode = Mode::StaticFull;
  else {
    std::fprintf(stderr,
                 "usage: %s shared|preload|static|static-default|static-full\n",
                 argv[0]);
    return 2;
  }

#ifdef ALLOT_TEST_DIRECT
  owns = &allot_owns;
#else
  owns = reinterpret_cast<int (*)(const void *)>(
      dlsym(RTLD_DEFAULT, "allot_owns"));
  if (!owns) {
    std::fprintf(stderr, "allot_owns not found: is liballot preloaded?\n");
    return 1;
  }
#endif

  test_which_definition();
  test_plain_forms();
  test_aligned_forms();
  test_delete_null();
  test_zero_size_distinct();
  test_new_expressions();
  test_bad_alloc();
  test_new_handler();
  test_handler_releases_reserve();
  test_threads();

  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("ok (%s)\n", m);
  return 0;
}
