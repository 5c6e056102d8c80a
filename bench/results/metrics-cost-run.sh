#!/usr/bin/env bash
# Metrics cost (issue 14): main's binary (A) against the metrics branch (B), side by side.
set -u
BENCH=/work/wt/metrics/target/release/sluice-bench
OUT=/tmp/bcmp
BASE='env SLUICE__PERSISTENCE__MODE=durable /tmp/sluice-base --bind 127.0.0.1:{port} --data-dir /tmp/bcmp/d-base-{port} --log warn'
NEW='env SLUICE__PERSISTENCE__MODE=durable /tmp/sluice-metrics --bind 127.0.0.1:{port} --data-dir /tmp/bcmp/d-new-{port} --log warn'
$BENCH compare --scenario fanout --subscribers 50 --qos 1 --a "$BASE" --b "$NEW" --rounds 8 --duration 5 --json $OUT/metrics-cost.jsonl --markdown $OUT/fanout.md > $OUT/fanout.txt 2>&1
$BENCH compare --scenario fanin --publishers 8 --qos 1 --a "$BASE" --b "$NEW" --rounds 8 --duration 5 --json $OUT/metrics-cost.jsonl --markdown $OUT/fanin.md > $OUT/fanin.txt 2>&1
$BENCH compare --scenario fanout --subscribers 50 --qos 1 --a "$NEW" --b "$NEW" --rounds 4 --duration 5 --json $OUT/metrics-cost.jsonl --markdown $OUT/self-fanout.md > $OUT/self-fanout.txt 2>&1
$BENCH compare --scenario fanin --publishers 8 --qos 1 --a "$NEW" --b "$NEW" --rounds 4 --duration 5 --json $OUT/metrics-cost.jsonl --markdown $OUT/self-fanin.md > $OUT/self-fanin.txt 2>&1
rm -rf /tmp/bcmp/d-*
echo finished > $OUT/done
