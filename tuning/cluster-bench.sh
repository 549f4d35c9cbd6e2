#!/usr/bin/env bash
# Cluster figures (issue #15), all in one run on one machine: 3 nats-server (JetStream,
# one NATS cluster) and 3 ringmq nodes with --cluster on 127.0.0.1-3, loadgen beside them.
#
#   1. added latency of a cross-node delivery: QoS 1, 1 publisher -> 10 subscribers at a
#      fixed rate, subscribers on the publisher's node vs on another node;
#   2. fan-out throughput, closed loop, QoS 1, 1 -> 100: a lone node (no --cluster), all
#      subscribers on the publisher's node of the cluster, subscribers spread over 3 nodes;
#   3. the cost of --cluster-durable: a second cluster of 3 nodes on the same NATS servers
#      (--cluster-name ringmqd --cluster-durable), the cross-node latency run and a fixed-
#      rate QoS 1 fan-in (10 publishers on node 1 -> 1 subscriber on node 2, FANIN_RATE
#      messages/s in all) on both.
#
# On a 2-core machine these are correctness-level figures: every broker process shares
# CPU 0 (taskset), loadgen runs on CPU 1.
#
# Usage: tuning/cluster-bench.sh [SECONDS]   (default 5). Needs nats-server and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
RATE=${RATE:-2000}
FANIN_RATE=${FANIN_RATE:-10000}
BROKER_CPUS=${BROKER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
command -v nats-server >/dev/null || { echo "nats-server not found (apt-get install nats-server)" >&2; exit 77; }
cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
RINGMQ=target/release/ringmq
LOADGEN=target/release/loadgen
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
}
wait_port() {
  for _ in $(seq 200); do
    python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.1)' "$1" "$2" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2
  exit 1
}

ROUTES=()
declare -A ROUTE_PORT NATS_PORT MQTT_PORT
for i in 1 2 3; do
  ROUTE_PORT[$i]=$(free_port 127.0.0.$i)
  NATS_PORT[$i]=$(free_port 127.0.0.$i)
  MQTT_PORT[$i]=$(free_port 127.0.0.$i)
  ROUTES+=("nats-route://127.0.0.$i:${ROUTE_PORT[$i]}")
done
ROUTE_LIST=$(IFS=,; echo "${ROUTES[*]}")
for i in 1 2 3; do
  taskset -c "$BROKER_CPUS" nats-server --addr 127.0.0.$i --port "${NATS_PORT[$i]}" --server_name "n$i" \
    --cluster_name ringmq-bench --cluster "nats://127.0.0.$i:${ROUTE_PORT[$i]}" --routes "$ROUTE_LIST" \
    --jetstream --store_dir "$WORK/nats$i" >"$WORK/nats$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do wait_port 127.0.0.$i "${NATS_PORT[$i]}"; done
declare -A DURABLE_PORT
for i in 1 2 3; do
  taskset -c "$BROKER_CPUS" "$RINGMQ" --cores 1 --listen "127.0.0.$i:${MQTT_PORT[$i]}" --log warn \
    --cluster "nats://127.0.0.$i:${NATS_PORT[$i]}" --node-id "node$i" >"$WORK/ringmq$i.out" 2>"$WORK/ringmq$i.log" &
  PIDS+=($!)
  DURABLE_PORT[$i]=$(free_port 127.0.0.$i)
  taskset -c "$BROKER_CPUS" "$RINGMQ" --cores 1 --listen "127.0.0.$i:${DURABLE_PORT[$i]}" --log warn \
    --cluster "nats://127.0.0.$i:${NATS_PORT[$i]}" --node-id "durable$i" --cluster-name ringmqd --cluster-durable \
    >"$WORK/durable$i.out" 2>"$WORK/durable$i.log" &
  PIDS+=($!)
