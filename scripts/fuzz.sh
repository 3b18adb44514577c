#!/usr/bin/env bash
# fuzz.sh: a long libFuzzer run of test/fuzz/fuzz_ops.c, outside CI.
#
#   scripts/fuzz.sh [duration] [mode] [jobs]
#       duration  seconds, or 90m, 8h (default 1h)
#       mode      fast    allot's default paths, with UBSan (default)
#                 asan    ASan + UBSan: allot in its checked mode (ASan
#                         makes it poison slack and freed blocks), and the
#                         harness itself checked for memory errors
#                 debug   like fast with ALLOT_DEBUG=1 (fills, canaries,
#                         quarantine, leak walk)
#                 secure  like fast with ALLOT_SECURE=1
#       jobs      parallel fuzzing processes (default: number of CPUs)
#
# Builds with clang into build-fuzz/ (FUZZ_BUILD overrides), fuzzes from the
# committed seeds (test/fuzz/corpus/, never written to) into
# build-fuzz/corpus-<mode>/, and keeps any crashing input as
# build-fuzz/crash-<mode>-*. Replay one with:
#   build-fuzz/fuzz_ops-<mode> build-fuzz/crash-<mode>-<hash>
# To grow the committed corpus, merge the useful new inputs into it:
#   build-fuzz/fuzz_ops-fast -merge=1 test/fuzz/corpus build-fuzz/corpus-fast
# (or regenerate the seeds with test/fuzz/gen_corpus.py).
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-1h}
mode=${2:-fast}
jobs=${3:-$(nproc)}
case $dur in
*h) secs=$((${dur%h} * 3600)) ;;
*m) secs=$((${dur%m} * 60)) ;;
*s) secs=${dur%s} ;;
*) secs=$dur ;;
esac
CC=${CC:-clang}
out=${FUZZ_BUILD:-build-fuzz}
mkdir -p "$out/corpus-$mode"
san=fuzzer,undefined
envs=()
case $mode in
fast) ;;
asan) san=fuzzer,address,undefined ;;
debug) envs=(ALLOT_DEBUG=1) ;;
secure) envs=(ALLOT_SECURE=1) ;;
*)
  echo "fuzz: unknown mode $mode (fast, asan, debug, secure)" >&2
  exit 2
  ;;
esac
bin=$out/fuzz_ops-$mode
srcs=()
for f in src/*.c; do srcs+=("$f"); done
echo "fuzz: building $bin"
"$CC" -O1 -g -fsanitize=$san -fno-sanitize-recover=all -DALLOT_OVERRIDE=0 \
  -D_GNU_SOURCE -ftls-model=initial-exec -Iinclude -Isrc "${srcs[@]}" \
  test/fuzz/fuzz_ops.c -o "$bin" -lpthread
echo "fuzz: $mode for $secs s with $jobs jobs"
seeds=$PWD/test/fuzz/corpus
rc=0
# from inside the build directory: libFuzzer writes its job logs there
(cd "$out" && env ${envs[@]+"${envs[@]}"} ASAN_OPTIONS=detect_leaks=0 \
  "./fuzz_ops-$mode" -max_total_time="$secs" -timeout=120 -rss_limit_mb=4096 \
  -jobs="$jobs" -workers="$jobs" -print_final_stats=1 \
  -artifact_prefix="crash-$mode-" "corpus-$mode" "$seeds") || rc=$?
if ls "$out"/crash-"$mode"-* >/dev/null 2>&1; then
  echo "fuzz: FAILED: crashing inputs:"
  ls "$out"/crash-"$mode"-*
  exit 1
fi
[ $rc -eq 0 ] || {
  echo "fuzz: FAILED (exit $rc; logs: $out/fuzz-*.log)"
  exit 1
}
echo "fuzz: passed ($(find "$out/corpus-$mode" -type f | wc -l) inputs in $out/corpus-$mode)"
