#!/usr/bin/env bash
# Reproduces the README's Performance table: builds the release binaries, installs Mosquitto from
# Debian's packages if it is missing, and runs `sluice-bench suite` (16 comparisons, 3 rounds
# each, A B A B A B). Writes bench/results/latest.jsonl, latest.md, throughput.svg, cpu.svg and
# latency.svg. Extra arguments go to the suite, e.g. `bench/run-all.sh --only fanin-q1 --rounds 1`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    echo "run-all: apt-get install mosquitto" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
    # The Debian package starts a system broker on :1883; the benchmark starts its own.
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
fi

cargo build --release -p sluice -p sluice-bench
target="${CARGO_TARGET_DIR:-target}"
export SLUICE_BIN="$target/release/sluice"
# `conns` opens thousands of sockets on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$target/release/sluice-bench" suite "$@"
