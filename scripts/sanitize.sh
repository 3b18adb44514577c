#!/usr/bin/env bash
# sanitize.sh: allot under the sanitizers, built with clang.
#
#   undefined  the whole test suite, with the allocator and every test
#              compiled -fsanitize=undefined -fno-sanitize-recover=all: any
#              undefined behaviour aborts the test that hits it.
#   address    the stress tests through the prefixed allot_* API (ASan owns
#   thread     malloc itself, so allot runs beside it as allot-prefixed,
#              compiled with the sanitizer): hostile_pstress (threads,
#              cross-thread frees, heap abandonment, first-class heaps) and
#              the fuzz corpus replay. Under ASan allot switches to its
#              checked mode and poisons what callers must not touch (the
#              misuse-asan-* tests check that ASan then reports an overflow
#              and uses after free of allot blocks); TSan checks allot's own
#              synchronisation.
#
#   scripts/sanitize.sh [--part quick|long] [undefined|address|thread ...]
#                                         (default: all three, every test)
#
#   --part quick  UBSan runs every test but the long ones, which the default
#                 build's suite runs as they are: the real programs
#                 (core.real.*, real_more_*), the memory tests (mem.*) and
#                 the kernel-call failure sweeps (hostile_osfail*).
#                 scripts/test.sh, with ASan and TSan.
#   --part long   UBSan runs only those (scripts/test-long.sh); ASan and
#                 TSan, if named, run as always.
#
# Build directories: build-sanitize/<name> (SANITIZE_BUILD overrides the
# parent). Takes a few minutes on two cores; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
parent=${SANITIZE_BUILD:-build-sanitize}
part=all
if [ "${1:-}" = --part ]; then
  part=${2:-}
  shift 2 || true
fi
case $part in
all | quick | long) ;;
*)
  echo "sanitize: --part quick or --part long" >&2
  exit 2
  ;;
esac
sans=("$@")
[ ${#sans[@]} -gt 0 ] || sans=(undefined address thread)
CC=${CC:-clang}
CXX=${CXX:-clang++}
command -v "$CC" >/dev/null || {
  echo "sanitize: $CC not found" >&2
  exit 1
}
# -shared-libsan (CMakeLists.txt) links the sanitizer runtimes as shared
# libraries, which live beside clang's other runtimes, not on the loader's
# path: programs that preload liballot.so need to find them too.
rtdir=$(dirname "$("$CC" -print-file-name=libclang_rt.ubsan_standalone-x86_64.so)")
export LD_LIBRARY_PATH=$rtdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# handle_segv=0: the misuse suite expects faults to arrive as signals
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:handle_segv=0:handle_sigbus=0
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
# a shorter list of Python's own tests than the default run's (time)
export REAL_MORE_PYTESTS=${REAL_MORE_PYTESTS:-"test_list test_dict test_set test_json"}
failed=()
start=$SECONDS
mkdir -p "$parent"
for san in "${sans[@]}"; do
  dir=$parent/$san
  echo "== sanitize: $san ($dir)"
  t0=$SECONDS
  CC=$CC CXX=$CXX cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DALLOT_SANITIZE="$san" -DALLOT_BUILD_BENCH=OFF >"$dir.configure.log" 2>&1 ||
    {
      cat "$dir.configure.log"
      failed+=("$san: configure")
      continue
    }
  case $san in
  undefined)
    # keep going past a target that fails to build: the tests of the rest
    # still run (and the missing ones fail as "Not Run")
    if ! cmake --build "$dir" -j "$jobs" -- -k >"$dir.build.log" 2>&1; then
      grep -E 'error|Error' "$dir.build.log" | head -20
      failed+=("$san: build")
    fi
    echo "== sanitize: $san built in $((SECONDS - t0)) s"
    # leak_caught checks that its own check fires: it needs the leak to grow
    # RSS within 5 s, which the instrumented build is too slow to do
    long='core[.]real[.].*|real_more_.*|mem[.].*|hostile_osfail.*'
    select=()
    case $part in
    quick) select=(-E "^(mem[.]prodcons[.]leak_caught|$long)\$") ;;
    long) select=(-R "^($long)\$" -E '^mem[.]prodcons[.]leak_caught$') ;;
    all) select=(-E '^mem[.]prodcons[.]leak_caught$') ;;
    esac
    ctest --test-dir "$dir" -j "$jobs" --output-on-failure --timeout 600 \
      "${select[@]}" || failed+=("$san: tests")
    echo "== sanitize: $san in $((SECONDS - t0)) s"
    ;;
  address | thread)
    targets=(hostile_pstress fuzz_replay)
    tests='^(hostile_pstress|fuzz_corpus'
    if [ "$san" = address ]; then
      targets+=(misuse_asan)
      tests+='|misuse-asan-.*'
    fi
    if ! cmake --build "$dir" -j "$jobs" --target "${targets[@]}" \
      >"$dir.build.log" 2>&1; then
      tail -30 "$dir.build.log"
      failed+=("$san: build")
      continue
    fi
    ctest --test-dir "$dir" -j "$jobs" --output-on-failure --timeout 600 \
      -R "$tests)\$" || failed+=("$san: tests")
    echo "== sanitize: $san in $((SECONDS - t0)) s"
    ;;
  *)
    echo "sanitize: unknown sanitizer $san" >&2
    exit 2
    ;;
  esac
done
echo "== sanitize: $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'sanitize: FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "sanitize: passed (${sans[*]}; UBSan tests: $part)"
