#!/usr/bin/env bash
# Exact peak RSS of the suite's own workloads at their full sizes, under
# allot and each peer installed, with each allocator's ratio to the
# leanest peer on each workload and the geometric means: `allot bench
# --reps 1 --only own --exact-rss ROUNDS` (one timed round, then ROUNDS
# rounds under bench/peakrss, ASLR off; the files in OUT), then that table
# from its exact.csv.
#   scripts/exact-rss.sh [ROUNDS [OUT]]     (default 3, /tmp/allot-exact-rss)
# Why: the suite's RSS table reads ru_maxrss, which the kernel computes
# from RSS counters it folds per CPU in batches, so a program of 1-4 MB
# reads up to ~170 kB off (docs/memory.md, "What the benchmark's peak RSS
# shows"). About 20 minutes with 3 rounds and four peers.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
out=${2:-/tmp/allot-exact-rss}
[ -x "$here/build/allot" ] ||
  { echo "exact-rss.sh: build first (cmake --build build)" >&2; exit 2; }
"$here/build/allot" bench --reps 1 --only own --exact-rss "$rounds" \
  --out "$out" >/dev/null
python3 - "$out/exact.csv" <<'EOF'
import csv, math, sys
table, order = {}, []
for row in csv.DictReader(open(sys.argv[1])):
    if row["workload"] == "geomean":
        continue
    if row["allocator"] not in order:
        order.append(row["allocator"])
    if row["peak_median_kib"]:
        table.setdefault(row["workload"], {})[row["allocator"]] = \
            int(row["peak_median_kib"])
subject = order[0]
peers = order[1:]
print("Exact peak RSS, kB (median); ratio to the workload's leanest peer")
print("%-15s" % "workload" + "".join("%14s" % a for a in order) +
      "  leanest peer   %s/leanest" % subject)
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
    ratio = row[subject] / row[lean] if subject in row else float("nan")
    print("%-15s%s  %-12s %6.3f" % (w, cells, lean, ratio))
print("%-15s" % "geomean" + "".join(
    "%14s" % ("%.3f" % math.exp(sum(logs[a]) / len(logs[a]))
              if logs[a] else "-") for a in order) +
    "  (an allocator that fails a workload has no term for it)")
EOF
