#!/usr/bin/env bash
# The many-core runs (issues #14 and #15) on a lent machine that has nothing installed but
# Python, in two steps:
#
#   tuning/device-bench.sh prepare          here: release builds, then stripped copies of
#                                           ringmq, loadgen, FlashMQ (tuning/build-flashmq.sh
#                                           first), Mosquitto and nats-server, with the shared
#                                           libraries they need beyond the C library, in
#                                           .carry/ (ignored by git);
#   tuning/device-bench.sh run OUT [PARTS]  there, with .carry carried: tables (and a tarball
#                                           of every loadgen report and broker log) in OUT.
#
# PARTS (default "matrix scaling cluster"), each a table in OUT:
#   matrix   8 broker CPUs (0-7) for ringmq (--cores 8), FlashMQ (8 threads) and Mosquitto,
#            loadgen on CPUs 8-15: compare.sh's MATRIX=flashmq rows;
#   scaling  ringmq and FlashMQ on 1, 2 and 4 CPUs (8 is in matrix), fan-out 1 -> 100
#            QoS 1, p2p 100 pairs QoS 1, fan-out 4 -> 1,000 QoS 1;
#   cluster  tuning/cluster-scale.sh: 4 single-CPU nodes on CPUs 0-3, 3 nats-server on 4-7;
#   window   ringmq's --inflight-max at each of WINDOWS ("64 256 1024") beside FlashMQ, on 1
#            and on 8 CPUs: fan-out 1 -> 100 QoS 1/2, p2p 100 pairs, fan-out 4 -> 1,000.
# Env: SECONDS_PER_RUN (5); WINDOWS; WINDOW_FLASHMQ=0 leaves FlashMQ out of `window` (when
#      `matrix` ran it on the same CPUs in the same lease); the CPU sets, for a trial run on
#      a smaller machine: BROKER_SET (0-7), CLIENT_SET (8-15), SCALING_SETS ("0 0-1 0-3"),
#      NODE_SETS ("0 1 2 3"), NATS_SET (4-7).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.carry

prepare() {
  cargo build --release --bin ringmq --bin loadgen
  local flashmq
  flashmq=$(tuning/build-flashmq.sh)
  rm -rf "$CARRY" && mkdir -p "$CARRY/bin" "$CARRY/lib"
  for binary in target/release/ringmq target/release/loadgen "$flashmq" "$(command -v mosquitto)" "$(command -v nats-server)"; do
    strip -o "$CARRY/bin/$(basename "$binary").real" "$binary" 2>/dev/null || cp "$binary" "$CARRY/bin/$(basename "$binary").real"
    # The C library is the machine's own (a newer one runs these); everything else comes along.
    ldd "$binary" | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*)\.so' |
      while read -r library; do cp -L -n "$library" "$CARRY/lib/"; done || true
    # A wrapper by the plain name: the library path for this binary alone, then exec (the
    # PID a script starts stays the broker's, for its CPU time and for kill).
    printf '#!/bin/sh\nLD_LIBRARY_PATH="$(dirname "$0")/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$0.real" "$@"\n' \
      >"$CARRY/bin/$(basename "$binary")"
    chmod +x "$CARRY/bin/$(basename "$binary")"
  done
  du -sh "$CARRY"
}

# Listens within 5 s, or its log is shown and the run stops: a broker that cannot start
# there (io_uring refused, a missing library) must not cost the rest of the lease.
preflight() { # name port command...
  local name=$1 port=$2
  shift 2
  "$@" >"$WORK/preflight-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "preflight: $name listens"; kill "$pid"; wait "$pid" 2>/dev/null || true; return 0
    fi
    sleep 0.1
  done
  echo "preflight: $name did not start:"; cat "$WORK/preflight-$name.log"; kill "$pid" 2>/dev/null || true
  return 1
}

