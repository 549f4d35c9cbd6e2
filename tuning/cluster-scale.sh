#!/usr/bin/env bash
# Cluster scaling (issue #15): does fan-out capacity grow with the number of nodes?
# 3 nats-server (JetStream, one NATS cluster) on NATS_CPUS, up to 4 ringmq nodes with
# --cluster, node i pinned to the i-th entry of NODE_CPUS with that many shards, loadgen on
# CLIENT_CPUS. The same load each time, PUBLISHERS -> SUBSCRIBERS at QoS QOS, closed loop,
# publishers on node 1:
#
#   lone-1       one ringmq without --cluster on node 1's CPUs (the per-node baseline);
#   nodes-K      the cluster, subscribers spread evenly over nodes 1..K (K = 1..NODES):
#                each message crosses NATS once per other node, then fans out locally;
#   lone-all     one ringmq without --cluster on all the nodes' CPUs together (the same
#                CPUs as one node with more shards, for comparison);
#   latency-same / latency-cross  QoS 1, 1 -> 10 at RATE msg/s, subscribers on node 1 or 2.
#
# Usage: tuning/cluster-scale.sh [SECONDS]   (default 5)
# Env:   NODES (default 4), NODE_CPUS (default "0 0 0 0": one CPU list per node),
#        NATS_CPUS (0), CLIENT_CPUS (1), PUBLISHERS (4), SUBSCRIBERS (1000), QOS (1), RATE
#        (2000), BIN_DIR (prebuilt ringmq, loadgen and nats-server here), OUT_DIR (keep the
#        loadgen reports and logs here).
# On a 2-core machine everything shares CPU 0 and the figures say nothing about scaling;
# run it where each node can have CPUs of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
NODES=${NODES:-4}
read -r -a NODE_CPU_LIST <<<"${NODE_CPUS:-0 0 0 0}"
NATS_CPUS=${NATS_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
PUBLISHERS=${PUBLISHERS:-4}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
QOS=${QOS:-1}
RATE=${RATE:-2000}
[ "${#NODE_CPU_LIST[@]}" -ge "$NODES" ] || { echo "NODE_CPUS names ${#NODE_CPU_LIST[@]} CPU lists for $NODES nodes" >&2; exit 2; }
# shellcheck source=tuning/pin.sh
. tuning/pin.sh
count_cpus() { echo "$1" | awk -F, '{n=0; for (i=1;i<=NF;i++) { split($i,r,"-"); n += (r[2]=="" ? 1 : r[2]-r[1]+1) } print n}'; }
if [ -n "${BIN_DIR:-}" ]; then
  RINGMQ=$BIN_DIR/ringmq; LOADGEN=$BIN_DIR/loadgen; NATS_SERVER=$BIN_DIR/nats-server
else
  cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
  RINGMQ=target/release/ringmq; LOADGEN=target/release/loadgen; NATS_SERVER=$(command -v nats-server || true)
fi
[ -x "$NATS_SERVER" ] || { echo "nats-server not found (apt-get install nats-server, or BIN_DIR)" >&2; exit 77; }
WORK=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${OUT_DIR:-}" ] || rm -rf "$WORK"
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
  return 1
}

ROUTES=()
declare -A ROUTE_PORT NATS_PORT MQTT_PORT
for i in 1 2 3; do
  ROUTE_PORT[$i]=$(free_port 127.0.0.$i)
  NATS_PORT[$i]=$(free_port 127.0.0.$i)
  ROUTES+=("nats-route://127.0.0.$i:${ROUTE_PORT[$i]}")
done
ROUTE_LIST=$(IFS=,; echo "${ROUTES[*]}")
for i in 1 2 3; do
  taskset -c "$NATS_CPUS" "$NATS_SERVER" --addr 127.0.0.$i --port "${NATS_PORT[$i]}" --server_name "n$i" \
    --cluster_name ringmq-scale --cluster "nats://127.0.0.$i:${ROUTE_PORT[$i]}" --routes "$ROUTE_LIST" \
    --jetstream --store_dir "$WORK/nats$i" >"$WORK/nats$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do wait_port 127.0.0.$i "${NATS_PORT[$i]}" || exit 1; done
# Node i on 127.0.0.i for i <= 3 (each beside its own nats-server); a fourth on 127.0.0.4
# uses the first nats-server.
for i in $(seq "$NODES"); do
  nats=$(( (i - 1) % 3 + 1 ))
  cpus=${NODE_CPU_LIST[$((i - 1))]}
  MQTT_PORT[$i]=$(free_port 127.0.0.$i)
  taskset -c "$cpus" "$RINGMQ" --cores "$(count_cpus "$cpus")" --listen "127.0.0.$i:${MQTT_PORT[$i]}" --log warn \
    --sys-interval-s 0 --cluster "nats://127.0.0.$nats:${NATS_PORT[$nats]}" --node-id "node$i" \
    >"$WORK/ringmq$i.out" 2>"$WORK/ringmq$i.log" &
  PIDS+=($!)
