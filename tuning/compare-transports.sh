#!/usr/bin/env bash
# ringmq against Mosquitto over TLS and WebSocket: the same loadgen runs against each
# broker in turn (broker pinned to BROKER_CPUS, loadgen to CLIENT_CPUS), the same
# certificate (made here with openssl: RSA 2048, or ECDSA P-256 with KEY=ec), ROUNDS
# rounds, and a table of the ratios measured in this run.
#
# Usage: tuning/compare-transports.sh [seconds per run]
# Env:   BROKER_CPUS (default 0; ringmq gets one shard per CPU), CLIENT_CPUS (default 1),
#        ROUNDS (default 2), KEY (rsa, the default, or ec), ONLY (scenario names), MOSQUITTO (binary), OUT_DIR (keep the
#        JSON reports), RINGMQ_FLAGS (extra flags: name them with results).
# Needs: mosquitto (Debian's, built with websockets), openssl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
BROKER_CPUS=${BROKER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
ROUNDS=${ROUNDS:-2}
case "${KEY:-rsa}" in
  rsa) NEWKEY=(-newkey rsa:2048) ;;
  ec) NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
  *) echo "KEY must be rsa or ec" >&2; exit 2 ;;
esac
MOSQUITTO=${MOSQUITTO:-mosquitto}
SHARDS=$(echo "$BROKER_CPUS" | awk -F, '{n=0; for (i=1;i<=NF;i++) { split($i,r,"-"); n += (r[2]=="" ? 1 : r[2]-r[1]+1) } print n}')
cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
RINGMQ=./target/release/ringmq; LOADGEN=./target/release/loadgen
WORK=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${OUT_DIR:-}" ] || rm -rf "$WORK"' EXIT

# A CA and a certificate for 127.0.0.1 signed by it (rustls refuses a self-signed CA as a leaf).
openssl req -x509 "${NEWKEY[@]}" -nodes -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 2 -subj "/CN=bench ca" 2>/dev/null
openssl req "${NEWKEY[@]}" -nodes -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -out "$WORK/cert.pem" -days 2 -extfile "$WORK/ext.cnf" 2>/dev/null

start_broker() { # name: listens on $PORT (TLS) and $((PORT+1)) (WebSocket, /mqtt)
  PORT=$((20000 + RANDOM % 20000))   # fresh ports: mosquitto cannot rebind one in TIME_WAIT
  case "$1" in
    ringmq) # shellcheck disable=SC2086
            taskset -c "$BROKER_CPUS" "$RINGMQ" --cores "$SHARDS" --log warn --sys-interval-s 0 \
              --listener "mqtts://127.0.0.1:$PORT" --listener "ws://127.0.0.1:$((PORT + 1))/mqtt" \
              --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" ${RINGMQ_FLAGS:-} >"$WORK/broker.log" 2>&1 & ;;
    mosquitto) # Queues large enough not to shed (its default drops QoS 1 under a fast publisher).
            printf 'user root\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 32\nlistener %s 127.0.0.1\ncertfile %s\nkeyfile %s\nlistener %s 127.0.0.1\nprotocol websockets\n' \
              $PORT "$WORK/cert.pem" "$WORK/key.pem" $((PORT + 1)) >"$WORK/m.conf"
            taskset -c "$BROKER_CPUS" "$MOSQUITTO" -c "$WORK/m.conf" >"$WORK/broker.log" 2>&1 & ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$((PORT + 1))) 2>/dev/null && break; sleep 0.1; done
}

stop_broker() { # SIGTERM, then SIGKILL: a backlogged Mosquitto can take minutes to exit
  kill "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
}

# name | transport (tls|ws) | loadgen flags
SCENARIOS=(
  "tls-fanout-q0|tls|--scenario fanout --subscribers 100 --qos-pub 0 --qos-sub 0"
  "tls-fanout-q1|tls|--scenario fanout --subscribers 100 --qos-pub 1 --qos-sub 1"
  "tls-storm|tls|--scenario conn-storm --connections 2000"
  "ws-fanout-q0|ws|--scenario fanout --subscribers 100 --qos-pub 0 --qos-sub 0"
  "ws-fanout-q1|ws|--scenario fanout --subscribers 100 --qos-pub 1 --qos-sub 1"
)

for round in $(seq "$ROUNDS"); do
  for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r name transport flags <<<"$entry"
    if [ -n "${ONLY:-}" ] && ! [[ " $ONLY " == *" $name "* ]]; then continue; fi
    for broker in mosquitto ringmq; do
      start_broker "$broker"
      case "$transport" in
        tls) target=(--port "$PORT" --tls --tls-ca "$WORK/ca.pem") ;;
        ws) target=(--ws "ws://127.0.0.1:$((PORT + 1))/mqtt") ;;
      esac
      # shellcheck disable=SC2086
      taskset -c "$CLIENT_CPUS" "$LOADGEN" "${target[@]}" $flags --duration-s "$SECONDS_PER_RUN" --drain-s 5 \
        --json >"$WORK/$name.$broker.$round.json" 2>"$WORK/$name.$broker.$round.err" || true
      stop_broker
      sleep 1
    done
  done
done

python3 - "$WORK" "$ROUNDS" "${SCENARIOS[@]}" <<'PY'
import json, os, sys
work, rounds, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip() or "null")
    except (OSError, ValueError):
        return None
def value(report):
    if report is None:
        return None, "no report"
    # loadgen's own CPU use: near 100% means the client, not the broker, set the pace.
    client = f"client CPU {100 * report['client_cpu_fraction']:.0f}%"
    if report["scenario"] == "conn-storm":
        return report["connects_per_s"], f"{report['connections_ok']} connected, {client}"
    return report["deliveries_per_s"], f"lost {report['counts']['lost']:,}, {client}"
print("| scenario | round | Mosquitto | ringmq | ratio |")
print("|---|---|---|---|---|")
for entry in scenarios:
    name = entry.split("|")[0]
    unit = "handshakes/s" if "storm" in name else "deliveries/s"
    for r in range(1, rounds + 1):
        cells, values = [], []
        for broker in ("mosquitto", "ringmq"):
            report = load(os.path.join(work, f"{name}.{broker}.{r}.json"))
            if report is None and not os.path.exists(os.path.join(work, f"{name}.{broker}.{r}.json")):
                cells = None
                break
            v, note = value(report)
            values.append(v)
            cells.append(f"{v:,.0f} {unit} ({note})" if v else f"- ({note})")
        if cells is None:
            continue
        ratio = f"{values[1] / values[0]:.1f}x" if all(values) else "-"
        print(f"| {name} | {r} | {cells[0]} | {cells[1]} | {ratio} |")
PY
