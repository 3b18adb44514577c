#!/usr/bin/env bash
# The README's test command, under ten minutes on two cores: installs what it
# needs, builds (warnings are errors), runs every CTest test, then the
# sanitizer builds (UBSan over all but the long tests, ASan, TSan).
# scripts/test-long.sh, which CI runs next, has the rest: UBSan over the long
# tests and the aarch64 build with its tests under qemu (docs/testing.md,
# "Running").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600
echo "== test.sh: deps, build and tests in $SECONDS s"
# The sanitizer builds (clang): UBSan over the suite but its long tests
# (real programs, memory, kernel-call failures: test-long.sh), ASan and TSan
# over the prefixed-API stress and the fuzz corpus (docs/testing.md).
bash scripts/sanitize.sh --part quick undefined address thread
echo "== test.sh: passed in $SECONDS s"