done
LONE_PORT=$(free_port 127.0.0.1)
taskset -c "$BROKER_CPUS" "$RINGMQ" --cores 1 --listen "127.0.0.1:$LONE_PORT" --log warn >"$WORK/lone.out" 2>"$WORK/lone.log" &
PIDS+=($!)
for i in 1 2 3; do wait_port 127.0.0.$i "${MQTT_PORT[$i]}"; wait_port 127.0.0.$i "${DURABLE_PORT[$i]}"; done
wait_port 127.0.0.1 "$LONE_PORT"
# NATS propagates interest between its servers asynchronously; give the routes a moment.
sleep 2

run() { # name, loadgen args...
  local name=$1
  shift
  # A failed run (loadgen exits non-zero) is reported with its errors, not hidden.
  taskset -c "$CLIENT_CPUS" "$LOADGEN" --json --duration-s "$SECONDS_PER_RUN" --warmup-s 1 --drain-s 3 "$@" >"$WORK/$name.json" || true
  echo "$name: $*" >>"$WORK/commands"
}

N1="127.0.0.1:${MQTT_PORT[1]}"
N2="127.0.0.2:${MQTT_PORT[2]}"
N3="127.0.0.3:${MQTT_PORT[3]}"
LATENCY=(--scenario fanout --publishers 1 --subscribers 10 --qos-pub 1 --qos-sub 1 --rate "$RATE")
run latency-same-node --host 127.0.0.1 --port "${MQTT_PORT[1]}" "${LATENCY[@]}" --topic-prefix bench/same
run latency-cross-node --host 127.0.0.1 --port "${MQTT_PORT[1]}" --subscribe-to "$N2" "${LATENCY[@]}" --topic-prefix bench/cross
FANOUT=(--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1)
run fanout-lone-node --host 127.0.0.1 --port "$LONE_PORT" "${FANOUT[@]}" --topic-prefix bench/lone
run fanout-one-node --host 127.0.0.1 --port "${MQTT_PORT[1]}" "${FANOUT[@]}" --topic-prefix bench/one
run fanout-three-nodes --host 127.0.0.1 --port "${MQTT_PORT[1]}" --subscribe-to "$N1" --subscribe-to "$N2" --subscribe-to "$N3" \
  "${FANOUT[@]}" --topic-prefix bench/three
D2="127.0.0.2:${DURABLE_PORT[2]}"
run latency-cross-node-durable --host 127.0.0.1 --port "${DURABLE_PORT[1]}" --subscribe-to "$D2" "${LATENCY[@]}" --topic-prefix bench/dcross
FANIN=(--scenario fanin --publishers 10 --subscribers 1 --qos-pub 1 --qos-sub 1 --rate "$FANIN_RATE")
run fanin-cross-node --host 127.0.0.1 --port "${MQTT_PORT[1]}" --subscribe-to "$N2" "${FANIN[@]}" --topic-prefix bench/fanin
run fanin-cross-node-durable --host 127.0.0.1 --port "${DURABLE_PORT[1]}" --subscribe-to "$D2" "${FANIN[@]}" --topic-prefix bench/dfanin

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
print("| run | deliveries/s | lost | dup | p50 us | p99 us | p99.9 us |")
print("|---|---|---|---|---|---|---|")
for name in ["latency-same-node", "latency-cross-node", "fanout-lone-node", "fanout-one-node", "fanout-three-nodes",
             "latency-cross-node-durable", "fanin-cross-node", "fanin-cross-node-durable"]:
    r = json.load(open(f"{work}/{name}.json"))
    lat = r.get("latency_us") or {}
    print(f"| {name} | {r['deliveries_per_s']:.0f} | {r['counts']['lost']} | {r['counts']['duplicated']} | "
          f"{lat.get('p50', '')} | {lat.get('p99', '')} | {lat.get('p99_9', '')} |")
    if r.get("errors"):
        print(f"|   {name} errors: {'; '.join(r['errors'][:3])} |")
PY
echo
echo "commands (ports are this run's):"
cat "$WORK/commands"
