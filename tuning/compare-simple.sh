#!/usr/bin/env bash
# Side-by-side fan-out with Mosquitto's own command-line clients: one publisher, N
# subscribers on one topic, QoS 0, M messages. Broker pinned to CPU 0, all clients to
# CPU 1, one broker at a time, same load for both. Prints deliveries/s and the ratio.
#
# The clients (N+1 processes on one CPU) are part of what is measured, so the ratio is a
# floor for what the brokers alone would show; loadgen (its own issue) removes that.
#
# Usage: tuning/compare-simple.sh [subscribers] [messages]
# Needs: mosquitto, mosquitto-clients (apt-get install -y mosquitto mosquitto-clients).
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${1:-50}
MESSAGES=${2:-20000}
cargo build --release --bin ringmq >/dev/null 2>&1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

start_broker() {
  # A fresh port per run: mosquitto cannot rebind one that still has TIME_WAIT sockets.
  PORT=$((20000 + RANDOM % 20000))
  case "$1" in
    ringmq) taskset -c 0 ./target/release/ringmq --listen 127.0.0.1:$PORT --cores 1 --log warn --sys-interval-s 0 \
              --queued-messages-max 100000 --outbound-buffer-max-bytes 67108864 >"$WORK/broker.log" 2>&1 & ;;
    mosquitto) printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' $PORT >"$WORK/mosquitto.conf"
               taskset -c 0 mosquitto -c "$WORK/mosquitto.conf" >"$WORK/broker.log" 2>&1 & ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 50); do mosquitto_pub -p $PORT -t ping -m x 2>/dev/null && return; sleep 0.1; done
  echo "broker $1 did not start" >&2; cat "$WORK/broker.log" >&2; exit 1
}

run_one() {
  local name=$1
  start_broker "$name"
  rm -f "$WORK"/sub.*
  for i in $(seq "$SUBSCRIBERS"); do
    taskset -c 1 mosquitto_sub -p $PORT -t bench/fanout -q 0 -C "$MESSAGES" -W 120 >"$WORK/sub.$i" &
  done
  sleep 2   # let every subscriber connect and subscribe
  local start end
  start=$(date +%s.%N)
  seq "$MESSAGES" | taskset -c 1 mosquitto_pub -p $PORT -t bench/fanout -q 0 -l
  wait $(jobs -p | grep -v "^$BROKER_PID$") 2>/dev/null || true
  end=$(date +%s.%N)
  # utime + stime of the broker, in clock ticks: its own CPU cost for the whole run.
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$BROKER_PID/stat")
  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
  local received
  received=$(cat "$WORK"/sub.* | wc -l)
  local expected=$((SUBSCRIBERS * MESSAGES))
  local rate
  rate=$(echo "$received / ($end - $start)" | bc -l)
  local cpu_ns_per_delivery
  cpu_ns_per_delivery=$(echo "$ticks * 1000000000 / $(getconf CLK_TCK) / $received" | bc -l)
  printf '%-10s deliveries %d/%d  seconds %.2f  deliveries/s %.0f  broker CPU ns/delivery %.0f\n' \
    "$name" "$received" "$expected" "$(echo "$end - $start" | bc -l)" "$rate" "$cpu_ns_per_delivery"
  eval "RATE_$name=$rate"
  eval "CPU_$name=$cpu_ns_per_delivery"
}

echo "fan-out 1 -> $SUBSCRIBERS subscribers, $MESSAGES messages, QoS 0; broker on CPU 0, clients on CPU 1"
run_one mosquitto
run_one ringmq
printf 'ratio ringmq/mosquitto: deliveries/s %.2fx, broker CPU per delivery %.2fx less\n' \
  "$(echo "$RATE_ringmq / $RATE_mosquitto" | bc -l)" "$(echo "$CPU_mosquitto / $CPU_ringmq" | bc -l)"
