#!/bin/sh
# package_test.sh: install allot into a temporary prefix, then build the
# examples against the installed copy — through pkg-config and through
# find_package(allot) — and run them.
#
#   package_test.sh SOURCE_DIR BUILD_DIR [CONFIG]
#
# Uses $CMAKE (default cmake), $CC, $CXX (default cc, c++) and $PKG_CONFIG
# (default pkg-config). Exits 77 (skipped) when pkg-config is missing.
set -eu

src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
config=${3:-}
CMAKE=${CMAKE:-cmake}
CC=${CC:-cc}
CXX=${CXX:-c++}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}

if ! command -v "$PKG_CONFIG" >/dev/null 2>&1; then
  echo "package_test: no pkg-config, skipped"
  exit 77
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/allot-package.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
prefix=$work/prefix

fail() {
  echo "package_test: FAIL: $*" >&2
  exit 1
}

step() { echo "== $*"; }

# ---- install ------------------------------------------------------------
step "install into $prefix"
if [ -n "$config" ]; then
  "$CMAKE" --install "$build" --prefix "$prefix" --config "$config" >"$work/install.log" ||
    { cat "$work/install.log" >&2; fail "cmake --install"; }
else
  "$CMAKE" --install "$build" --prefix "$prefix" >"$work/install.log" ||
    { cat "$work/install.log" >&2; fail "cmake --install"; }
fi

pc=$(find "$prefix" -name allot.pc -path '*/pkgconfig/*' | head -n 1)
[ -n "$pc" ] || fail "no allot.pc installed"
libdir=$(dirname "$(dirname "$pc")")
for f in "$libdir/liballot.so" "$libdir/liballot.a" "$prefix/include/allot.h" \
  "$libdir/cmake/allot/allot-config.cmake" \
  "$libdir/cmake/allot/allot-config-version.cmake" \
  "$libdir/cmake/allot/allot-targets.cmake" \
  "$prefix/share/man/man1/allot.1" "$prefix/share/man/man3/allot.3"; do
  [ -e "$f" ] || fail "not installed: ${f#"$prefix"/}"
done
if [ -e "$src/tools/allot" ]; then
  [ -x "$prefix/bin/allot" ] || fail "bin/allot not installed as a program"
  if command -v python3 >/dev/null 2>&1; then
    tool_version=$("$prefix/bin/allot" --version) || fail "allot --version"
    want=$(sed -n 's/^project(allot VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
    [ "$tool_version" = "allot $want" ] ||
      fail "allot --version says '$tool_version', wanted 'allot $want'"
    # allot run preloads the installed library, found relative to itself.
    # shellcheck disable=SC2016 # expanded by the inner shell
    preload=$(env -u ALLOT_LIB "$prefix/bin/allot" run -- sh -c 'echo "$LD_PRELOAD"') ||
      fail "allot run"
    case "$preload" in "$prefix"/lib*/liballot.so*) ;; *)
      fail "allot run preloads '$preload', not the installed library" ;;
    esac
    # allot bench finds the installed workloads, when they were installed.
    if [ -e "$prefix/libexec/allot/bench/micro" ]; then
      listing=$(env -u ALLOT_LIB "$prefix/bin/allot" bench --list) ||
        fail "allot bench --list"
      case "$listing" in *"Bench directory: $prefix/libexec/allot/bench"*) ;; *)
        fail "allot bench does not use the installed workloads: $listing" ;;
      esac
    fi
  fi
fi
# The shared library replaces the operators too; the static one leaves them
# to the opt-in library (see cmake/cxx.cmake).
nm -D --defined-only "$libdir/liballot.so" | grep -q ' _Znwm$' ||
  fail "liballot.so does not define operator new"
nm -D --defined-only "$libdir/liballot.so" | grep -q ' malloc$' ||
  fail "liballot.so does not define malloc"
if [ -e "$libdir/liballot-cxx.a" ]; then
  nm "$libdir/liballot-cxx.a" | grep -q ' T _Znwm$' ||
    fail "liballot-cxx.a does not define operator new"
  if nm "$libdir/liballot.a" | grep -q ' T _Znwm$'; then
    fail "liballot.a defines operator new: it would not be opt-in"
  fi
fi

# The man pages must be well-formed (groff warns about bad requests).
if command -v groff >/dev/null 2>&1; then
  for page in "$prefix/share/man/man1/allot.1" "$prefix/share/man/man3/allot.3"; do
    out=$(groff -man -ww -z "$page" 2>&1) || fail "groff failed on $page"
    [ -z "$out" ] || fail "groff warnings for $page: $out"
  done
fi

# ---- pkg-config -----------------------------------------------------------
step "pkg-config"
PKG_CONFIG_PATH=$libdir/pkgconfig
export PKG_CONFIG_PATH
version=$("$PKG_CONFIG" --modversion allot) || fail "pkg-config cannot find allot"
header_version=$(sed -n 's/^#define ALLOT_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' \
  "$prefix/include/allot.h" | paste -sd. -)
