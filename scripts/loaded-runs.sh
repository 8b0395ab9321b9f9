#!/usr/bin/env bash
# The loaded-run proof (issue 10): the full suite RUNS times in a row while another full
# suite runs beside it, each in a clone of its own (its own target/), one line per run.
#   scripts/loaded-runs.sh [RUNS] [DIR]    # default 10 runs, clones under /tmp/mcr-loaded
# Prints the log of the measured clone; the other clone only makes load, and stops when
# the measured one is done. Every loop is bounded by RUNS.
set -euo pipefail
if [ "${1:-}" = --loop ]; then # --loop CLONE RUNS LOG: one clone's runs
  for i in $(seq 1 "$3"); do
    s=$(date +%s)
    rc=0
    (cd "$2" && ./scripts/test.sh) > "$4.run$i.out" 2>&1 || rc=$?
    echo "$(date -u +%H:%M:%S) run $i rc=$rc secs=$(( $(date +%s) - s )) $(grep -E '^test .*FAILED' "$4.run$i.out" | head -3 | tr '\n' ' ')" >> "$4"
  done
  exit 0
fi
runs=${1:-10}
dir=${2:-/tmp/mcr-loaded}
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$dir"
for c in measured load; do
  [ -d "$dir/$c/.git" ] || git clone -q "$repo" "$dir/$c"
  git -C "$dir/$c" pull -q "$repo" HEAD
done
# The suite finds ../shared beside the checkout, as in CI.
[ -e "$dir/shared" ] || ln -s "$repo/../shared" "$dir/shared"
: > "$dir/measured.log"
: > "$dir/load.log"
setsid "$0" --loop "$dir/load" $((runs * 2)) "$dir/load.log" &
load=$!
"$0" --loop "$dir/measured" "$runs" "$dir/measured.log"
kill -- "-$load" 2>/dev/null || true
cat "$dir/measured.log"
! grep -q "rc=[1-9]" "$dir/measured.log"
