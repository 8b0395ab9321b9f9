#!/usr/bin/env bash
# Steady-state cost of dirty tracking: kvd under mcr with tracking on (B) against kvd
# under mcr with MCR_DIRTY_TRACKING=off (A), the same mcr-bench kvd-ab interleaved load
# as bench/run.sh, plus the cost of one first write to a tracked page.
#
# Usage: bench/dirty.sh [ROUNDS] [PAIRS]     (default 3 rounds x 8 pairs of 0.25 s)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3} PAIRS=${2:-8}
cargo build --release -q -p mcr-cli -p mcr-runtime -p mcr-bench -p mcr-dirty --examples
make -s -C fixtures OUT="$ROOT/target/fixtures" >/dev/null
MCR=$ROOT/target/release/mcr BENCH=$ROOT/target/release/mcr-bench KVD=$ROOT/target/fixtures/kvd
export MCR_RUNTIME_DIR=$(mktemp -d /tmp/mcr-dirty-bench.XXXXXX)
trap '"$MCR" stop off >/dev/null 2>&1 || true; "$MCR" stop on >/dev/null 2>&1 || true; rm -rf "$MCR_RUNTIME_DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RAW=$MCR_RUNTIME_DIR/ab.txt
for r in $(seq 1 "$ROUNDS"); do
  pa=$(port) pb=$(port)
  MCR_DIRTY_TRACKING=off "$MCR" run --detach --name off -- "$KVD" --port "$pa" >/dev/null
  "$MCR" run --detach --name on -- "$KVD" --port "$pb" >/dev/null
  "$BENCH" wait-port --port "$pa" --timeout 10 && "$BENCH" wait-port --port "$pb" --timeout 10
  "$BENCH" kvd-ab --port-a "$pa" --port-b "$pb" --pairs "$PAIRS" --slice 0.25 --conns 8 --depth 16 \
    --warmup 0.5 --keys 100000 2>/dev/null >>"$RAW"
  "$MCR" ctl on dirty | tail -n 1 | sed "s/^ */round $r, tracked kvd after load: /"
  "$MCR" stop off >/dev/null; "$MCR" stop on >/dev/null
done
grep -v '^cpu' "$RAW" | python3 -c '
import sys, statistics
p = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
r = sorted(b / a for a, b in p)
print("kvd throughput, tracking on / off: median %.4f (min %.4f, max %.4f) over %d pairs; mean req/s off %.0f, on %.0f"
      % (statistics.median(r), r[0], r[-1], len(r), statistics.mean(a for a, _ in p), statistics.mean(b for _, b in p)))'
"$ROOT/target/release/examples/fault_cost"
