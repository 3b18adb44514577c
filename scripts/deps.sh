#!/usr/bin/env bash
# Installs the Debian packages that building, testing and benchmarking allot
# need, when they are missing. Safe to run again; does nothing when all is there.
#   scripts/deps.sh [PACKAGE...]   those packages instead of the default list
set -euo pipefail
pkgs=(build-essential cmake python3 git sqlite3 gcc g++ clang libclang-rt-14-dev time
      pkg-config valgrind redis-server redis-tools
      libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4
      libpython3.11-testsuite bc binutils librsvg2-bin)
[ $# -eq 0 ] || pkgs=("$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
