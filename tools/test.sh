#!/usr/bin/env bash
# Runs every test: the normal build and the ASan+UBSan build, each with the
# whole suite (unit, testbed and CLI tests), then a quick pass of the
# benchmark so it cannot rot. Exit status is non-zero if anything failed.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"

echo "== build: RelWithDebInfo, warnings as errors"
"$src/tools/build.sh" "$src/build"
echo "== tests: normal build"
ctest --test-dir "$src/build" -j "$jobs" --output-on-failure

echo "== build: ASan + UBSan"
"$src/tools/build.sh" "$src/build-asan" -DKEYFED_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
echo "== tests: sanitizer build"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$src/build-asan" -j "$jobs" --output-on-failure

echo "== bench smoke run (figures are not checked)"
"$src/build/bench/bench_key_lookup" "$src/build/testbed" --quick
"$src/build/bench/bench_federation" "$src/build/testbed" --quick
