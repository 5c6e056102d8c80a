#!/usr/bin/env bash
# Bridge throughput (issue 15): N QoS 1 messages published on an edge broker, bridged `out` to a
# remote Mosquitto, timed until a QoS 1 subscriber at the remote has all of them. Edges, one
# after the other on the same remote: Sluice (memory mode), Sluice (durable mode), Mosquitto
# 2.0 with a bridge of its own (in memory, its default). The publisher is `mosquitto_pub -l`
# (one QoS 1 message per line, its default window of 20 in flight) in every case. The edge
# Mosquitto gets `max_queued_messages 0`: with its default (1000) its bridge drops messages
# under this load.
#
#   bench/bridge.sh [N] [ROUNDS]     (default 20000 messages, 3 rounds; needs target/release/sluice)
set -euo pipefail
N=${1:-20000}
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=$ROOT/target/release/sluice
MOSQUITTO=/usr/sbin/mosquitto
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # file, needle: bounded wait for a log line
    for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; exit 1
}

REMOTE=$(free_port)
cat > "$DIR/remote.conf" <<CONF
listener $REMOTE 127.0.0.1
allow_anonymous true
max_queued_messages 0
user root
log_dest file $DIR/remote.log
log_type all
CONF
$MOSQUITTO -c "$DIR/remote.conf" & PIDS+=($!)
wait_for "$DIR/remote.log" "running"

run_case() { # name, command to start the edge (echo its pid), log file, ready needle, edge port
    local name=$1 edge_port=$5
    local sub_log=$DIR/sub-$name.log
    mosquitto_sub -p "$REMOTE" -t 'b/#' -q 1 -i "sub-$name-$RANDOM" -C "$N" -W 300 > "$sub_log" &
    local sub=$!
    # Subscribed once the remote logs its SUBSCRIBE.
    wait_for "$DIR/remote.log" "sub-$name.* b/#"
    local start end
    start=$(date +%s.%N)
    seq -f "m%06g" 1 "$N" | mosquitto_pub -p "$edge_port" -t b/x -q 1 -l
    wait "$sub" || true   # -W: gives up after 300 s (a lost message); the count tells
    end=$(date +%s.%N)
    local got
    got=$(wc -l < "$sub_log")
    python3 -c "import sys; n=$N; t=$end-$start; print(f'{sys.argv[1]:<16} {n} messages, {t:.2f} s, {n/t:,.0f} msg/s, received {int(sys.argv[2])}')" "$name" "$got"
}

for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    for mode in memory durable; do
        port=$(free_port)
        rm -rf "$DIR/data-$mode"
        cat > "$DIR/sluice-$mode.toml" <<CONF
[[listeners]]
bind = "127.0.0.1:$port"
[persistence]
mode = "$mode"
dir = "$DIR/data-$mode"
[[bridges]]
name = "bench"
address = "127.0.0.1:$REMOTE"
protocol = "3.1.1"
client_id = "edge-sluice-$mode-$round"
topics = [ { filter = "b/#", direction = "out", qos = 1 } ]
CONF
        : > "$DIR/sluice-$mode.log"
        $SLUICE --config "$DIR/sluice-$mode.toml" --log info 2> "$DIR/sluice-$mode.log" & spid=$!
        PIDS+=($spid)
        wait_for "$DIR/sluice-$mode.log" "bridge ready"
        run_case "sluice-$mode" "" "" "" "$port"
        kill "$spid"; wait "$spid" 2>/dev/null || true
    done
    port=$(free_port)
    cat > "$DIR/edge.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
# Default 1000: the bridge's queue would drop messages past 1000 waiting (Sluice's is bounded
# by bytes, 64 MiB in memory mode); unlimited here so that both deliver everything.
max_queued_messages 0
user root
log_dest file $DIR/edge-$round.log
log_type all
connection bench
address 127.0.0.1:$REMOTE
clientid edge-mosquitto-$round
topic b/# out 1
CONF
    $MOSQUITTO -c "$DIR/edge.conf" & mpid=$!
    PIDS+=($mpid)
    wait_for "$DIR/remote.log" "edge-mosquitto-$round.* b/#\|New bridge connected.*edge-mosquitto-$round"
    wait_for "$DIR/edge-$round.log" "Received CONNACK on connection"
    run_case "mosquitto" "" "" "" "$port"
    kill "$mpid"; wait "$mpid" 2>/dev/null || true
done
