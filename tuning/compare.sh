#!/usr/bin/env bash
# The same loadgen scenarios against several brokers, one broker at a time, the broker
# pinned to BROKER_CPUS and loadgen to CLIENT_CPUS, and a table with each broker's ratio to
# Mosquitto measured in the same run, and deliveries per second of broker CPU time.
#
# Usage: tuning/compare.sh [seconds per run]
# Env:   BROKER_CPUS (default 0), CLIENT_CPUS (default 1), RINGMQ_FLAGS,
#        MATRIX    dev (default: the 2-core matrix), scale (the many-core matrix at max
#                  rate), scale-rates (the many-core matrix at fixed offered loads) or
#                  flashmq (issue #14's rows at max rate: fan-out 1 -> 100 QoS 0/1/2, p2p
#                  100 pairs QoS 1, fan-out 4 -> 1,000 QoS 1; latency of fan-out QoS 1
#                  at 100k deliveries/s),
#        BROKERS   default "mosquitto ringmq", plus "flashmq" when tuning/build-flashmq.sh
#                  has built it (or FLASHMQ names a binary); also "ringmq-1" (ringmq with one
#                  shard on the first broker CPU), "ringmq-broadcast" (every publish to every
#                  shard), "ringmq-cpu" (connections steered by CPU) and "rmqtt",
#        BIN_DIR   prebuilt ringmq and loadgen here instead of `cargo build`,
#        ONLY      run only the scenarios named here (space-separated),
#        MOSQUITTO, RMQTTD, FLASHMQ (binaries), OUT_DIR (keep every loadgen JSON report here),
#        DRAIN_S   how long loadgen waits after publishing for the last deliveries (10).
# Needs: mosquitto (apt-get install -y mosquitto), python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
BROKER_CPUS=${BROKER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
MATRIX=${MATRIX:-dev}
FLASHMQ=${FLASHMQ:-$(ls .peers/flashmq-*/build/flashmq 2>/dev/null | tail -1)}
BROKERS=${BROKERS:-mosquitto ${FLASHMQ:+flashmq }ringmq}
MOSQUITTO=${MOSQUITTO:-mosquitto}
RMQTTD=${RMQTTD:-rmqttd}
# shellcheck source=tuning/pin.sh
. tuning/pin.sh
count_cpus() { echo "$1" | awk -F, '{n=0; for (i=1;i<=NF;i++) { split($i,r,"-"); n += (r[2]=="" ? 1 : r[2]-r[1]+1) } print n}'; }
SHARDS=$(count_cpus "$BROKER_CPUS")
CLIENT_CORES=$(count_cpus "$CLIENT_CPUS")
FIRST_BROKER_CPU=$(echo "$BROKER_CPUS" | sed 's/[,-].*//')
if [ -n "${BIN_DIR:-}" ]; then
  RINGMQ=$BIN_DIR/ringmq; LOADGEN=$BIN_DIR/loadgen
else
  cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
  RINGMQ=./target/release/ringmq; LOADGEN=./target/release/loadgen
fi
WORK=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${OUT_DIR:-}" ] || rm -rf "$WORK"' EXIT
# The peers get a per-session queue bound large enough not to shed in these runs (their
# defaults drop QoS 1/2 under a fast publisher). ringmq runs on its defaults: a full queue
# pauses the publisher instead of dropping (RINGMQ_FLAGS adds flags; name them with results).
QUEUE=1000000

start_ringmq() { # cpus shards extra-flags...
  local cpus=$1 shards=$2; shift 2
  # shellcheck disable=SC2086
  taskset -c "$cpus" "$RINGMQ" --listen 127.0.0.1:$PORT --cores "$shards" --log warn --sys-interval-s 0 \
    "$@" ${RINGMQ_FLAGS:-} >"$WORK/broker.log" 2>&1 &
}

# A fresh port each run (mosquitto cannot rebind one in TIME_WAIT), below the kernel's
# ephemeral range where loadgen's closed connections linger; a broker that still finds its
# port taken is started again on another.
start_broker() {
  local attempt
  for attempt in 1 2 3 4 5; do
    start_broker_once "$1"
    for _ in $(seq 50); do
      (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.1
    done
    echo "$1 did not start on port $PORT (attempt $attempt): $(tail -1 "$WORK/broker.log")" >&2
    kill "$BROKER_PID" 2>/dev/null || true
  done
}

start_broker_once() {
  local ephemeral_first
  ephemeral_first=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  PORT=$((10000 + RANDOM % (ephemeral_first > 11000 ? ephemeral_first - 10000 : 1000)))
  case "$1" in
    ringmq) start_ringmq "$BROKER_CPUS" "$SHARDS" ;;
    ringmq-broadcast) start_ringmq "$BROKER_CPUS" "$SHARDS" --routing broadcast ;;
    ringmq-cpu) start_ringmq "$BROKER_CPUS" "$SHARDS" --steer cpu ;;
    ringmq-1) start_ringmq "$FIRST_BROKER_CPU" 1 ;;
    mosquitto) printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages %s\nmax_inflight_messages 32\n' $PORT $QUEUE >"$WORK/m.conf"
               # As root it would drop to a user "mosquitto", which a bare machine lacks.
               [ "$(id -u)" != 0 ] || echo "user root" >>"$WORK/m.conf"
               taskset -c "$BROKER_CPUS" "$MOSQUITTO" -c "$WORK/m.conf" >"$WORK/broker.log" 2>&1 & ;;
    flashmq) # One worker thread per broker CPU; its per-client QoS 1/2 bounds raised to the
             # most it takes (its defaults, 512 messages and 64 KiB, drop under a fast publisher).
             printf 'thread_count %s\nallow_anonymous true\nquiet true\nmax_qos_msg_pending_per_client 65535\nmax_qos_bytes_pending_per_client 1073741824\nlisten {\n  protocol mqtt\n  port %s\n  inet_protocol ip4\n  inet4_bind_address 127.0.0.1\n}\n' \
               "$SHARDS" $PORT >"$WORK/flashmq.conf"
             taskset -c "$BROKER_CPUS" "$FLASHMQ" --config-file "$WORK/flashmq.conf" >"$WORK/broker.log" 2>&1 & ;;
    rmqtt) # Same bounds as the others; anonymous; no plugins; log to a file in $WORK.
           printf '[listener.tcp.external]\naddr = "127.0.0.1:%s"\nallow_anonymous = true\nmax_mqueue_len = %s\nmax_inflight = 32\nbacklog = 4096\nmax_handshaking_limit = 100000\n[log]\nto = "console"\nlevel = "warn"\n' \
             $PORT $QUEUE >"$WORK/rmqtt.toml"
           (cd "$WORK" && exec taskset -c "$BROKER_CPUS" "$RMQTTD" -f "$WORK/rmqtt.toml" --id 1) >"$WORK/broker.log" 2>&1 & ;;
  esac
  BROKER_PID=$!
}

