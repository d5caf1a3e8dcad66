#!/usr/bin/env bash
# A keyfed node under attack by hostile peers, measured by a legitimate one
# (docs/BENCH.md, "Load").
#
#   bench/load.sh TESTBED_DIR [--quick] [--json] [--suffix SUFFIX] [--seconds N] [--rate R]
#
# Two phases, each with a fresh `keyfed run` for alpha.test (port 0, config
# derived from TESTBED_DIR/keyfed.toml, default limits):
#
#   baseline   legit peer only
#   attack     legit peer, plus at the same time, each its own process:
#
#     127.0.0.2  claims  R TLS handshakes/s, each claiming <random>.SUFFIX
#     127.0.0.3  silent  500 TCP connections that never send a byte   ──►  node (127.0.0.1:PORT)
#     127.0.0.4  noread  a real gamma.test peer flooding, never reading
#     127.0.0.1  legit   beta.test: connect, TLS, CLAIM, MESSAGE, ACK; latency of each
#
# Reports, per phase, the legit peer's median/p99 latency and failures, the
# node's peak RSS (VmHWM) and CPU time, whether it survived, and the
# attackers' counters; then attack/baseline ratios, "p99 under 100 ms" and
# "RSS under budget" (KEYFED_RSS_BUDGET_MIB, default 128) for the attack phase.
#
# --quick: 4 s per phase (CI smoke run); otherwise 20 s. --suffix defaults to
# wild.test (names under a zone the testbed does not serve yet still cost the
# node a lookup each). Binaries: KEYFED_BUILD_DIR, default the parent of
# TESTBED_DIR if it holds `keyfed`, else build/. KEYFED_LOAD_KEEP=1 keeps the
# scratch directory (node logs, attacker outputs).
#
# Exit status: 0 when the run completed, whatever the figures; 1 on a harness
# failure (a binary missing, the node did not start, the legit peer never
# succeeded in the baseline); 2 on a usage error.
set -euo pipefail

usage() {
  echo "usage: $0 TESTBED_DIR [--quick] [--json] [--suffix SUFFIX] [--seconds N] [--rate R]" >&2
  exit 2
}
die() {
  echo "load.sh: $*" >&2
  exit 1
}

[ $# -ge 1 ] || usage
testbed=$(cd "$1" 2>/dev/null && pwd) || die "no testbed directory '$1'"
shift
quick=0 json=0 suffix=wild.test seconds="" rate=1000
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --json) json=1 ;;
    --suffix) [ $# -ge 2 ] || usage; suffix=$2; shift ;;
    --seconds) [ $# -ge 2 ] || usage; seconds=$2; shift ;;
    --rate) [ $# -ge 2 ] || usage; rate=$2; shift ;;
    *) usage ;;
  esac
  shift
done
[ -n "$seconds" ] || seconds=$([ $quick = 1 ] && echo 4 || echo 20)
budget_mib=${KEYFED_RSS_BUDGET_MIB:-128}

src=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${KEYFED_BUILD_DIR:-}" ]; then
  build=$KEYFED_BUILD_DIR
elif [ -x "$testbed/../keyfed" ]; then
  build=$(cd "$testbed/.." && pwd)
else
  build=$src/build
fi
keyfed=$build/keyfed
load=$build/bench/keyfed_load
[ -x "$keyfed" ] || die "no $keyfed (build first: tools/build.sh)"
[ -x "$load" ] || die "no $load (build first: tools/build.sh)"
[ -f "$testbed/keyfed.toml" ] || die "$testbed/keyfed.toml missing (not a testbed?)"
keys=$testbed/fedkeys

scratch=$(mktemp -d "${TMPDIR:-/tmp}/keyfed-load.XXXXXX")
pids=()  # everything started here, killed on exit
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEYFED_LOAD_KEEP:-0}" = 1 ]; then echo "load.sh: scratch kept in $scratch" >&2; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

# The node's configuration: the testbed's resolver (paths made absolute, as
# tests/test_run.cpp's write_node_config does), alpha.test on a free port.
config=$scratch/node-alpha.toml
{
  sed -n '/^\[resolver\]/,$p' "$testbed/keyfed.toml" |
    sed -E "s#\"([a-z0-9][a-z0-9.-]*\.(ds|signed|zone))\"#\"$testbed/\1\"#"
  printf '\n[node]\nlisten = "127.0.0.1"\nport = 0\n\n[[domains]]\nname = "alpha.test"\nkeys = ["%s"]\n' \
    "$keys/alpha-1.pem"
} > "$config"

# ---- helpers ----------------------------------------------------------------

