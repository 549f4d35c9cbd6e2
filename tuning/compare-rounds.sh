#!/usr/bin/env bash
# Runs tuning/compare.sh several times, the brokers' order reversed every other round, and
# prints each scenario's ratio of ringmq to a peer per round with the median: on a shared
# or virtual machine one round's ratio can differ from the next by 20-40%, so a single ratio
# says little, and alternating cancels a drift that favours whoever runs first.
#
# Usage: tuning/compare-rounds.sh ROUNDS [seconds per run]
# Env:   everything compare.sh reads (MATRIX, ONLY, BROKER_CPUS, CLIENT_CPUS, ...);
#        PEER     the broker ringmq is divided by (default flashmq),
#        BROKERS  default "PEER ringmq",
#        OUT_DIR  keep every round's loadgen reports here (round-N/ below it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:?usage: tuning/compare-rounds.sh ROUNDS [seconds per run]}
SECONDS_PER_RUN=${2:-5}
PEER=${PEER:-flashmq}
BROKERS=${BROKERS:-$PEER ringmq}
KEEP=${OUT_DIR:-}
WORK=${KEEP:-$(mktemp -d)}
mkdir -p "$WORK"
[ -n "$KEEP" ] || trap 'rm -rf "$WORK"' EXIT
# Built once here, so that no round builds while another broker is measured.
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bin ringmq --bin loadgen >/dev/null 2>&1
  BIN_DIR=$(pwd)/target/release
fi
export BIN_DIR
reversed() { local out="" word; for word in $1; do out="$word${out:+ $out}"; done; echo "$out"; }
for round in $(seq "$ROUNDS"); do
  order=$BROKERS
  [ $((round % 2)) = 1 ] || order=$(reversed "$BROKERS")
  echo "round $round of $ROUNDS: $order" >&2
  OUT_DIR="$WORK/round-$round" BROKERS="$order" tuning/compare.sh "$SECONDS_PER_RUN" >"$WORK/round-$round.md"
done
head -1 "$WORK/round-1.md"
python3 - "$WORK" "$ROUNDS" "$PEER" "$(getconf CLK_TCK)" <<'PY'
import glob, os, statistics, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "tuning")
import broker_runs
work, rounds, peer, ticks_per_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def load(round_, name, broker):
    report = broker_runs.load(f"{work}/round-{round_}", name, broker, ticks_per_s)
    if report is None:
        return None
    return {
        "rate": report["deliveries_per_s"],
        "per_cpu_s": report["per_cpu_s"],
        "lost": report["counts"]["lost"],
        "p99": (report.get("latency_us") or {}).get("p99"),
    }
names = sorted({os.path.basename(p).split(".")[0] for p in glob.glob(f"{work}/round-1/*.ringmq.json")})
def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "", ""
    return " ".join(f"{v:.2f}" for v in values), f"{statistics.median(values):.2f}x"
print(f"| scenario | ringmq / {peer}, deliveries/s, each round | median | per broker CPU-s, each round | median | lost (ringmq, {peer}) |")
print("|---|---|---|---|---|---|")
for name in names:
    pairs = [(load(r, name, "ringmq"), load(r, name, peer)) for r in range(1, rounds + 1)]
    pairs = [(ours, theirs) for ours, theirs in pairs if ours and theirs]
    if "fixed" in name:
        # Fixed offered load: the rates match by design; the latency is the comparison.
        rates = [theirs["p99"] / ours["p99"] if ours["p99"] and theirs["p99"] else None for ours, theirs in pairs]
        each, median = cell(rates)
        print(f"| {name} (p99 {peer} / ringmq) | {each} | {median} | | | |")
        continue
    each_rate, median_rate = cell([ours["rate"] / theirs["rate"] if theirs["rate"] > 0 else None for ours, theirs in pairs])
    each_cpu, median_cpu = cell([ours["per_cpu_s"] / theirs["per_cpu_s"] if ours["per_cpu_s"] and theirs["per_cpu_s"] else None for ours, theirs in pairs])
    lost = f"{sum(o['lost'] for o, _ in pairs)}, {sum(t['lost'] for _, t in pairs)}"
    print(f"| {name} | {each_rate} | {median_rate} | {each_cpu} | {median_cpu} | {lost} |")
PY
