#!/usr/bin/env bash
# What durability costs: the same loadgen runs against ringmq with --durability off,
# interval and sync (each with its own --data-dir) and against Mosquitto with
# `persistence true`, broker pinned to BROKER_CPUS, loadgen to CLIENT_CPUS, ROUNDS rounds.
# Subscribers are persistent (clean session 0), so their queues are what gets stored.
# Scenarios: fan-out 1 -> 100 and p2p (10 pairs) at full speed (throughput), and fan-out
# 1 -> 100 at a fixed 1,000 publishes/s (latency: what sync adds to p99).
#
# Usage: tuning/durability-cost.sh [seconds per run]
# Env:   BROKER_CPUS (default 0), CLIENT_CPUS (default 1), ROUNDS (default 2), MOSQUITTO
#        (binary), DATA_ROOT (where the data directories go; default a temporary
#        directory under /var/tmp, on disk rather than tmpfs), OUT_DIR (keep the reports).
# Needs: mosquitto, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
BROKER_CPUS=${BROKER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
ROUNDS=${ROUNDS:-2}
MOSQUITTO=${MOSQUITTO:-mosquitto}
SHARDS=$(echo "$BROKER_CPUS" | awk -F, '{n=0; for (i=1;i<=NF;i++) { split($i,r,"-"); n += (r[2]=="" ? 1 : r[2]-r[1]+1) } print n}')
cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
RINGMQ=./target/release/ringmq; LOADGEN=./target/release/loadgen
WORK=${OUT_DIR:-$(mktemp -d)}
DATA_ROOT=${DATA_ROOT:-$(mktemp -d /var/tmp/ringmq-durability.XXXXXX)}
mkdir -p "$WORK" "$DATA_ROOT"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA_ROOT"; [ -n "${OUT_DIR:-}" ] || rm -rf "$WORK"' EXIT

start_broker() { # name
  PORT=$((20000 + RANDOM % 20000))
  rm -rf "${DATA_ROOT:?}/data" && mkdir -p "$DATA_ROOT/data"
  case "$1" in
    ringmq-*) taskset -c "$BROKER_CPUS" "$RINGMQ" --cores "$SHARDS" --log warn --sys-interval-s 0 --listen "127.0.0.1:$PORT" \
                --data-dir "$DATA_ROOT/data" --durability "${1#ringmq-}" >"$WORK/broker.log" 2>&1 & ;;
    mosquitto-persistent)
              printf 'user root\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 32\npersistence true\npersistence_location %s/\nlistener %s 127.0.0.1\n' \
                "$DATA_ROOT/data" "$PORT" >"$WORK/m.conf"
              taskset -c "$BROKER_CPUS" "$MOSQUITTO" -c "$WORK/m.conf" >"$WORK/broker.log" 2>&1 & ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
}

SCENARIOS=(
  "fanout-q1|--scenario fanout --subscribers 100 --persistent --qos-pub 1 --qos-sub 1"
  "p2p-q1|--scenario p2p --publishers 10 --persistent --qos-pub 1 --qos-sub 1"
  "fanout-q1-1000/s|--scenario fanout --subscribers 100 --persistent --qos-pub 1 --qos-sub 1 --rate 1000"
)
BROKERS=(mosquitto-persistent ringmq-off ringmq-interval ringmq-sync)

for round in $(seq "$ROUNDS"); do
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r name flags <<<"$entry"
    for broker in "${BROKERS[@]}"; do
      start_broker "$broker"
      # shellcheck disable=SC2086
      taskset -c "$CLIENT_CPUS" "$LOADGEN" --port "$PORT" $flags --duration-s "$SECONDS_PER_RUN" --drain-s 5 \
        --json >"$WORK/${name//\//_}.$broker.$round.json" 2>"$WORK/${name//\//_}.$broker.$round.err" || true
      stop_broker
      sleep 1
    done
  done
done

python3 - "$WORK" "$ROUNDS" "${BROKERS[*]}" "${SCENARIOS[@]}" <<'PY'
import json, os, sys
work, rounds, brokers, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
def load(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip() or "null")
    except (OSError, ValueError):
        return None
print("| scenario | round | " + " | ".join(brokers) + " |")
print("|---|---|" + "---|" * len(brokers))
for entry in scenarios:
    name = entry.split("|")[0]
    for r in range(1, rounds + 1):
        cells = []
        for broker in brokers:
            report = load(os.path.join(work, f"{name.replace('/', '_')}.{broker}.{r}.json"))
            if report is None:
                cells.append("-")
                continue
            lost = report["counts"]["lost"]
            p99 = report["latency_us"]["p99"] / 1000
            cells.append(f"{report['deliveries_per_s']:,.0f}/s, p99 {p99:.1f} ms" + (f", lost {lost:,}" if lost else ""))
        print(f"| {name} | {r} | " + " | ".join(cells) + " |")
PY
