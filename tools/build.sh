#!/usr/bin/env bash
# Configures and builds keyfed into a build directory.
#   tools/build.sh [BUILD_DIR] [extra cmake args...]
# BUILD_DIR defaults to build/. Signs the testbed into BUILD_DIR/testbed too.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$src/build}"
shift || true
jobs="$(nproc 2>/dev/null || echo 2)"
cmake -S "$src" -B "$dir" -DKEYFED_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j "$jobs"
