#!/usr/bin/env bash
# Exact peak RSS of the suite's own workloads at their full sizes (those of
# `allot bench`), under allot and each peer installed: scripts/peakrss.sh
# per workload (medians of ROUNDS interleaved runs of bench/peakrss, ASLR
# off), then a table of the medians, each allocator's ratio to the leanest
# peer's, and the geometric means.
#   scripts/exact-rss.sh [ROUNDS [WORKLOAD...]]     (default 3, all 16)
# Why: `allot bench` reports ru_maxrss, which the kernel computes from RSS
# counters it folds per CPU in batches, so a program of 1-4 MB reads up to
# ~170 kB off (docs/memory.md, "What the benchmark's peak RSS shows"); this
# walks the page tables instead. The real programs (python, sqlite, redis,
# gcc) are left out: several processes each. For memory only: the reader
# takes a CPU of its own, so the times of these runs mean nothing. Takes
# about 15 minutes with 3 rounds and four peers.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
shift || true
lib=$here/build/liballot.so
bin=$here/build/bench
if [ ! -x "$bin/peakrss" ] || [ ! -e "$lib" ]; then
  echo "exact-rss.sh: build first (cmake --build build)" >&2
  exit 2
fi
libs="allot=$lib,glibc="
for peer in jemalloc=libjemalloc.so.2 mimalloc=libmimalloc.so.2 \
  tcmalloc=libtcmalloc_minimal.so.4; do
  path=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/${peer#*=}
  [ -e "$path" ] && libs+=",${peer%%=*}=$path"
done
# name and command line, at `allot bench`'s full sizes (tools/allot, WORKLOADS)
all=(
  "micro-pair micro pair 120000000"
  "micro-batch micro batch 3"
  "micro-prodcons micro prodcons 10000000"
  "bignum bignum 80000"
  "logicmin logicmin 800"
  "larson larson 400"
  "prodcons prodcons 800000"
  "cache-scratch cache-scratch 100000"
  "cache-thrash cache-thrash 100000"
  "pareto pareto 20000000"
  "gens gens 400"
  "large large 1000"
  "realloc realloc 2500"
  "aligned aligned 2000000"
  "threadchurn threadchurn 1000"
  "frag frag 32"
)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for w in "${all[@]}"; do
  read -r name prog args <<<"$w"
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then continue; fi
  echo "== $name" | tee -a "$out" >&2
  # shellcheck disable=SC2086
  bash "$here/scripts/peakrss.sh" "$rounds" "$libs" "$bin/$prog" $args |
    tee -a "$out" >&2
done
python3 - "$out" <<'EOF'
import math, re, sys
table, order, name = {}, [], None
for line in open(sys.argv[1]):
    if line.startswith("== "):
        name = line[3:].strip()
        table[name] = {}
        continue
    m = re.match(r"(\S+)\s+peak\s+(\d+) kB", line)
    if m and name:
        table[name][m.group(1)] = int(m.group(2))
        if m.group(1) not in order:
            order.append(m.group(1))
peers = [a for a in order if a != "allot"]
print("\nExact peak RSS, kB (median); ratio to the leanest peer")
print("%-15s" % "workload" + "".join("%14s" % a for a in order) +
      "  leanest peer   allot/leanest")
logs = {a: [] for a in order}
for w, row in table.items():
    have = [a for a in peers if a in row]
    if not have:
        continue
    lean = min(have, key=lambda a: row[a])
    cells = ""
    for a in order:
        if a in row:
            r = row[a] / row[lean]
            logs[a].append(math.log(r))
            cells += "%8d %5.2f" % (row[a], r)
        else:
            cells += "%14s" % "fails"
    ratio = row["allot"] / row[lean] if "allot" in row else float("nan")
    print("%-15s%s  %-12s %6.3f" % (w, cells, lean, ratio))
print("%-15s" % "geomean" + "".join(
    "%14s" % ("%.3f" % math.exp(sum(logs[a]) / len(logs[a]))
              if logs[a] else "-") for a in order) +
    "  (ratios to each workload's leanest peer; an allocator that fails a"
    " workload has no term for it)")
EOF
