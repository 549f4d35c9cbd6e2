#!/usr/bin/env bash
# MQTT over WebSocket from a real browser: MQTT.js in headless Chromium talks to the broker over
# ws:// and wss:// (self-signed certificate made here). See README.md.
#
# Usage: tests/browser/run.sh [ringmq|mosquitto]     (or BROKER=...; default ringmq)
#   ringmq:    ${RINGMQ_BIN:-target/release/ringmq}, relative to the repository root
#   mosquitto: ${MOSQUITTO:-mosquitto}, for checking the harness itself against another broker
# Exit: 0 passed, 1 failed, 77 skipped (node, npm, Chromium or openssl missing).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
broker="${1:-${BROKER:-ringmq}}"

fail() { echo "browser test FAILED: $*" >&2; exit 1; }

# Missing tools are a skip, not a failure, so machines without a browser can still run CI; the
# line says exactly what to install.
missing=()
command -v node >/dev/null || missing+=(node)
command -v npm >/dev/null || missing+=(npm)
command -v openssl >/dev/null || missing+=(openssl)
chromium="${CHROMIUM:-}"
if [[ -n $chromium ]]; then
  chromium="$(command -v "$chromium" || true)"
  [[ -n $chromium ]] || missing+=("\$CHROMIUM (${CHROMIUM}: not an executable)")
else
  chromium="$(command -v chromium || command -v chromium-browser || true)"
  [[ -n $chromium ]] || missing+=("chromium (apt-get install chromium, or set CHROMIUM)")
fi
if ((${#missing[@]})); then
  echo "browser test SKIPPED: missing ${missing[*]}"
  exit 77
fi

case "$broker" in
  ringmq)
    broker_bin="${RINGMQ_BIN:-target/release/ringmq}"
    [[ $broker_bin == /* ]] || broker_bin="$root/$broker_bin"
    [[ -x $broker_bin ]] || fail "no broker binary at $broker_bin (cargo build --release, or set RINGMQ_BIN)"
    default_timeout_s=60
    ;;
  mosquitto)
    broker_bin="$(command -v "${MOSQUITTO:-mosquitto}" || command -v /usr/sbin/mosquitto || true)"
    [[ -n $broker_bin ]] || fail "mosquitto not found (set MOSQUITTO)"
    # Mosquitto 2.0.11's libwebsockets sends a 200 KiB message to the browser in about 5 s
    # (8 s over wss), so the harness needs more time against it than against ringmq.
    default_timeout_s=120
    ;;
  *) fail "unknown broker '$broker' (ringmq or mosquitto)" ;;
esac
total_s="${BROWSER_TEST_TIMEOUT:-$default_timeout_s}"

# Reinstall only when the lock file changed: npm ci wipes node_modules and fetches everything.
# PUPPETEER_SKIP_DOWNLOAD: the system Chromium is the one under test, and only package
# registries are reachable.
if ! cmp -s "$here/package-lock.json" "$here/node_modules/.installed-package-lock.json"; then
  echo "browser test: npm ci in $here"
  (cd "$here" && PUPPETEER_SKIP_DOWNLOAD=1 timeout 300 npm ci --no-audit --no-fund --loglevel=error) \
    || fail "npm ci failed"
  cp "$here/package-lock.json" "$here/node_modules/.installed-package-lock.json"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ringmq-browser.XXXXXX")"
broker_pid=""
cleanup() {
  if [[ -n $broker_pid ]]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

broker_log() {
  echo "--- broker log ($broker) ---" >&2
  tail -n 40 "$tmp/broker.log" >&2 || true
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>"$tmp/openssl.log" \
  || { cat "$tmp/openssl.log" >&2; fail "could not make the test certificate"; }

# The kernel picks free loopback ports, all held until all are known so they differ. The third
# is only for mosquitto, which refuses to start with websockets listeners alone.
read -r ws_port wss_port mqtt_port < <(node -e '
  const net = require("node:net");
  const servers = [0, 1, 2].map(() => net.createServer());
  Promise.all(servers.map((s) => new Promise((ok) => s.listen(0, "127.0.0.1", ok)))).then(() => {
    console.log(servers.map((s) => s.address().port).join(" "));
    servers.forEach((s) => s.close());
  });')
[[ -n ${mqtt_port:-} ]] || fail "could not pick free ports"

case "$broker" in
  ringmq)
    "$broker_bin" --cores 2 \
      --listener "ws://127.0.0.1:$ws_port/mqtt" --listener "wss://127.0.0.1:$wss_port/mqtt" \
      --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" >"$tmp/broker.log" 2>&1 &
    broker_pid=$!
    ;;
  mosquitto)
    # user: as root mosquitto otherwise drops to the 'mosquitto' user, who cannot read the key
    # in this private temp dir. socket_domain ipv4: without it libwebsockets binds [::], not
    # just loopback.
    cat >"$tmp/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
user $(id -un)
log_dest stderr
listener $mqtt_port 127.0.0.1
listener $ws_port 127.0.0.1
socket_domain ipv4
protocol websockets
listener $wss_port 127.0.0.1
socket_domain ipv4
protocol websockets
certfile $tmp/cert.pem
keyfile $tmp/key.pem
EOF
    "$broker_bin" -c "$tmp/mosquitto.conf" >"$tmp/broker.log" 2>&1 &
    broker_pid=$!
    ;;
esac

# Ready when both ports accept a TCP connection; bounded, and stops early if the broker exits.
ready=""
for _ in $(seq 100); do
  kill -0 "$broker_pid" 2>/dev/null || { broker_log; fail "broker exited during startup"; }
  if (exec 3<>"/dev/tcp/127.0.0.1/$ws_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$wss_port") 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ -n $ready ]] || { broker_log; fail "broker did not listen on 127.0.0.1:$ws_port and :$wss_port within 10 s"; }
kill -0 "$broker_pid" 2>/dev/null || { broker_log; fail "broker exited during startup"; }

echo "browser test: $broker ($broker_bin) on ws://127.0.0.1:$ws_port/mqtt and wss://127.0.0.1:$wss_port/mqtt; $("$chromium" --version 2>/dev/null || echo "$chromium")"
status=0
BROWSER_TEST_TIMEOUT_MS=$((total_s * 1000)) timeout -k 5 $((total_s + 10)) \
  node "$here/driver.js" "$chromium" "ws://127.0.0.1:$ws_port/mqtt" "wss://127.0.0.1:$wss_port/mqtt" || status=$?
if ((status != 0)); then
  ((status == 124 || status == 137)) && echo "browser test FAILED: driver killed after $((total_s + 10)) s" >&2
  broker_log
  exit 1
fi
kill -0 "$broker_pid" 2>/dev/null || { broker_log; fail "broker died during the test"; }
echo "browser test PASSED ($broker)"
