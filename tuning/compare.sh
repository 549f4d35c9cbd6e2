#!/usr/bin/env bash
# The same loadgen scenarios against ringmq and Mosquitto, one broker at a time, the
# broker pinned to BROKER_CPUS and loadgen to CLIENT_CPUS, and a table with the ratio.
#
# Usage: tuning/compare.sh [seconds per run]
# Env:   BROKER_CPUS (default 0), CLIENT_CPUS (default 1), RINGMQ_FLAGS, MOSQUITTO (binary)
# Needs: mosquitto (apt-get install -y mosquitto), python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
BROKER_CPUS=${BROKER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
MOSQUITTO=${MOSQUITTO:-mosquitto}
SHARDS=$(echo "$BROKER_CPUS" | awk -F, '{n=0; for (i=1;i<=NF;i++) { split($i,r,"-"); n += (r[2]=="" ? 1 : r[2]-r[1]+1) } print n}')
CLIENT_CORES=$(echo "$CLIENT_CPUS" | awk -F, '{n=0; for (i=1;i<=NF;i++) { split($i,r,"-"); n += (r[2]=="" ? 1 : r[2]-r[1]+1) } print n}')
cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
# Both brokers get the same per-session queue bound, large enough not to shed in these runs.
QUEUE=1000000

start_broker() {
  PORT=$((20000 + RANDOM % 20000))   # fresh port: mosquitto cannot rebind one in TIME_WAIT
  case "$1" in
    ringmq) taskset -c "$BROKER_CPUS" ./target/release/ringmq --listen 127.0.0.1:$PORT --cores "$SHARDS" --log warn \
              --sys-interval-s 0 --queued-messages-max $QUEUE ${RINGMQ_FLAGS:-} >"$WORK/broker.log" 2>&1 & ;;
    mosquitto) printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages %s\nmax_inflight_messages 32\n' $PORT $QUEUE >"$WORK/m.conf"
               taskset -c "$BROKER_CPUS" "$MOSQUITTO" -c "$WORK/m.conf" >"$WORK/broker.log" 2>&1 & ;;
  esac
  BROKER_PID=$!
  sleep 0.5
}

run() { # name broker loadgen-args...
  local name=$1 broker=$2; shift 2
  start_broker "$broker"
  taskset -c "$CLIENT_CPUS" ./target/release/loadgen --port $PORT --json --cores "$CLIENT_CORES" \
    --duration-s "$SECONDS_PER_RUN" --warmup-s 1 --drain-s 10 "$@" >"$WORK/$name.$broker.json" || true
  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
}

SCENARIOS=(
  "fanout-1x100-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0"
  "fanout-1x100-qos1|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1"
  "fanout-1x100-qos2|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 2 --qos-sub 2"
  "p2p-100-qos1|--scenario p2p --publishers 100 --qos-pub 1 --qos-sub 1"
  "fixed-1k-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0 --rate 1000"
  "fixed-1k-qos1|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1 --rate 1000"
)
echo "broker CPUs $BROKER_CPUS ($SHARDS), loadgen CPUs $CLIENT_CPUS, $SECONDS_PER_RUN s per run, $(date -u +%F)"
for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  # shellcheck disable=SC2086
  run "$name" mosquitto $args
  # shellcheck disable=SC2086
  run "$name" ringmq $args
done
python3 - "$WORK" "${SCENARIOS[@]}" <<'PY'
import json, sys
work, entries = sys.argv[1], sys.argv[2:]
def load(name, broker):
    try:
        return json.load(open(f"{work}/{name}.{broker}.json"))
    except Exception:
        return None
print(f"| scenario | broker | deliveries/s | lost | dup | p50 us | p99 us | p99.9 us | client CPU | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|")
for entry in entries:
    name = entry.split("|")[0]
    rows = {b: load(name, b) for b in ("mosquitto", "ringmq")}
    for broker, r in rows.items():
        if r is None:
            print(f"| {name} | {broker} | (no result) | | | | | | | |"); continue
        lat = r.get("latency_us") or {}
        ratio = ""
        if broker == "ringmq" and rows["mosquitto"]:
            if "fixed" in name:
                m = (rows["mosquitto"].get("latency_us") or {}).get("p99")
                ratio = f"p99 {m / lat['p99']:.2f}x lower" if m and lat.get("p99") else ""
            elif rows["mosquitto"]["deliveries_per_s"] > 0:
                ratio = f"{r['deliveries_per_s'] / rows['mosquitto']['deliveries_per_s']:.2f}x"
        sat = " (saturated)" if r["client_saturated"] else ""
        print(f"| {name} | {broker} | {r['deliveries_per_s']:.0f} | {r['counts']['lost']} | {r['counts']['duplicated']} | "
              f"{lat.get('p50','')} | {lat.get('p99','')} | {lat.get('p99_9','')} | {100*r['client_cpu_fraction']:.0f}%{sat} | {ratio} |")
PY
