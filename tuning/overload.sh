#!/usr/bin/env bash
# Overload, ringmq against Mosquitto in the same run, each broker on BROKER_CPU and
# loadgen on CLIENT_CPU:
#   1. flood: one QoS 1 publisher (1 KiB payloads, closed loop) to one healthy and one
#      stalled subscriber (it reads nothing after SUBACK) for SECONDS: the healthy
#      subscriber's deliveries and loss, and the broker's resident memory (max, end).
#      Twice: both brokers on their defaults, then with queues unbounded and a 256 MiB
#      memory limit (ringmq --memory-max-bytes 256M; Mosquitto memory_limit).
#   2. descriptors: the broker under `ulimit -n FD_LIMIT`, a storm of STORM connections
#      held for 5 s: connections accepted, and whether a new client is served afterwards.
#
# Usage: tuning/overload.sh [seconds of flood]
# Env:   BROKER_CPU (0), CLIENT_CPU (1), FD_LIMIT (1024), STORM (3000), MOSQUITTO, BIN_DIR.
# Needs: mosquitto (apt-get install -y mosquitto), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_OF_FLOOD=${1:-60}
BROKER_CPU=${BROKER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
FD_LIMIT=${FD_LIMIT:-1024}
STORM=${STORM:-3000}
MOSQUITTO=${MOSQUITTO:-mosquitto}
if [ -n "${BIN_DIR:-}" ]; then
  RINGMQ=$BIN_DIR/ringmq; LOADGEN=$BIN_DIR/loadgen
else
  cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
  RINGMQ=./target/release/ringmq; LOADGEN=./target/release/loadgen
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# start BROKER VARIANT: starts it on a fresh port in the background; sets PORT and PID.
start() {
  local broker=$1 variant=$2
  PORT=$((20000 + RANDOM % 20000))
  case "$broker/$variant" in
    ringmq/defaults) set -- ;;
    ringmq/unbounded) set -- --queued-messages-max 1000000 --slow-subscriber-timeout-s 0 --memory-max-bytes 256M ;;
    ringmq/fd) set -- ;;
    mosquitto/*)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\n' $PORT >"$WORK/m.conf"
      [ "$variant" = unbounded ] && printf 'max_queued_messages 0\nmemory_limit 268435456\n' >>"$WORK/m.conf"
      ;;
  esac
  if [ "$broker" = ringmq ]; then
    (ulimit -n "$FD_LIMIT_NOW"; exec taskset -c "$BROKER_CPU" "$RINGMQ" --listen 127.0.0.1:$PORT --cores 1 --log warn --sys-interval-s 0 "$@") \
      >/dev/null 2>"$WORK/broker.err" &
  else
    (ulimit -n "$FD_LIMIT_NOW"; exec taskset -c "$BROKER_CPU" "$MOSQUITTO" -c "$WORK/m.conf") >/dev/null 2>"$WORK/broker.err" &
  fi
  PID=$!
  sleep 0.5
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

flood() { # broker variant
  FD_LIMIT_NOW=$(ulimit -Hn)
  start "$1" "$2"
  local max=0 rss
  taskset -c "$CLIENT_CPU" "$LOADGEN" --port $PORT --scenario fanout --subscribers 1 --stalled-subscribers 1 \
    --qos-pub 1 --qos-sub 1 --payload-bytes 1024 --duration-s "$SECONDS_OF_FLOOD" --drain-s 5 --json >"$WORK/flood.json" 2>/dev/null &
  local loadgen=$!
  while kill -0 $loadgen 2>/dev/null; do
    rss=$(rss_kib $PID); [ "$rss" -gt "$max" ] && max=$rss
    sleep 1
  done
  wait $loadgen || true
  local end; end=$(rss_kib $PID)
  python3 - "$1" "$2" "$max" "$end" "$WORK/flood.json" <<'EOF'
import json, sys
broker, variant, peak, end, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    r = json.loads(open(path).read().strip().splitlines()[-1]); c = r["counts"]
    result = f'{r["published"]} published, {c["delivered"]} delivered to the healthy one, lost {c["lost"]}'
except Exception as error:
    result = f"no report ({error})"
print(f"| {broker} | {variant} | {result} | {peak // 1024} MiB | {end // 1024} MiB |")
EOF
  kill $PID; wait $PID 2>/dev/null || true
}

descriptors() { # broker
  FD_LIMIT_NOW=$FD_LIMIT
  start "$1" fd
  taskset -c "$CLIENT_CPU" "$LOADGEN" --port $PORT --scenario conn-storm --connections "$STORM" --hold-s 5 --json \
    >"$WORK/storm.json" 2>/dev/null || true
  local served=no
  if taskset -c "$CLIENT_CPU" "$LOADGEN" --port $PORT --scenario fanout --subscribers 1 --messages 10 --duration-s 5 --json \
    >"$WORK/after.json" 2>/dev/null; then served=yes; fi
  local alive=yes; kill -0 $PID 2>/dev/null || alive=no
  python3 - "$1" "$WORK/storm.json" "$served" "$alive" "$FD_LIMIT" "$STORM" <<'EOF'
import json, sys
broker, path, served, alive, limit, storm = sys.argv[1:7]
try:
    r = json.loads(open(path).read().strip().splitlines()[-1])
    held = f'{r["connections_ok"]} of {storm}'
except Exception as error:
    held = f"no report ({error})"
print(f"| {broker} | {limit} | {held} | {alive} | {served} |")
EOF
  kill $PID 2>/dev/null; wait $PID 2>/dev/null || true
}

echo "| broker | queues | healthy subscriber | RSS max | RSS at end |"
echo "|---|---|---|---|---|"
for variant in defaults unbounded; do
  for broker in mosquitto ringmq; do flood $broker $variant; done
done
echo
echo "| broker | ulimit -n | connections held | still running | new client served after |"
echo "|---|---|---|---|---|"
for broker in mosquitto ringmq; do descriptors $broker; done
