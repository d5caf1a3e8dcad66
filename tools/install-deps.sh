#!/usr/bin/env bash
# Installs keyfed's build and test dependencies from Debian 12 packages.
# Idempotent: packages already present are left alone, and apt-get is not
# called at all when everything is installed.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libldns-dev ldnsutils
  libunbound-dev
  libssl-dev openssl
  libuv1-dev
  libfmt-dev
  catch2
  libsqlite3-dev
  libcli11-dev
  nlohmann-json3-dev
  libtomlplusplus-dev
  clang libclang-rt-14-dev   # fuzz targets (libFuzzer)
  knot knot-dnsutils         # Knot DNS: rollover by dynamic update, testbed --dns knot
  graphviz                   # testbed status --svg
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
