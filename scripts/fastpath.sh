#!/usr/bin/env bash
# Prints the instruction listing of allot's malloc and free fast paths and
# the instructions per malloc+free pair that callgrind counts on the micro
# benchmark (`micro pair`), for allot and every peer installed.
# Usage: scripts/fastpath.sh [BUILD_DIR]   (default: build)
set -euo pipefail
build=${1:-build}
lib=$build/liballot.so
micro=$build/bench/micro
n=1000000
listing() { # symbol: disassemble from the symbol up to its first ret
  local addr
  addr=$(nm -D "$lib" | awk -v s="$1" '$3 == s { print $1 }')
  objdump -d --no-show-raw-insn --start-address=0x"$addr" \
    --stop-address=$(printf '0x%x' $((0x$addr + 0x200))) "$lib" |
    awk 'NR > 7 && /^ / { print } /\tret/ { exit }'
}
echo "== malloc fast path (up to the first ret)"
listing malloc
echo "== free fast path (up to the first ret)"
listing free
echo "== instructions per malloc+free pair (callgrind, micro pair $n, loop included)"
libdir=/usr/lib/$(gcc -print-multiarch)
for a in allot:"$lib" glibc: mimalloc:"$libdir/libmimalloc.so.2" \
  jemalloc:"$libdir/libjemalloc.so.2" tcmalloc:"$libdir/libtcmalloc_minimal.so.4"; do
  name=${a%%:*}
  path=${a#*:}
  [ -z "$path" ] || [ -e "$path" ] || continue
  out=$(mktemp)
  LD_PRELOAD=$path valgrind --tool=callgrind --toggle-collect=run_pair \
    --callgrind-out-file="$out" "$micro" pair $n >/dev/null 2>&1
  total=$(callgrind_annotate "$out" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  loop=$(callgrind_annotate "$out" | awk '/run_pair/ { gsub(",", "", $1); print $1; exit }')
  printf '%-9s %6.1f per pair (%5.1f in the allocator)\n' "$name" \
    "$(echo "$total / $n" | bc -l)" "$(echo "($total - $loop) / $n" | bc -l)"
  rm -f "$out"
done