[ "$version" = "$header_version" ] ||
  fail "allot.pc says $version, allot.h says $header_version"
cflags=$("$PKG_CONFIG" --cflags allot)
libs=$("$PKG_CONFIG" --libs allot)
static_libs=$("$PKG_CONFIG" --libs --static allot)
case " $cflags " in *" -I$prefix/include "*) ;; *) fail "cflags: $cflags" ;; esac
case " $libs " in *" -L$libdir "*) ;; *) fail "libs: $libs" ;; esac
case " $libs " in *" -lallot "*) ;; *) fail "libs: $libs" ;; esac
case " $static_libs " in *" -pthread "*) ;; *) fail "static libs: $static_libs" ;; esac

pc_out=$work/pkg-config
mkdir -p "$pc_out"
archive=$("$PKG_CONFIG" --variable=libdir allot)/liballot.a
# Linking liballot.a into a dynamically linked program: the archive by path
# (-lallot would take the shared library), plus what it needs.
static_extra=$("$PKG_CONFIG" --libs-only-other --static allot)
# shellcheck disable=SC2086 # the flags are lists
{
  "$CC" -o "$pc_out/hello_c" "$src/examples/hello.c" $cflags $libs &&
    "$CXX" -std=c++17 -o "$pc_out/hello_cpp" "$src/examples/hello.cpp" $cflags $libs &&
    "$CC" -o "$pc_out/hello_c_static" "$src/examples/hello.c" $cflags \
      "$archive" $static_extra &&
    "$CXX" -std=c++17 -o "$pc_out/hello_cpp_static" "$src/examples/hello.cpp" \
      $cflags "$archive" $static_extra
} || fail "building the examples with pkg-config flags"
# A fully static program, the way pkg-config --static is meant to be used
# (where the C library has a static version).
full_static=
# shellcheck disable=SC2086
if echo 'int main(void) { return 0; }' >"$work/empty.c" &&
  "$CC" -static -o "$work/empty" "$work/empty.c" 2>/dev/null; then
  full_static="hello_c_full hello_cpp_full"
  {
    "$CC" -static -o "$pc_out/hello_c_full" "$src/examples/hello.c" $cflags $static_libs &&
      "$CXX" -static -std=c++17 -o "$pc_out/hello_cpp_full" "$src/examples/hello.cpp" \
        $cflags $static_libs
  } || fail "building fully static examples with pkg-config --static flags"
fi

run() {
  name=$1
  shift
  rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -eq 0 ] || { echo "$out" >&2; fail "$name exited with status $rc"; }
  echo "$name: $out"
}
for prog in hello_c hello_cpp; do
  # The installed library, not the build tree's.
  resolved=$(LD_LIBRARY_PATH=$libdir ldd "$pc_out/$prog" | sed -n 's/.*liballot\.so[^ ]* => \([^ ]*\).*/\1/p')
  case "$resolved" in "$libdir"/*) ;; *) fail "$prog would load liballot from '$resolved'" ;; esac
  run "pkg-config $prog" env LD_LIBRARY_PATH="$libdir" "$pc_out/$prog"
done
for prog in hello_c_static hello_cpp_static; do
  if ldd "$pc_out/$prog" | grep -q liballot; then fail "$prog links liballot.so"; fi
  run "pkg-config $prog" "$pc_out/$prog"
done
for prog in $full_static; do
  run "pkg-config $prog" "$pc_out/$prog"
done

# ---- find_package ---------------------------------------------------------
step "find_package"
cm_build=$work/cmake-build
"$CMAKE" -S "$src/examples" -B "$cm_build" \
  -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON \
  -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_BUILD_TYPE=Release >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log" >&2; fail "configuring the examples"; }
found=$(sed -n 's/^allot_DIR:PATH=//p' "$cm_build/CMakeCache.txt")
[ "$found" = "$libdir/cmake/allot" ] || fail "find_package found allot in '$found'"
"$CMAKE" --build "$cm_build" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; fail "building the examples"; }

for prog in hello_c hello_cpp; do
  resolved=$(ldd "$cm_build/$prog" | sed -n 's/.*liballot\.so[^ ]* => \([^ ]*\).*/\1/p')
  case "$resolved" in "$libdir"/*) ;; *) fail "$prog would load liballot from '$resolved'" ;; esac
  run "find_package $prog" "$cm_build/$prog"
done
for prog in hello_c_static hello_cpp_static hello_cpp_static_cxx; do
  [ -e "$cm_build/$prog" ] || {
    [ "$prog" = hello_cpp_static_cxx ] && continue
    fail "$prog not built"
  }
  if ldd "$cm_build/$prog" | grep -q liballot; then fail "$prog links liballot.so"; fi
  run "find_package $prog" "$cm_build/$prog"
done
if [ -e "$cm_build/hello_cpp_static_cxx" ]; then
  nm "$cm_build/hello_cpp_static_cxx" | grep -q ' T _Znwm$' ||
    fail "hello_cpp_static_cxx does not define operator new itself"
fi

echo "package_test: ok"