# utime and stime of the broker, in clock ticks (fields 14 and 15, counted after the
# command name's closing parenthesis, which may hold spaces): user space and kernel apart,
# since both brokers pay the kernel's TCP work on the same bytes.
broker_cpu_ticks() {
  sed 's/.*) //' "/proc/$BROKER_PID/stat" 2>/dev/null | awk '{print $12, $13}' || echo 0 0
}

run() { # name broker loadgen-args...
  local name=$1 broker=$2; shift 2
  start_broker "$broker"
  local ticks_before ticks_after
  ticks_before=$(broker_cpu_ticks)
  taskset -c "$CLIENT_CPUS" "$LOADGEN" --port $PORT --json --cores "$CLIENT_CORES" \
    --duration-s "$SECONDS_PER_RUN" --warmup-s 1 --drain-s "${DRAIN_S:-10}" "$@" >"$WORK/$name.$broker.json" 2>"$WORK/$name.$broker.err" || true
  # The broker's CPU time (all threads) while loadgen ran, connecting and draining
  # included: deliveries per broker CPU-second compares brokers that a closed loop leaves
  # below 100% of their core, where deliveries/s alone would measure the loop.
  ticks_after=$(broker_cpu_ticks)
  # One line: user ticks, kernel ticks.
  echo "$ticks_before $ticks_after" | awk '{print $3 - $1, $4 - $2}' >"$WORK/$name.$broker.cpu_ticks"
  kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true
}

case "$MATRIX" in
  dev) SCENARIOS=(
    "fanout-1x100-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0"
    "fanout-1x100-qos1|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1"
    "fanout-1x100-qos2|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 2 --qos-sub 2"
    "p2p-100-qos1|--scenario p2p --publishers 100 --qos-pub 1 --qos-sub 1"
    "fixed-1k-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0 --rate 1000"
    "fixed-1k-qos1|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1 --rate 1000"
  ) ;;
  scale) SCENARIOS=(
    "fanout-1x100-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0"
    "fanout-4x1000-qos1|--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1"
    "p2p-1000-qos1|--scenario p2p --publishers 1000 --qos-pub 1 --qos-sub 1"
  ) ;;
  flashmq) SCENARIOS=(
    "fanout-1x100-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0"
    "fanout-1x100-qos1|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1"
    "fanout-1x100-qos2|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 2 --qos-sub 2"
    "p2p-100-qos1|--scenario p2p --publishers 100 --qos-pub 1 --qos-sub 1"
    "fanout-4x1000-qos1|--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1"
    "fixed-1k-qos1|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 1 --qos-sub 1 --rate 1000"
  ) ;;
  # A third field limits a scenario to the brokers it names.
  scale-rates) SCENARIOS=(
    "fanout-1x100-qos0|--scenario fanout --publishers 1 --subscribers 100 --qos-pub 0 --qos-sub 0"
    "fanout-4x1000-qos1-at0.5M|--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1 --rate 500|mosquitto rmqtt"
    "fanout-4x1000-qos1-at2M|--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1 --rate 2000|ringmq ringmq-cpu"
    "fanout-4x1000-qos1-at4M|--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1 --rate 4000|ringmq ringmq-cpu"
    "fanout-4x1000-qos1-at6M|--scenario fanout --publishers 4 --subscribers 1000 --qos-pub 1 --qos-sub 1 --rate 6000|ringmq ringmq-cpu"
    "p2p-1000-qos1|--scenario p2p --publishers 1000 --qos-pub 1 --qos-sub 1|ringmq ringmq-cpu"
  ) ;;
  *) echo "MATRIX is dev, scale, scale-rates or flashmq" >&2; exit 2 ;;
