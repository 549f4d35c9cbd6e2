#!/usr/bin/env bash
# One client subscribes to 100,000 filters in 100 pipelined SUBSCRIBE packets while a
# probe client measures its own publish->receive round trip, against ringmq and Mosquitto
# in the same run. Prints one JSON line per broker and run (loadgen's subscribe-storm).
#
#   tuning/subscribe-storm.sh [RUNS]        RINGMQ_FLAGS="--cores 2" by default
#
# Broker on BROKER_CPUS (default 0,1: ringmq needs two shards for the cross-shard path),
# loadgen on CLIENT_CPU (default 1). Needs `mosquitto` on PATH and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-2}
BROKER_CPUS=${BROKER_CPUS:-0,1}
CLIENT_CPU=${CLIENT_CPU:-1}
RINGMQ_FLAGS=${RINGMQ_FLAGS:---cores 2}
cargo build --release --bin ringmq --bin loadgen >/dev/null
storm() { # name port broker-command...
  local name=$1 port=$2; shift 2
  taskset -c "$BROKER_CPUS" "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep 1
  echo -n "$name: "
  taskset -c "$CLIENT_CPU" target/release/loadgen --port "$port" --scenario subscribe-storm \
      --filters 100000 --packets 100 --duration-s 120 || true
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$RUNS"); do
  # shellcheck disable=SC2086
  storm ringmq 18841 target/release/ringmq --listen 127.0.0.1:18841 $RINGMQ_FLAGS
  storm mosquitto 18843 mosquitto -p 18843
done
