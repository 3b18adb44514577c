#!/usr/bin/env bash
# Exact peak RSS of a program under several allocators: medians of ROUNDS
# interleaved runs of build/bench/peakrss (bench/peakrss.c: /proc/PID/smaps
# read while the program runs and at its exit), with ASLR off so that every
# run maps the libraries at the same addresses (where libc lands moves a
# small program's file-backed RSS by ~100 kB, docs/memory.md).
#   scripts/peakrss.sh ROUNDS "name=LIB,name=LIB,glibc=" PROG [ARGS...]
# An empty LIB is glibc's malloc. Prints, per allocator, the median peak
# and its anonymous and file-backed parts, the median RSS at exit, and the
# range of the peaks. For memory only: the reader takes a CPU of its own.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
rounds=$1 libs=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
tool=${PEAKRSS:-$here/build/bench/peakrss}
[ -x "$tool" ] || { echo "peakrss.sh: build $tool first (cmake --build build)" >&2; exit 2; }
IFS=, read -r -a pairs <<<"$libs"
declare -A out
for ((r = 0; r < rounds; r++)); do
  for pair in $(printf '%s\n' "${pairs[@]}" | shuf); do
    name=${pair%%=*} lib=${pair#*=}
    # a run that fails (mimalloc fails `aligned`) leaves no row
    if [ -n "$lib" ]; then
      line=$(LD_PRELOAD=$lib setarch -R "$tool" "$@" 2>&1 >/dev/null |
        grep '^peak ') || line=
    else
      line=$(setarch -R "$tool" "$@" 2>&1 >/dev/null | grep '^peak ') || line=
    fi
    out[$name]+="$line"$'\n'
  done
done
for pair in "${pairs[@]}"; do
  name=${pair%%=*}
  printf '%s' "${out[$name]}" | python3 -c '
import re, statistics as st, sys
rows = [list(map(int, re.findall(r"-?\d+", l)))[:6] for l in sys.stdin if l.strip()]
if not rows:
    print("%-10s failed in every run" % sys.argv[1])
    sys.exit(0)
peak = [r[0] for r in rows]
m = sorted(rows, key=lambda r: r[0])[len(rows) // 2]
print("%-10s peak %7d kB (anon %d, file %d)  exit %7d kB  peaks %d-%d (%d runs)" % (
    sys.argv[1], m[0], m[1], m[2], st.median(r[3] for r in rows),
    min(peak), max(peak), len(rows)))' "$name"
done