# kv_get LINE KEY: the value of KEY in a "name: k=v k=v" line.
kv_get() {
  local kv
  for kv in $1; do
    if [ "${kv%%=*}" = "$2" ]; then
      echo "${kv#*=}"
      return
    fi
  done
  echo 0
}

# kv_json LINE: the line's key=value pairs as a JSON object (values are numbers).
kv_json() {
  local kv out="" sep=""
  for kv in ${1#*:}; do
    out+="$sep\"${kv%%=*}\":${kv#*=}"
    sep=","
  done
  echo "{$out}"
}

calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
holds() { awk "BEGIN { exit !($1) }"; }  # holds "1.5 < 2"
is_number() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

node_pid="" node_port=""
start_node() { # phase
  local log=$scratch/node-$1.log i
  "$keyfed" run --config "$config" 2> "$log" &
  node_pid=$!
  pids+=("$node_pid")
  for i in $(seq 1 200); do
    node_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$node_port" ] && return 0
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.05
  done
  tail -5 "$log" >&2
  die "phase $1: the node did not start (log above)"
}

# node_figures: peak RSS in MiB and CPU seconds of the running node, or "n/a n/a".
node_figures() {
  local hwm ticks
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$node_pid/status" 2>/dev/null || true)
  ticks=$(awk '{ print $14 + $15 }' "/proc/$node_pid/stat" 2>/dev/null || true)
  if [ -z "$hwm" ]; then
    echo "n/a n/a"
  else
    echo "$(calc "$hwm / 1024") $(calc "$ticks / $(getconf CLK_TCK)")"
  fi
}

# stop_node: SIGTERM, then SIGKILL after 10 s; echoes "clean" or "killed".
stop_node() {
  local i
  kill -TERM "$node_pid" 2>/dev/null || { echo dead; return; }
  for i in $(seq 1 100); do
    kill -0 "$node_pid" 2>/dev/null || { wait "$node_pid" 2>/dev/null || true; echo clean; return; }
    sleep 0.1
  done
  kill -KILL "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
  echo killed
}

legit() { # output-file [options...]
  local out=$1
  shift
  "$load" legit --port "$node_port" --key "$keys/beta-new.pem" --domain beta.test --to alice@alpha.test \
    --interval-ms 20 "$@" > "$out" 2> "$out.err"
}

declare -A result  # PHASE.FIELD -> value

run_phase() { # baseline|attack
  local phase=$1 attackers=() cap figures
  start_node "$phase"
  # One unmeasured exchange first, before any attack: the node caches
  # beta.test's keys, so both phases measure the same warm path.
  legit "$scratch/warmup-$phase.out" --count 1 || die "phase $phase: the legit peer could not run: $(cat "$scratch/warmup-$phase.out.err")"
  if [ "$phase" = attack ]; then
    # Attackers run until told to stop (SIGTERM: each prints its summary);
    # --seconds is only a cap.
    cap=$((seconds + 120))
    "$load" claims --port "$node_port" --from 127.0.0.2 --rate "$rate" --seconds "$cap" --suffix "$suffix" \
      --key "$keys/gamma-1.pem" > "$scratch/claims.out" 2> "$scratch/claims.err" &
    attackers+=($!)
    "$load" silent --port "$node_port" --from 127.0.0.3 --count 500 --seconds "$cap" \
      > "$scratch/silent.out" 2> "$scratch/silent.err" &
    attackers+=($!)
    "$load" noread --port "$node_port" --from 127.0.0.4 --key "$keys/gamma-1.pem" --domain gamma.test \
      --seconds "$cap" > "$scratch/noread.out" 2> "$scratch/noread.err" &
    attackers+=($!)
    pids+=("${attackers[@]}")
    sleep 1  # let the attack build up
  fi
  legit "$scratch/legit-$phase.out" --count 100000000 --seconds "$seconds" || die "phase $phase: the legit peer could not run: $(cat "$scratch/legit-$phase.out.err")"
  figures=$(node_figures)
  result[$phase.survived]=no
  kill -0 "$node_pid" 2>/dev/null && result[$phase.survived]=yes
  if [ ${#attackers[@]} -gt 0 ]; then
    kill -TERM "${attackers[@]}" 2>/dev/null || true
    wait "${attackers[@]}" 2>/dev/null || true
  fi
  result[$phase.rss]=${figures% *}
  result[$phase.cpu]=${figures#* }
  result[$phase.stop]=$(stop_node)
  result[$phase.legit]=$(cat "$scratch/legit-$phase.out")
  [ -n "${result[$phase.legit]}" ] || die "phase $phase: the legit peer printed nothing: $(cat "$scratch/legit-$phase.out.err")"
  pids=()  # all stopped and waited for
  if [ "$phase" = attack ]; then
    local a
    for a in claims silent noread; do result[attack.$a]=$(cat "$scratch/$a.out"); done
  fi
}

run_phase baseline
if [ "$(kv_get "${result[baseline.legit]}" ok)" = 0 ]; then
  cat "$scratch/legit-baseline.out.err" >&2
  die "the legit peer never succeeded in the baseline"
fi
run_phase attack

# ---- report ------------------------------------------------------------------

field() { kv_get "${result[$1.legit]}" "$2"; }
ratio() { # a b: a / b, or n/a
  if is_number "$1" && is_number "$2" && holds "$2 > 0"; then calc "$1 / $2"; else echo n/a; fi
}
p99_ratio=n/a
[ "$(field attack ok)" != 0 ] && p99_ratio=$(ratio "$(field attack p99_ms)" "$(field baseline p99_ms)")
rss_ratio=$(ratio "${result[attack.rss]}" "${result[baseline.rss]}")
# Strict: a failed exchange is slower than any threshold.
p99_ok=no p99_why=""
if [ "$(field attack ok)" = 0 ]; then
  p99_why=" (no exchange succeeded)"
elif [ "$(field attack failures)" != 0 ]; then
  p99_why=" ($(field attack failures) of $(field attack iterations) exchanges failed)"
elif holds "$(field attack p99_ms) < 100"; then
  p99_ok=yes
fi
rss_ok=no
is_number "${result[attack.rss]}" && holds "${result[attack.rss]} < $budget_mib" && rss_ok=yes

if [ $json = 1 ]; then
  phase_json() {
    local p=$1 extra=""
    if [ "$p" = attack ]; then
      extra=",\"claims\":$(kv_json "${result[attack.claims]:-claims:}"),\"silent\":$(kv_json "${result[attack.silent]:-silent:}"),\"noread\":$(kv_json "${result[attack.noread]:-noread:}")"
    fi
    local rss=${result[$p.rss]} cpu=${result[$p.cpu]}
    is_number "$rss" || rss=null
    is_number "$cpu" || cpu=null
    printf '{"legit":%s,"node_peak_rss_mib":%s,"node_cpu_s":%s,"survived":%s,"stopped":"%s"%s}' \
      "$(kv_json "${result[$p.legit]}")" "$rss" "$cpu" "$([ "${result[$p.survived]}" = yes ] && echo true || echo false)" \
      "${result[$p.stop]}" "$extra"
  }
  num() { if is_number "$1"; then echo "$1"; else echo null; fi; }
  printf '{"seconds_per_phase":%s,"claim_rate":%s,"suffix":"%s","phases":{"baseline":%s,"attack":%s},' \
    "$seconds" "$rate" "$suffix" "$(phase_json baseline)" "$(phase_json attack)"
  printf '"ratio_attack_baseline":{"p99":%s,"rss":%s},"p99_under_100ms":%s,"rss_budget_mib":%s,"rss_under_budget":%s}\n' \
    "$(num "$p99_ratio")" "$(num "$rss_ratio")" "$([ $p99_ok = yes ] && echo true || echo false)" "$budget_mib" \
    "$([ $rss_ok = yes ] && echo true || echo false)"
  exit 0
fi

echo "keyfed load: alpha.test node, $seconds s per phase; attack = claims of <random>.$suffix at $rate/s," \
  "500 silent connections, 1 peer that never reads"
echo
printf '%-9s %8s %6s %10s %10s %10s %13s %11s %9s %8s\n' phase "legit ok" fail "median ms" "p99 ms" "max ms" \
  "node RSS MiB" "node CPU s" survived stopped
for p in baseline attack; do
  printf '%-9s %8s %6s %10s %10s %10s %13s %11s %9s %8s\n' "$p" "$(field $p ok)" "$(field $p failures)" \
    "$(calc "$(field $p median_ms)")" "$(calc "$(field $p p99_ms)")" "$(calc "$(field $p max_ms)")" \
    "${result[$p.rss]}" "${result[$p.cpu]}" "${result[$p.survived]}" "${result[$p.stop]}"
done
echo
echo "legit failures by step (attack): connect $(field attack failed_connect), handshake $(field attack failed_handshake)," \
  "claim $(field attack failed_claim), message $(field attack failed_message)"
if [ -s "$scratch/legit-attack.out.err" ]; then echo "  $(tail -1 "$scratch/legit-attack.out.err")"; fi
echo "attackers (attack phase):"
for a in claims silent noread; do echo "  ${result[attack.$a]:-$a: (no summary)}"; done
echo
echo "attack/baseline: p99 x$p99_ratio, node peak RSS x$rss_ratio"
echo "p99 under 100 ms: $p99_ok$p99_why"
echo "RSS under budget (KEYFED_RSS_BUDGET_MIB, $budget_mib MiB): $rss_ok"
