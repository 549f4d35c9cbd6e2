#!/usr/bin/env bash
# What --metrics-listen costs: fan-out 1 -> 100 at QoS 1 with the endpoint scraped every
# second, against no endpoint, alternating, ROUNDS rounds. Broker (one shard) pinned to
# BROKER_CPU, loadgen to CLIENT_CPU; the scraper is bash's /dev/tcp on the client's CPU.
#
# Usage: tuning/metrics-cost.sh [seconds per run]   Env: ROUNDS (3), BROKER_CPU (0), CLIENT_CPU (1)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
ROUNDS=${ROUNDS:-3}
BROKER_CPU=${BROKER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    PORT=$((30000 + RANDOM % 10000)); MPORT=$((PORT + 10000))
    extra=(); [ "$mode" = on ] && extra=(--metrics-listen "127.0.0.1:$MPORT")
    taskset -c "$BROKER_CPU" target/release/ringmq --cores 1 --listen "127.0.0.1:$PORT" --log warn "${extra[@]}" >/dev/null 2>&1 &
    broker=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    scraper=
    if [ "$mode" = on ]; then
      taskset -c "$CLIENT_CPU" bash -c "for i in \$(seq $((SECONDS_PER_RUN + 7))); do
          exec 3<>/dev/tcp/127.0.0.1/$MPORT; printf 'GET /metrics HTTP/1.1\r\n\r\n' >&3; cat <&3 >/dev/null; exec 3<&-; sleep 1; done" &
      scraper=$!
    fi
    taskset -c "$CLIENT_CPU" target/release/loadgen --port "$PORT" --scenario fanout --subscribers 100 --qos-pub 1 --qos-sub 1 \
      --duration-s "$SECONDS_PER_RUN" --json |
      python3 -c "import json,sys; d=json.load(sys.stdin); print('metrics $mode', 'round $round', round(d['deliveries_per_s']), 'deliveries/s, lost', d['counts']['lost'])"
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
    kill "$broker"; wait "$broker" 2>/dev/null || true
  done
done
