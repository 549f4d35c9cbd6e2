#!/usr/bin/env bash
# The sweep the defaults of --inflight-max and --queued-messages-max were chosen from:
# ringmq on one shard (BROKER_CPU), loadgen on CLIENT_CPU, closed loop, 64 B payloads.
#   1. --inflight-max over INFLIGHTS for fan-out 1 -> 100 and p2p 100 pairs, QoS 1 and 2,
#      and fan-out 4 -> 1,000 QoS 1 (several publishers feeding each subscriber):
#      deliveries/s, deliveries per second of the broker's CPU time, loss, latency p50/p99.
#   2. --queued-messages-max over QUEUES at the default window, fan-out QoS 1: deliveries/s,
#      publisher pauses, the broker's peak resident memory.
# Every other flag is the default. Prints one table per part.
#
# Usage: tuning/sweep-defaults.sh [seconds per run]
# Env:   BROKER_CPU (default 0), CLIENT_CPU (default 1), INFLIGHTS, QUEUES, BIN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
BROKER_CPU=${BROKER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
INFLIGHTS=${INFLIGHTS:-16 32 64 128 256 512}
QUEUES=${QUEUES:-100 1000 10000}
if [ -n "${BIN_DIR:-}" ]; then
  RINGMQ=$BIN_DIR/ringmq; LOADGEN=$BIN_DIR/loadgen
else
  cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
  RINGMQ=./target/release/ringmq; LOADGEN=./target/release/loadgen
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# run NAME BROKER_FLAGS LOADGEN_FLAGS: one broker, one loadgen run, the JSON report, the
# broker's CPU ticks during it (utime + stime) and its peak resident memory (VmHWM) kept
# under $WORK/NAME.*.
run() {
  local name=$1 broker_flags=$2 loadgen_flags=$3
  # shellcheck disable=SC2086
  taskset -c "$BROKER_CPU" "$RINGMQ" --listen 127.0.0.1:0 --cores 1 --log warn --sys-interval-s 1 $broker_flags \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!
  local port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/$name.out" | head -1)
    [ -n "$port" ] && break
    sleep 0.05
  done
  local ticks_before
  ticks_before=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086
  taskset -c "$CLIENT_CPU" "$LOADGEN" --port "$port" --duration-s "$SECONDS_PER_RUN" --drain-s 3 --json $loadgen_flags \
    >"$WORK/$name.json" 2>/dev/null || true
  echo $(($(cpu_ticks "$pid") - ticks_before)) >"$WORK/$name.ticks"
  grep VmHWM "/proc/$pid/status" | awk '{print $2}' >"$WORK/$name.hwm"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# utime + stime of a process in clock ticks (fields 14 and 15, after the command name).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

for inflight in $INFLIGHTS; do
  run "fanin-q1-w$inflight" "--inflight-max $inflight" "--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1"
  for qos in 1 2; do
    run "fanout-q$qos-w$inflight" "--inflight-max $inflight" "--scenario fanout --publishers 1 --subscribers 100 --qos-pub $qos --qos-sub $qos"
    run "p2p-q$qos-w$inflight" "--inflight-max $inflight" "--scenario p2p --publishers 100 --qos-pub $qos --qos-sub $qos"
  done
done
for queue in $QUEUES; do
  run "queue-$queue" "--queued-messages-max $queue" "--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1"
done

python3 - "$WORK" "$INFLIGHTS" "$QUEUES" "$(getconf CLK_TCK)" <<'EOF'
import json, sys, os
work, inflights, queues, ticks_per_s = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
def report(name):
    try:
        with open(os.path.join(work, name + ".json")) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return None
def hwm(name):
    try:
        return int(open(os.path.join(work, name + ".hwm")).read().strip()) // 1024
    except Exception:
        return None
def per_cpu_s(name, r):
    try:
        cpu_s = int(open(os.path.join(work, name + ".ticks")).read()) / ticks_per_s
        return f'{r["counts"]["unique"] / cpu_s / 1e6:.2f} M per CPU-s, ' if cpu_s > 0 else ""
    except Exception:
        return ""
def cell(name):
    r = report(name)
    if r is None:
        return "no report"
    lat = r.get("latency_us") or {}
    c = r["counts"]
    return f'{r["deliveries_per_s"]/1e6:.3f} M/s, {per_cpu_s(name, r)}lost {c["lost"]}, p50/p99 {lat.get("p50","-")}/{lat.get("p99","-")} us'
print("| --inflight-max | fan-out 1->100 QoS 1 | fan-out QoS 2 | p2p 100 QoS 1 | p2p QoS 2 | fan-out 4->1,000 QoS 1 |")
print("|---|---|---|---|---|---|")
for w in inflights:
    names = [f"fanout-q1-w{w}", f"fanout-q2-w{w}", f"p2p-q1-w{w}", f"p2p-q2-w{w}", f"fanin-q1-w{w}"]
    print(f"| {w} | " + " | ".join(cell(n) for n in names) + " |")
print()
print("| --queued-messages-max | fan-out 1->100 QoS 1 | broker peak RSS |")
print("|---|---|---|")
for q in queues:
    print(f"| {q} | {cell(f'queue-{q}')} | {hwm(f'queue-{q}')} MiB |")
EOF