done
for i in $(seq "$NODES"); do wait_port 127.0.0.$i "${MQTT_PORT[$i]}" || exit 1; done
# NATS propagates interest between its servers asynchronously; give the routes a moment.
sleep 2

run() { # name, loadgen args...
  local name=$1
  shift
  # A failed run (loadgen exits non-zero) is reported with its errors, not hidden.
  taskset -c "$CLIENT_CPUS" "$LOADGEN" --json --cores "$(count_cpus "$CLIENT_CPUS")" --duration-s "$SECONDS_PER_RUN" \
    --warmup-s 1 --drain-s 3 "$@" >"$WORK/$name.json" 2>"$WORK/$name.err" || true
  echo "$name: $*" >>"$WORK/commands"
}
lone() { # name cpus loadgen-args...: a ringmq without --cluster for one run
  local name=$1 cpus=$2 port
  shift 2
  port=$(free_port 127.0.0.1)
  taskset -c "$cpus" "$RINGMQ" --cores "$(count_cpus "$cpus")" --listen "127.0.0.1:$port" --log warn --sys-interval-s 0 \
    >"$WORK/$name.out" 2>"$WORK/$name.log" &
  local pid=$!
  if ! wait_port 127.0.0.1 "$port"; then
    echo "$name: ringmq did not start: $(cat "$WORK/$name.log")" >&2
    return 0
  fi
  run "$name" --host 127.0.0.1 --port "$port" "$@"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

FANOUT=(--scenario fanout --publishers "$PUBLISHERS" --subscribers "$SUBSCRIBERS" --qos-pub "$QOS" --qos-sub "$QOS")
ALL_CPUS=$(echo "${NODE_CPU_LIST[*]:0:$NODES}" | tr ' ' '\n' | sort -un | paste -sd,)
lone lone-1 "${NODE_CPU_LIST[0]}" "${FANOUT[@]}" --topic-prefix scale/lone1
for k in $(seq "$NODES"); do
  targets=()
  for i in $(seq "$k"); do targets+=(--subscribe-to "127.0.0.$i:${MQTT_PORT[$i]}"); done
  run "nodes-$k" --host 127.0.0.1 --port "${MQTT_PORT[1]}" "${targets[@]}" "${FANOUT[@]}" --topic-prefix "scale/n$k"
done
lone lone-all "$ALL_CPUS" "${FANOUT[@]}" --topic-prefix scale/loneall
LATENCY=(--scenario fanout --publishers 1 --subscribers 10 --qos-pub 1 --qos-sub 1 --rate "$RATE")
run latency-same --host 127.0.0.1 --port "${MQTT_PORT[1]}" "${LATENCY[@]}" --topic-prefix scale/same
run latency-cross --host 127.0.0.1 --port "${MQTT_PORT[1]}" --subscribe-to "127.0.0.2:${MQTT_PORT[2]}" "${LATENCY[@]}" \
  --topic-prefix scale/cross

echo "nodes: $NODES on CPUs ${NODE_CPU_LIST[*]:0:$NODES}; nats-server x3 on $NATS_CPUS; loadgen on $CLIENT_CPUS;" \
  "$PUBLISHERS -> $SUBSCRIBERS QoS $QOS; $SECONDS_PER_RUN s per run; $(date -u +%F); $(nproc) CPUs; $(uname -r)"
python3 - "$WORK" "$NODES" <<'PY'
import json, sys
work, nodes = sys.argv[1], int(sys.argv[2])
names = ["lone-1"] + [f"nodes-{k}" for k in range(1, nodes + 1)] + ["lone-all", "latency-same", "latency-cross"]
base = None
print("| run | deliveries/s | vs lone-1 | lost | dup | p50 us | p99 us | loadgen CPU |")
print("|---|---|---|---|---|---|---|---|")
for name in names:
    try:
        r = json.load(open(f"{work}/{name}.json"))
    except Exception:
        print(f"| {name} | (no result) | | | | | | |")
        continue
    lat = r.get("latency_us") or {}
    if name == "lone-1":
        base = r["deliveries_per_s"]
    ratio = f"{r['deliveries_per_s'] / base:.2f}x" if base and not name.startswith("latency") else ""
    sat = " (saturated)" if r.get("client_saturated") else ""
    print(f"| {name} | {r['deliveries_per_s']:.0f} | {ratio} | {r['counts']['lost']} | {r['counts']['duplicated']} | "
          f"{lat.get('p50', '')} | {lat.get('p99', '')} | {100 * r['client_cpu_fraction']:.0f}%{sat} |")
    if r.get("errors"):
        print(f"|   {name} errors: {'; '.join(r['errors'][:3])} |")
PY
echo
echo "commands (ports are this run's):"
cat "$WORK/commands"
