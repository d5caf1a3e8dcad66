#!/usr/bin/env bash
# Long fuzzing runs, for the figures in docs/BENCH.md ("Fuzzing").
#   tools/fuzz.sh [RUNS] [NAME...]     (default: 10000000 runs of every fuzzer)
# Builds build-fuzz/ (clang, libFuzzer, ASan+UBSan) if needed, then runs each
# fuzzer one after the other from its seed corpus, new inputs kept in a
# scratch directory (never in the committed corpus). Prints one line per
# fuzzer: runs, seconds, exec/s, coverage, and whether it found anything.
# A crashing input is left in build-fuzz/crashes/NAME/.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-10000000}"
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(frames cpim key_record config session)
declare -A corpus=([frames]=fuzz/corpus/frames [cpim]=tests/testdata/cpim [key_record]=fuzz/corpus/key_record
                   [config]=fuzz/corpus/config [session]=fuzz/corpus/session)
[ -x "$src/build-fuzz/fuzz/fuzz_frames" ] ||
  CXX=clang++ "$src/tools/build.sh" "$src/build-fuzz" -DKEYFED_FUZZ=ON -DKEYFED_BUILD_TESTS=OFF -DKEYFED_BUILD_BENCH=OFF
status=0
for name in "${names[@]}"; do
  [ -n "${corpus[$name]:-}" ] || { echo "fuzz.sh: no fuzzer '$name'" >&2; exit 2; }
  scratch=$(mktemp -d)
  crashes="$src/build-fuzz/crashes/$name"
  mkdir -p "$crashes"
  start=$(date +%s)
  if "$src/build-fuzz/fuzz/fuzz_$name" -runs="$runs" -max_len=4096 -timeout=30 -print_final_stats=1 \
       -artifact_prefix="$crashes/" "$scratch" "$src/${corpus[$name]}" > "$scratch.log" 2>&1; then
    result="clean"
  else
    result="FOUND SOMETHING (see $crashes and $scratch.log)"
    status=1
  fi
  seconds=$(( $(date +%s) - start ))
  done_line=$(grep -E '^Done' "$scratch.log" || true)
  cov=$(grep -oE 'cov: [0-9]+' "$scratch.log" | tail -1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$scratch.log" | grep -oE '[0-9]+$' || echo "?")
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$scratch.log" | grep -oE '[0-9]+$' || echo "?")
  echo "fuzz_$name: $execs runs in $seconds s ($rate exec/s), $cov, $result"
  [ "$result" = clean ] && rm -rf "$scratch" "$scratch.log"
done
exit $status
