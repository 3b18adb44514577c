#!/usr/bin/env bash
# test-long.sh: the part of CI that does not fit in scripts/test.sh's ten
# minutes (CI runs it right after, in the same clone, whose build directories
# it reuses): UBSan over the long tests test.sh leaves out there (the real
# programs, the memory tests, the kernel-call failure sweeps: the default
# build's suite runs them all), then the aarch64 build and its tests under
# qemu. About five minutes on two cores (docs/testing.md, "Running").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/sanitize.sh --part long undefined
echo "== test-long.sh: UBSan in $SECONDS s"
bash scripts/cross-aarch64.sh
echo "== test-long.sh: passed in $SECONDS s"