run_parts() {
  local out=$1 parts=${2:-matrix scaling cluster}
  local seconds=${SECONDS_PER_RUN:-5}
  local broker_set=${BROKER_SET:-0-7} client_set=${CLIENT_SET:-8-15}
  mkdir -p "$out"
  WORK=$(mktemp -d)
  ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  export BIN_DIR=$CARRY/bin MOSQUITTO=$CARRY/bin/mosquitto FLASHMQ=$CARRY/bin/flashmq DRAIN_S=3
  {
    echo "$(date -u '+%F %T') $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)," \
      "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), open files $(ulimit -n), locked memory $(ulimit -l)"
    printf 'flashmq.conf-less start: '; "$FLASHMQ" --version 2>&1 | head -1 || true
    "$BIN_DIR/ringmq" --version
  } | tee "$out/machine.txt"
  printf 'listener 21883 127.0.0.1\nallow_anonymous true\nuser root\n' >"$WORK/m.conf"
  printf 'thread_count 2\nallow_anonymous true\nlisten {\n  protocol mqtt\n  port 21884\n  inet_protocol ip4\n  inet4_bind_address 127.0.0.1\n}\n' >"$WORK/f.conf"
  {
    preflight ringmq 21885 "$BIN_DIR/ringmq" --listen 127.0.0.1:21885 --cores "$(echo "$broker_set" | awk -F- '{print ($2 == "" ? 1 : $2 - $1 + 1)}')" --log warn
    preflight flashmq 21884 "$FLASHMQ" --config-file "$WORK/f.conf" || true
    preflight mosquitto 21883 "$MOSQUITTO" -c "$WORK/m.conf" || true
  } 2>&1 | tee -a "$out/machine.txt"
  grep -q "ringmq listens" "$out/machine.txt" || exit 3
  for part in $parts; do
    echo "== $part $(date -u +%T)"
    case "$part" in
      matrix)
        OUT_DIR=$WORK/matrix BROKER_CPUS=$broker_set CLIENT_CPUS=$client_set MATRIX=flashmq tuning/compare.sh "$seconds" 2>&1 | tee "$out/matrix.md" ;;
      scaling)
        for cpus in ${SCALING_SETS:-0 0-1 0-3}; do
          OUT_DIR=$WORK/scaling-$cpus BROKER_CPUS=$cpus CLIENT_CPUS=$client_set MATRIX=flashmq BROKERS="flashmq ringmq" \
            ONLY="fanout-1x100-qos1 p2p-100-qos1 fanout-4x1000-qos1" tuning/compare.sh "$seconds" 2>&1
        done | tee "$out/scaling.md" ;;
      cluster)
        OUT_DIR=$WORK/cluster NODES=4 NODE_CPUS=${NODE_SETS:-0 1 2 3} NATS_CPUS=${NATS_SET:-4-7} CLIENT_CPUS=$client_set \
          tuning/cluster-scale.sh "$seconds" 2>&1 | tee "$out/cluster.md" ;;
      window)
        for cpus in 0 $broker_set; do
          [ "${WINDOW_FLASHMQ:-1}" = 0 ] ||
          OUT_DIR=$WORK/window-$cpus-flashmq BROKER_CPUS=$cpus CLIENT_CPUS=$client_set MATRIX=flashmq BROKERS=flashmq \
            ONLY="fanout-1x100-qos1 fanout-1x100-qos2 p2p-100-qos1 fanout-4x1000-qos1" tuning/compare.sh "$seconds" 2>&1
          for window in ${WINDOWS:-64 256 1024}; do
            echo "ringmq --inflight-max $window"
            OUT_DIR=$WORK/window-$cpus-$window BROKER_CPUS=$cpus CLIENT_CPUS=$client_set MATRIX=flashmq BROKERS=ringmq \
              RINGMQ_FLAGS="--inflight-max $window" ONLY="fanout-1x100-qos1 fanout-1x100-qos2 p2p-100-qos1 fanout-4x1000-qos1" \
              tuning/compare.sh "$seconds" 2>&1
          done
        done | tee "$out/window.md" ;;
      *) echo "unknown part $part" ;;
    esac
  done
  tar -czf "$out/reports.tgz" --exclude='nats[0-9]' -C "$WORK" .
  echo "== done $(date -u +%T)"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run_parts "${2:?run OUT [PARTS]}" "${3:-}" ;;
  *) echo "usage: $0 prepare | run OUT [PARTS]" >&2; exit 2 ;;
esac
