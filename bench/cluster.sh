#!/usr/bin/env bash
# Cluster figures (issue 15): the same load against Mosquitto, one Sluice without [cluster],
# and Sluice clusters of 1, 2 and 3 nodes on one `nats-server -js`, with `sluice-bench run
# --cluster` spreading subscribers and publishers over the nodes. Writes
# bench/results/cluster.jsonl (one line per run) and prints a Markdown table
# (bench/results/cluster.md is that table with the notes around it).
#
#   bench/cluster.sh [ROUNDS] [SECONDS]      defaults: 2 rounds of 5 s per configuration
#
# Environment: FIXED_ONLY=1 runs the fixed-rate loads only (the per-message cost);
# SLUICE_BEFORE=/path/to/sluice also runs that binary as 2- and 3-node clusters
# (`sluice-before-cluster-N`), to compare a change with the build before it in one run.
#
# Every process is started here and stopped by its PID (also on Ctrl-C). Sluice nodes run with
# persistence.mode = "memory": the figures are about routing, not the disk.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-2}"
SECS="${2:-5}"

command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || bash scripts/install-test-deps.sh
NATS="$(command -v nats-server || echo /usr/sbin/nats-server)"
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
cargo build --release -q -p sluice -p sluice-bench
target="${CARGO_TARGET_DIR:-target}"
SLUICE="$target/release/sluice"
BENCH="$target/release/sluice-bench"
OUT=bench/results/cluster.jsonl
: > "$OUT"
WORK="$(mktemp -d)"
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port: bounded wait until something accepts on it
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on $1" >&2; return 1
}

# start_nats -> NATS_URL, NATS_PID
start_nats() {
    local port; port=$(free_port)
    rm -rf "$WORK/js"; mkdir -p "$WORK/js"
    "$NATS" -a 127.0.0.1 -p "$port" -js -sd "$WORK/js" 2>"$WORK/nats.log" &
    NATS_PID=$!; PIDS+=("$NATS_PID"); NATS_URL="nats://127.0.0.1:$port"
    wait_port "$port"
}

# start_sluice NAME [NATS_URL] [BINARY] -> ADDR, PID
start_sluice() {
    local name=$1 url=${2:-} bin=${3:-$SLUICE} port; port=$(free_port)
    # Admin off: every node would bind the default 127.0.0.1:18083 and all but the first fail.
    local env=(SLUICE__ADMIN__BIND= SLUICE__PERSISTENCE__MODE=memory SLUICE__MQTT__MAX_QUEUED_MESSAGES=1000 SLUICE__MQTT__MAX_QUEUED_BYTES=16777216)
    if [ -n "$url" ]; then env+=(SLUICE__CLUSTER__NATS="$url" SLUICE__CLUSTER__NODE="$name"); fi
    env "${env[@]}" "$bin" --bind "127.0.0.1:$port" --log warn 2>"$WORK/$name.log" &
    PID=$!; PIDS+=("$PID"); ADDR="127.0.0.1:$port"
    wait_port "$port"
}

start_mosquitto() {
    local port; port=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 256\nmax_queued_messages 1000\npersistence false\n' "$port" >"$WORK/mosquitto.conf"
    "$MOSQUITTO" -c "$WORK/mosquitto.conf" 2>"$WORK/mosquitto.log" &
    PID=$!; PIDS+=("$PID"); ADDR="127.0.0.1:$port"
    wait_port "$port"
}

# Full speed (how far each configuration gets on 2 shared cores), and fixed rates every
# configuration sustains (the CPU each message costs, like for like).
LOADS=(
  "--scenario fanout --subscribers 30 --qos 1 --protocol 5"
  "--scenario fanout --subscribers 30 --qos 1 --protocol 5 --rate 2000"
  "--scenario p2p --pairs 30 --qos 1 --protocol 5 --rate 10000"
)
if [ -n "${FIXED_ONLY:-}" ]; then LOADS=("${LOADS[@]:1}"); fi

run() { # label load-args addrs pids
    local label=$1 load=$2 addrs=$3 pids=$4
    # shellcheck disable=SC2086
    "$BENCH" run --label "$label" --cluster "$addrs" --cluster-pids "$pids" $load \
        --duration "$SECS" --json "$OUT" >"$WORK/run.txt" 2>&1 || { cat "$WORK/run.txt" >&2; return 1; }
}

for round in $(seq 1 "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        start_mosquitto; run mosquitto "$load" "$ADDR" "$PID"; stop_all
        start_sluice single; run sluice-single "$load" "$ADDR" "$PID"; stop_all
        for n in 1 2 3; do
            start_nats
            addrs=(); pids=("$NATS_PID")
            for i in $(seq 1 "$n"); do start_sluice "sluice-$i" "$NATS_URL"; addrs+=("$ADDR"); pids+=("$PID"); done
            run "sluice-cluster-$n" "$load" "$(IFS=,; echo "${addrs[*]}")" "$(IFS=,; echo "${pids[*]}")"
            stop_all
        done
        if [ -n "${SLUICE_BEFORE:-}" ]; then
            for n in 2 3; do
                start_nats
                addrs=(); pids=("$NATS_PID")
                for i in $(seq 1 "$n"); do start_sluice "sluice-$i" "$NATS_URL" "$SLUICE_BEFORE"; addrs+=("$ADDR"); pids+=("$PID"); done
                run "sluice-before-cluster-$n" "$load" "$(IFS=,; echo "${addrs[*]}")" "$(IFS=,; echo "${pids[*]}")"
                stop_all
            done
        fi
    done
done

python3 - "$OUT" <<'EOF'
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    p = r["params"]
    rate = f' at {p["rate"]:,.0f} msgs/s' if p.get("rate") else " full speed"
    subs = f'1→{p["subscribers"]}' if p["scenario"] == "fanout" else f'{p["pairs"]} pairs'
    key = (f'{p["scenario"]} {subs}, QoS {p["qos"]},{rate}', r["broker"])
    rows.setdefault(key, []).append(r)
print("| load | broker | delivered msgs/s | CPU µs per delivered msg (all processes) | CPU % | latency p50 µs | p99 µs | lost | dup |")
print("|---|---|---|---|---|---|---|---|---|")
for (load, broker), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], ["mosquitto","sluice-single","sluice-cluster-1","sluice-before-cluster-2","sluice-cluster-2","sluice-before-cluster-3","sluice-cluster-3"].index(kv[0][1]))):
    def med(k):
        v = [r["figures"].get(k) for r in rs if r["ok"] and k in r["figures"]]
        return statistics.median(v) if v else float("nan")
    print(f'| {load} | {broker} | {med("delivered_msgs_s"):,.0f} | {med("cluster_cpu_us_per_msg"):.1f} | {med("cluster_cpu_pct"):.0f} | {med("lat_p50_us"):,.0f} | {med("lat_p99_us"):,.0f} | {sum(r["figures"].get("lost",0) for r in rs):.0f} | {sum(r["figures"].get("duplicated",0) for r in rs):.0f} |')
EOF
