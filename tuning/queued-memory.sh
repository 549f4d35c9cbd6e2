#!/usr/bin/env bash
# Memory per queued message: one persistent QoS 1 subscriber goes offline, N messages of
# 64 B are published to it, and the broker's RSS growth is divided by N. ringmq and
# Mosquitto in turn, each pinned to BROKER_CPU, with Mosquitto's own clients.
#
# Usage: tuning/queued-memory.sh [messages]   (default 50000)
# Needs: mosquitto, mosquitto-clients (apt-get install -y mosquitto mosquitto-clients)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-50000}
BROKER_CPU=${BROKER_CPU:-0}
cargo build --release --bin ringmq >/dev/null 2>&1
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# 64-byte payloads, one per line, numbered so none is a duplicate of another.
seq -f "%064.0f" 1 "$MESSAGES" >"$WORK/payloads"

measure() { # broker-name
  local port=$((20000 + RANDOM % 20000))
  case "$1" in
    ringmq) taskset -c "$BROKER_CPU" ./target/release/ringmq --listen 127.0.0.1:$port --cores 1 --log warn \
              --sys-interval-s 0 --queued-messages-max $((MESSAGES * 2)) & ;;
    mosquitto) printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages %s\n' $port $((MESSAGES * 2)) >"$WORK/m.conf"
               taskset -c "$BROKER_CPU" mosquitto -c "$WORK/m.conf" 2>/dev/null & ;;
  esac
  local pid=$!
  sleep 0.5
  # A persistent session subscribed at QoS 1, then gone without DISCONNECT.
  timeout 1 mosquitto_sub -p $port -c -i offline-subscriber -q 1 -t 'queue/#' >/dev/null || true
  sleep 0.3
  local before; before=$(rss_kib $pid)
  mosquitto_pub -p $port -q 1 -t queue/x -l <"$WORK/payloads"
  sleep 1
  local after; after=$(rss_kib $pid)
  # The subscriber comes back for them: the count shows they were all kept.
  local delivered; delivered=$( (timeout $((MESSAGES / 2000 + 10)) mosquitto_sub -p $port -c -i offline-subscriber -q 1 -t 'queue/#' -C "$MESSAGES" || true) | wc -l)
  echo "$1: RSS $before KiB -> $after KiB for $MESSAGES queued messages: $(( (after - before) * 1024 / MESSAGES )) bytes per message; $delivered delivered on reconnect"
  kill $pid; wait $pid 2>/dev/null || true
}
echo "$MESSAGES messages of 64 B queued for one offline QoS 1 subscriber, $(date -u +%F)"
measure mosquitto
measure ringmq
