#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds (warnings are errors),
# runs every CTest test, then the sanitizer builds, then the aarch64 build
# and its tests under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600
echo "== test.sh: deps, build and tests in $SECONDS s"
# The sanitizer builds (clang): UBSan over the whole suite, ASan and TSan
# over the prefixed-API stress and the fuzz corpus (docs/testing.md).
bash scripts/sanitize.sh undefined address thread
echo "== test.sh: $SECONDS s so far"
# aarch64, cross-built and run under qemu-aarch64: about a minute
# (docs/testing.md, "aarch64").
bash scripts/cross-aarch64.sh
echo "== test.sh: passed in $SECONDS s"
