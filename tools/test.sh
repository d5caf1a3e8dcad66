#!/usr/bin/env bash
# Runs every test: the normal build and the ASan+UBSan build, each with the
# whole suite (unit, testbed, federation and CLI tests); the libFuzzer targets
# for a bounded number of inputs; then a quick pass of the benchmarks so they
# cannot rot. Exit status is non-zero if anything failed.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"
passed=0

# Runs one build's suite; a failure stops the script (set -e, pipefail).
run_ctest() {
  local log
  log=$(mktemp)
  ctest --test-dir "$1" -j "$jobs" --output-on-failure 2>&1 | tee "$log"
  passed=$((passed + $(sed -n 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$log")))
  rm -f "$log"
}

echo "== build: RelWithDebInfo, warnings as errors"
"$src/tools/build.sh" "$src/build"
echo "== tests: normal build"
run_ctest "$src/build"

echo "== build: ASan + UBSan"
"$src/tools/build.sh" "$src/build-asan" -DKEYFED_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
echo "== tests: sanitizer build"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_ctest "$src/build-asan"
unset ASAN_OPTIONS UBSAN_OPTIONS

echo "== fuzz: each parser for a bounded number of inputs (clang, libFuzzer, ASan+UBSan)"
CXX=clang++ "$src/tools/build.sh" "$src/build-fuzz" -DKEYFED_FUZZ=ON -DKEYFED_BUILD_TESTS=OFF -DKEYFED_BUILD_BENCH=OFF
for target in frames:fuzz/corpus/frames cpim:tests/testdata/cpim key_record:fuzz/corpus/key_record \
              config:fuzz/corpus/config session:fuzz/corpus/session; do
  name=${target%%:*}; corpus=$src/${target#*:}
  scratch=$(mktemp -d)  # new inputs go here, not into the committed corpus
  if ! "$src/build-fuzz/fuzz/fuzz_$name" -runs=300000 -max_len=4096 -timeout=30 "$scratch" "$corpus" > "$scratch.log" 2>&1; then
    tail -40 "$scratch.log"
    echo "fuzz_$name: FAILED (the crashing input is in the log above)" >&2
    exit 1
  fi
  echo "fuzz_$name: $(grep -E '^Done' "$scratch.log")"
  rm -rf "$scratch" "$scratch.log"
done

echo "== bench smoke run (figures are not checked)"
"$src/build/bench/bench_key_lookup" "$src/build/testbed" --quick
"$src/build/bench/bench_federation" "$src/build/testbed" --quick
"$src/build/bench/bench_store" "$src/build/testbed" --quick
"$src/build/bench/bench_testbed" "$src/build/testbed" --quick
"$src/bench/load.sh" "$src/build/testbed" --quick

echo
echo "tools/test.sh: $passed passed, 0 failed"
