#!/usr/bin/env bash
# soak.sh: hours of allocation under allot, outside CI, logging resident
# memory, allot's statistics and allot_check() results as it goes.
#
#   scripts/soak.sh [duration] [threads] [max_live_MiB] [interval_s]
#       duration: seconds, or with a unit: 90m, 4h (default 1h)
#
# Builds allot (Release) in build-soak/, runs test/hostile/soak.c's workload
# (test/hostile/soak.c says what it does and what each log column is) and
# writes build-soak/logs/soak-<date>.log: one line per interval, then a
# verdict.
# The run fails (exit 1) on a corrupted block, an allot_check() failure, or
# resident memory that keeps growing. SOAK_PRELOAD=1 also runs the core real
# programs (test/real_more.sh) under allot once an hour as a side load.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-1h}
threads=${2:-4}
live=${3:-256}
interval=${4:-60}
case $dur in
*h) secs=$((${dur%h} * 3600)) ;;
*m) secs=$((${dur%m} * 60)) ;;
*s) secs=${dur%s} ;;
*) secs=$dur ;;
esac
build=${SOAK_BUILD:-build-soak}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DALLOT_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target hostile_soak allot >/dev/null
mkdir -p "$build/logs"
log=$build/logs/soak-$(date +%Y%m%d-%H%M%S).log
echo "soak: $secs s, $threads threads, live set up to $live MiB; log: $log"
side=""
if [ -n "${SOAK_PRELOAD:-}" ]; then
  (
    end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
      for w in python redis; do
        bash test/real_more.sh "$build/liballot.so" $w >>"$log.side" 2>&1 ||
          echo "side load $w: FAILED (see $log.side)" >>"$log"
      done
      sleep 3600
    done
  ) &
  side=$!
fi
rc=0
"$build/test/hostile_soak" "$secs" "$interval" "$threads" "$live" 2>&1 | tee "$log" || rc=$?
[ -n "$side" ] && kill "$side" 2>/dev/null || true
if [ $rc -ne 0 ] || grep -q FAILED "$log"; then
  echo "soak: FAILED (see $log)"
  exit 1
fi
echo "soak: passed (log: $log)"
