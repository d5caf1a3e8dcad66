#!/usr/bin/env bash
# The testbed demo: build keyfed, sign the testbed, then
#   1. look up every testbed domain's keys through the validating resolver;
#   2. run an alpha.test node and send it a message as beta.test (authenticated);
#   3. try the same as an impostor holding a key beta.test does not publish (refused).
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
"$src/tools/build.sh" "$src/build"
tb="$src/build/testbed"
keyfed="$src/build/keyfed"
work="$src/build/demo"
rm -rf "$work" && mkdir -p "$work"

step() { printf '\n== %s\n\n' "$*"; }

step "1. keyfed lookup --config build/testbed/keyfed.toml <every testbed domain>"
set +e
"$keyfed" lookup --config "$tb/keyfed.toml" $(cat "$tb/domains.txt")
status=$?
set -e
if [ "$status" -ne 6 ]; then
  echo "unexpected exit status $status (expected 6: the testbed has bogus zones on purpose)" >&2
  exit 1
fi
echo
echo "exit status 6: some domains are bogus, as the testbed intends (docs/TESTBED.md)"

step "2. alpha.test node on 127.0.0.1:25301; beta.test sends it a message"
"$keyfed" run --config "$tb/node-alpha.toml" 2> "$work/alpha.log" &
alpha=$!
trap 'kill $alpha 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" "$work/alpha.log" && break; sleep 0.1; done
printf 'From: Bob <im:bob@beta.test>\r\nTo: Alice <im:alice@alpha.test>\r\nDateTime: 2026-11-23T09:00:00Z\r\n\r\nContent-Type: text/plain\r\n\r\nHello from beta.test\r\n' > "$work/hello.cpim"
"$keyfed" send --direct --config "$tb/node-beta.toml" "$work/hello.cpim"

step "3. an impostor claims beta.test with a key beta.test does not publish"
umask 077
openssl genpkey -algorithm ed25519 -out "$work/impostor.pem" 2>/dev/null
# Same configuration as beta.test's node (next to it, so its relative paths
# hold), but with the impostor's key.
sed "s|fedkeys/beta-new.pem|$work/impostor.pem|" "$tb/node-beta.toml" > "$tb/demo-impostor.toml"
set +e
"$keyfed" send --direct --config "$tb/demo-impostor.toml" "$work/hello.cpim"
status=$?
set -e
echo "exit status $status (8: no session)"

kill -TERM "$alpha"
wait "$alpha" || true
trap - EXIT
step "alpha.test's log (audit lines are one JSON object each, docs/POLICY.md §5)"
cat "$work/alpha.log"
grep -q '"decision":"authenticated"' "$work/alpha.log"
grep -q '"decision":"refuse"' "$work/alpha.log"
[ "$status" -eq 8 ]
echo
echo "demo done: authenticated delivery, impostor refused"
