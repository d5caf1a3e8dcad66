#!/usr/bin/env bash
# Builds the signed testbed from the unsigned templates in zones/.
#
#   tools/make-testbed.sh [ZONES_DIR] OUT_DIR
#
# Generates, in OUT_DIR (never in the source tree):
#   fedkeys/<name>.pem      federation private keys (0600), one per @ED25519:/@P256: placeholder
#   zonekeys/<zone>/        DNSSEC zone keys (ldns-keygen), 0600 private parts
#   <stem>.zone.signed      each zone, signed with ldns-signzone (unsigned zones: <stem>.zone)
#   trust-anchor.ds         DS of the test. zone key: the testbed's only trust anchor
#   keyfed.toml             a node configuration resolving through these zones
#   node-alpha.toml, node-beta.toml   two nodes for the demo (ports 25301, 25302)
#   domains.txt             the testbed domains, for the demo
# Signatures are valid from one day ago for 30 days (except the "expired" zone,
# and the "expiring" zone's, which expire two days after the build),
# so the output must be regenerated, never committed. See docs/TESTBED.md.
set -euo pipefail
umask 077

if [ $# -eq 1 ]; then zones_dir="$(cd "$(dirname "$0")/../zones" && pwd)"; out="$1"
elif [ $# -eq 2 ]; then zones_dir="$(cd "$1" && pwd)"; out="$2"
else echo "usage: $0 [ZONES_DIR] OUT_DIR" >&2; exit 2; fi

for tool in ldns-keygen ldns-signzone ldns-key2ds openssl; do
  command -v "$tool" >/dev/null || { echo "make-testbed: $tool not found (run tools/install-deps.sh)" >&2; exit 2; }
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -rf "$out/zonekeys" "$out/fedkeys" "$out/work"
mkdir -p "$out/zonekeys" "$out/fedkeys" "$out/work"
rm -f "$out"/*.zone "$out"/*.zone.signed

die() { echo "make-testbed: $*" >&2; exit 2; }

# Federation keys: raw public key in base64, in the KEY RDATA format of
# docs/KEYS.md (Ed25519: 32 bytes; P-256: X||Y, 64 bytes).
fed_pubkey() { # kind name
  local kind=$1 name=$2 pem="$out/fedkeys/$2.pem"
  if [ ! -f "$pem" ]; then
    case $kind in
      ED25519) openssl genpkey -algorithm ed25519 -out "$pem" 2>/dev/null ;;
      P256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pem" 2>/dev/null ;;
    esac
  fi
  case $kind in
    ED25519) openssl pkey -in "$pem" -pubout -outform DER | tail -c 32 | base64 -w0 ;;
    P256) openssl pkey -in "$pem" -pubout -outform DER | tail -c 64 | base64 -w0 ;;
  esac
}

# N KEY records at OWNER with random 32-byte keys, base64 by awk (no
# process per record).
random_keys() { # owner count
  head -c $((32 * $2)) /dev/urandom | od -An -v -tx1 | tr -d ' \n' | fold -w 64 | awk -v owner="$1" '
    BEGIN { b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            for (i = 0; i < 16; i++) h[sprintf("%x", i)] = i }
    { s = ""; n = length($0) / 2
      for (i = 0; i < n; i++) byte[i] = h[substr($0, 2 * i + 1, 1)] * 16 + h[substr($0, 2 * i + 2, 1)]
      for (i = 0; i < n; i += 3) {
        v = byte[i] * 65536 + (i + 1 < n ? byte[i + 1] : 0) * 256 + (i + 2 < n ? byte[i + 2] : 0)
        s = s substr(b, int(v / 262144) % 64 + 1, 1) substr(b, int(v / 4096) % 64 + 1, 1)
        s = s (i + 1 < n ? substr(b, int(v / 64) % 64 + 1, 1) : "=") (i + 2 < n ? substr(b, v % 64 + 1, 1) : "=")
      }
      print owner " 300 IN KEY 512 1 15 " s }'
}

# Replaces every @ED25519:name@ and @P256:name@ in a template, and every
# @RANDOMKEYS:owner:N@ line by N KEY records of random 32-byte keys at owner
# (many are not even curve points: they are there to be refused unread).
fill_keys() { # in out
  cp "$1" "$2"
  local line owner count
  while read -r line; do
    owner=${line#@RANDOMKEYS:}; count=${owner##*:}; count=${count%@}; owner=${owner%:*}
    random_keys "$owner" "$count" > "$2.random"
    awk -v ph="$line" -v f="$2.random" '$0 == ph { while ((getline l < f) > 0) print l; next } { print }' "$2" > "$2.tmp"
    mv "$2.tmp" "$2"; rm -f "$2.random"
  done < <(grep -oE '^@RANDOMKEYS:[^@]+@$' "$1" || true)
  # @ADDRESSES:owner:N@: N A records 10.0.x.y at owner.
  while read -r line; do
    owner=${line#@ADDRESSES:}; count=${owner##*:}; count=${count%@}; owner=${owner%:*}
    awk -v owner="$owner" -v n="$count" 'BEGIN { for (i = 1; i <= n; i++) printf "%s 300 IN A 10.0.%d.%d\n", owner, int(i / 250), i % 250 + 1 }' > "$2.addresses"
    awk -v ph="$line" -v f="$2.addresses" '$0 == ph { while ((getline l < f) > 0) print l; next } { print }' "$2" > "$2.tmp"
    mv "$2.tmp" "$2"; rm -f "$2.addresses"
  done < <(grep -oE '^@ADDRESSES:[^@]+@$' "$2" || true)
  local ph kind name b64
  for ph in $(grep -oE '@(ED25519|P256):[A-Za-z0-9_-]+@' "$1" | sort -u); do
    kind=${ph#@}; kind=${kind%%:*}; name=${ph#*:}; name=${name%@}
    b64=$(fed_pubkey "$kind" "$name")
    sed -i "s#$ph#$b64#g" "$2"
  done
}

zone_key() { # origin -> prints key basename (created once per origin)
  local dir="$out/zonekeys/$1"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    (cd "$dir" && ldns-keygen -k -a ED25519 "$1" >/dev/null) || die "ldns-keygen failed for $1"
  fi
  local k; k=$(ls "$dir"/K*.key | head -1); echo "${k%.key}"
}

now=$(date -u +%s)
inception=$(date -u -d "@$((now - 86400))" +%Y%m%d%H%M%S)
expiration=$(date -u -d "@$((now + 30 * 86400))" +%Y%m%d%H%M%S)
soon=$(date -u -d "@$((now + 2 * 86400))" +%Y%m%d%H%M%S)  # the "expiring" mode

declare -A ds_of
zones=()
while read -r stem origin mode; do
  case "$stem" in ''|\#*) continue ;; esac
  tpl="$zones_dir/$stem.zone"
  [ -f "$tpl" ] || die "$zones_dir/testbed.manifest: no template $tpl"
  work="$out/work/$stem.zone"
  variant=$(grep -oE '^@VARIANT:[^:]+:.*@$' "$tpl" || true)
  if [ -n "$variant" ]; then
    # A variant: another template minus one line (e.g. a parent without one child's DS).
    base=${variant#@VARIANT:}; drop=${base#*:}; drop=${drop%@}; base=${base%%:*}
    [ -f "$zones_dir/$base" ] || die "$tpl: no template $base"
    awk -v drop="$drop" '$0 != drop' "$zones_dir/$base" > "$work.variant"
    fill_keys "$work.variant" "$work"
  else
    fill_keys "$tpl" "$work"
  fi
  for child in "${!ds_of[@]}"; do
    ds=${ds_of[$child]}
    awk -v ph="@DS:$child@" -v ds="$ds" '$0 == ph { print ds; next } { print }' "$work" > "$work.tmp" && mv "$work.tmp" "$work"
  done
  if grep -q '^@DS:' "$work"; then die "$tpl: DS placeholder for a zone not signed before it: $(grep -o '^@DS:[^@]*@' "$work" | head -1)"; fi

  if [ "$mode" = unsigned ]; then
    cp "$work" "$out/$stem.zone"; zones+=("$stem.zone")
    continue
  fi
  key=$(zone_key "$origin")
  case $mode in
    signed|tamper|wrong-ds) ldns-signzone -i "$inception" -e "$expiration" -f "$out/$stem.zone.signed" -o "$origin" "$work" "$key" ;;
    expiring) ldns-signzone -i "$inception" -e "$soon" -f "$out/$stem.zone.signed" -o "$origin" "$work" "$key" ;;
    expired) ldns-signzone -i 20200101000000 -e 20200201000000 -f "$out/$stem.zone.signed" -o "$origin" "$work" "$key" ;;
    *) die "$zones_dir/testbed.manifest: unknown mode '$mode' for $stem" ;;
  esac
  zones+=("$stem.zone.signed")
  if [ "$mode" = tamper ]; then
    # Swap the published key for another one after signing: its signature no longer matches.
    old=$(awk '$4 == "KEY" { print $8; exit }' "$out/$stem.zone.signed")
    [ -n "$old" ] || die "$tpl: tamper mode needs a KEY record"
    new=$(fed_pubkey ED25519 "$origin-substitute")
    sed -i "s#$old#$new#" "$out/$stem.zone.signed"
  fi
  if [ "$stem" = "$origin" ]; then
    if [ "$mode" = wrong-ds ]; then
      # A DS of a key that never appears in the zone.
      mkdir -p "$out/work/stray-$origin"
      stray=$(cd "$out/work/stray-$origin" && ldns-keygen -k -a ED25519 "$origin")
      ds_of[$origin]=$(ldns-key2ds -n -2 "$out/work/stray-$origin/$stray.key")
    else
      ds_of[$origin]=$(ldns-key2ds -n -2 "$key.key")
    fi
  fi
done < "$zones_dir/testbed.manifest"

[ -n "${ds_of[test]:-}" ] || die "the manifest must sign the zone 'test'"
echo "${ds_of[test]}" > "$out/trust-anchor.ds"

{
  echo "# Generated by tools/make-testbed.sh: a node resolving through the signed testbed zones."
  echo "# Paths are relative to this file. See docs/CONFIG.md."
  echo "[resolver]"
  echo 'mode = "testbed"'
  echo 'trust_anchor = "trust-anchor.ds"'
  echo "zones = ["
  for z in "${zones[@]}"; do
    case $z in beta.test.rolled.*|test.nobetads.*) continue ;; esac  # swapped in by the tests
    echo "  \"$z\","
  done
  echo "]"
  echo "query_timeout_ms = 3000"
  echo ""
  echo "[key_cache]"
  echo "min_ttl = 30"
  echo "max_ttl = 86400"
  echo "failure_ttl = 60"
} > "$out/keyfed.toml"

# Two node configurations for the demo: alpha.test and beta.test on loopback,
# beta connecting to alpha at start. Both include keyfed.toml's resolver.
node_config() { # domain key port [peer-domain peer-port]
  sed -n '/^\[resolver\]/,$p' "$out/keyfed.toml"
  printf '\n[node]\nlisten = "127.0.0.1"\nport = %s\n\n[[domains]]\nname = "%s"\nkeys = ["fedkeys/%s.pem"]\n' "$3" "$1" "$2"
  if [ $# -ge 5 ]; then printf '\n[[peers]]\ndomain = "%s"\naddress = "127.0.0.1"\nport = %s\n' "$4" "$5"; fi
}
node_config alpha.test alpha-1 25301 > "$out/node-alpha.toml"
node_config beta.test beta-new 25302 alpha.test 25301 > "$out/node-beta.toml"

printf '%s\n' alpha.test beta.test gamma.test nokey.test absent.test unsupported.test mixed.test \
  insecure.test expired.test tampered.test badds.test expiring.test alias.test dname.test x.wild.test x.many.wild.test \
  > "$out/domains.txt"
chmod 0644 "$out"/*.zone* "$out/trust-anchor.ds" "$out"/*.toml "$out/domains.txt"
rm -rf "$out/work"
echo "make-testbed: ${#zones[@]} zones in $out"
