#!/usr/bin/env bash
# The testbed demo (README's main command): build keyfed, then for each DNS
# mode (embedded: every node's libunbound loads the signed zones; knot: one
# Knot DNS server on loopback signs and serves them) bring up a federation of
# three domains plus the DNS special cases, run every scenario, print the
# summary table, show the sessions, and stop it. Exit status 0 only when
# every scenario passed in both modes. docs/TESTBED.md.
#
#   tools/demo.sh [--domains N] [embedded|knot ...]
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
domains=3
modes=()
while [ $# -gt 0 ]; do
  case $1 in
    --domains) domains=$2; shift 2 ;;
    embedded|knot) modes+=("$1"); shift ;;
    *) echo "usage: $0 [--domains N] [embedded|knot ...]" >&2; exit 2 ;;
  esac
done
[ ${#modes[@]} -gt 0 ] || modes=(embedded knot)

"$src/tools/build.sh" "$src/build"
keyfed="$src/build/keyfed"
failed=0
base=25500
for mode in "${modes[@]}"; do
  dir="$src/build/demo-$mode"
  "$keyfed" testbed down --dir "$dir" --remove >/dev/null 2>&1 || true
  printf '\n==== testbed with %s DNS: %s domains in %s\n\n' "$mode" "$domains" "$dir"
  "$keyfed" testbed up --dir "$dir" --domains "$domains" --special --dns "$mode" --base-port "$base"
  trap '"$keyfed" testbed down --dir "$dir" >/dev/null 2>&1 || true' EXIT
  set +e
  "$keyfed" testbed run --dir "$dir"
  status=$?
  set -e
  [ "$status" -eq 0 ] || failed=1
  printf '\n---- sessions after the scenarios (keyfed testbed status)\n\n'
  "$keyfed" testbed status --dir "$dir"
  "$keyfed" testbed status --dir "$dir" --dot > "$dir/testbed.dot"
  if command -v dot >/dev/null; then
    "$keyfed" testbed status --dir "$dir" --svg "$dir/testbed.svg" >/dev/null && echo "graph: $dir/testbed.svg"
  fi
  "$keyfed" testbed down --dir "$dir"
  trap - EXIT
  base=$((base + 100))
done
if [ "$failed" -ne 0 ]; then
  echo "demo: some scenarios FAILED (see above; node logs in build/demo-*/nodes/*/node.log)" >&2
  exit 1
fi
echo
echo "demo done: every scenario passed in ${modes[*]} mode(s)"