esac
echo "broker CPUs $BROKER_CPUS ($SHARDS), loadgen CPUs $CLIENT_CPUS, $SECONDS_PER_RUN s per run, $(date -u +%F), $(nproc) CPUs, $(uname -r)"
for entry in "${SCENARIOS[@]}"; do
  IFS='|' read -r name args only <<<"$entry"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  for broker in $BROKERS; do
    # ringmq-1 is the single-shard baseline for the scaling ratio: max-rate fan-out only.
    if [ "$broker" = ringmq-1 ] && [[ "$name" != fanout-1x100-qos0 ]]; then continue; fi
    if [ -n "$only" ] && [[ " $only " != *" $broker "* ]]; then continue; fi
    # shellcheck disable=SC2086
    run "$name" "$broker" $args
  done
done
python3 - "$WORK" "$BROKERS" "$(getconf CLK_TCK)" "${SCENARIOS[@]}" <<'PY'
import os, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "tuning")
import broker_runs
work, brokers, ticks_per_s, entries = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4:]
def load(name, broker):
    return broker_runs.load(work, name, broker, ticks_per_s)
def per_cpu(r):
    return f"{r['per_cpu_s'] / 1e6:.2f} M" if r.get("per_cpu_s") else ""
def split(r):
    return f"{r['user_ns']:.0f} / {r['kernel_ns']:.0f}" if r.get("user_ns") is not None else ""
print("| scenario | broker | deliveries/s | per broker CPU-s | broker ns per delivery, user / kernel | lost | dup | p50 us | p99 us | p99.9 us | client CPU | vs mosquitto | vs flashmq | per CPU-s vs flashmq |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for entry in entries:
    name = entry.split("|")[0]
    if os.environ.get("ONLY") and name not in os.environ["ONLY"].split():
        continue
    only = entry.split("|")[2].split() if entry.count("|") >= 2 else brokers
    rows = {b: load(name, b) for b in brokers if b in only}
    base = rows.get("mosquitto")
    flash = rows.get("flashmq")
    for broker, r in rows.items():
        if r is None:
            if broker != "ringmq-1" or name.startswith("fanout-1x100-qos0"):
                print(f"| {name} | {broker} | (no result) | | | | | | | | | | | |")
            continue
        lat = r.get("latency_us") or {}
        ratio = ""
        if broker != "mosquitto" and base:
            if "fixed" in name:
                m = (base.get("latency_us") or {}).get("p99")
                ratio = f"p99 {m / lat['p99']:.2f}x lower" if m and lat.get("p99") else ""
            elif base["deliveries_per_s"] > 0:
                ratio = f"{r['deliveries_per_s'] / base['deliveries_per_s']:.2f}x"
        if broker.startswith("ringmq") and broker != "ringmq-1" and rows.get("ringmq-1") and rows["ringmq-1"]["deliveries_per_s"] > 0:
            ratio += f" ({r['deliveries_per_s'] / rows['ringmq-1']['deliveries_per_s']:.2f}x 1 shard)"
        versus_flash = ""
        if flash and broker not in ("flashmq", "mosquitto"):
            if "fixed" in name:
                f = (flash.get("latency_us") or {}).get("p99")
                versus_flash = f"p99 {f / lat['p99']:.2f}x lower" if f and lat.get("p99") else ""
            elif flash["deliveries_per_s"] > 0:
                versus_flash = f"{r['deliveries_per_s'] / flash['deliveries_per_s']:.2f}x"
        efficiency = ""
        if flash and broker not in ("flashmq", "mosquitto") and "fixed" not in name and r.get("per_cpu_s") and flash.get("per_cpu_s"):
            efficiency = f"{r['per_cpu_s'] / flash['per_cpu_s']:.2f}x"
        sat = " (saturated)" if r["client_saturated"] else ""
        print(f"| {name} | {broker} | {r['deliveries_per_s']:.0f} | {per_cpu(r)} | {split(r)} | {r['counts']['lost']} | {r['counts']['duplicated']} | "
              f"{lat.get('p50','')} | {lat.get('p99','')} | {lat.get('p99_9','')} | {100*r['client_cpu_fraction']:.0f}%{sat} | {ratio} | {versus_flash} | {efficiency} |")
PY
