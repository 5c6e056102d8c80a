#!/usr/bin/env bash
# Instructions a broker spends on one drain, counted by callgrind (repeatable, unlike CPU time
# on a shared machine): N QoS 1 messages of 100 B are queued for an offline persistent
# subscriber, then instrumentation is switched on, the subscriber reconnects and acknowledges
# everything (bench/drain_client.py: one write of PUBACKs per read, as sluice-bench does), and
# 2 s after the last message (time for a compaction the drain put off) it is switched off.
#   bench/callgrind-drain.sh BINARY durable|memory N OUT
# COMPACT_MIN (bytes) scales persistence.compact_min_bytes to the smaller backlog (default:
# 64 MiB x N / 1,000,000, as for the 1,000,000-message bench). PHASE=publish counts the
# publishing of the N messages (received, routed, queued, acknowledged) instead of the drain.
# Prints the program total.
set -euo pipefail
BIN=$1; MODE=$2; N=$3; OUT=$4
here=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
export SLUICE__PERSISTENCE__MODE=$MODE SLUICE__MQTT__MAX_QUEUED_MESSAGES=1100000 \
    SLUICE__MQTT__MAX_QUEUED_BYTES=1073741824 SLUICE__MQTT__MAX_QUEUED_MEMORY_BYTES=1073741824
export SLUICE__PERSISTENCE__COMPACT_MIN_BYTES=${COMPACT_MIN:-$((67108864 * N / 1000000))}
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
    "$BIN" --bind 127.0.0.1:"$PORT" --data-dir "$D" --log warn > "$OUT.log" 2>&1 &
VP=$!
for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.2; done
python3 "$here/drain_client.py" sub "$PORT"
if [ "${PHASE:-drain}" = publish ]; then
    callgrind_control -i on "$VP" > /dev/null
    python3 "$here/drain_client.py" pub "$PORT" "$N"
    callgrind_control -i off "$VP" > /dev/null
else
    python3 "$here/drain_client.py" pub "$PORT" "$N"
    sleep 1
    callgrind_control -i on "$VP" > /dev/null
    python3 "$here/drain_client.py" drain "$PORT" "$N"
    sleep 2
    callgrind_control -i off "$VP" > /dev/null
fi
kill -TERM "$VP"
wait "$VP" || true
rm -rf "$D"
callgrind_annotate "$OUT" 2>/dev/null | grep -m1 "PROGRAM TOTALS"
