#!/usr/bin/env bash
# Persistent-store figures (bench/results/durability.md and .jsonl): broker RSS with 1,000,000
# QoS 1 messages (100 B) queued for one offline persistent session (sluice durable, sluice
# memory, mosquitto), and restart with 10,000 persistent sessions and 1,000,000 queued messages
# (sluice durable, mosquitto with persistence; stopped by SIGTERM and by SIGKILL): spawn → first
# CONNACK, RSS after start-up, data directory size, one session's drain; and, side by side, RSS
# with 1,000,000 QoS 1 messages waiting for a connected subscriber that reads nothing, in its
# session queue and in its shared group's queue (`--parts queues`). Builds the release
# binaries first; Mosquitto must be installed (bench/run-all.sh installs it). Extra arguments go to
# `sluice-bench durability`, e.g. `bench/durability.sh --parts startup --stops term`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p sluice -p sluice-bench
target="${CARGO_TARGET_DIR:-target}"
export SLUICE_BIN="$target/release/sluice"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rm -f bench/results/durability.jsonl
exec "$target/release/sluice-bench" durability \
    --json bench/results/durability.jsonl --markdown bench/results/durability.md "$@"
