#!/usr/bin/env bash
# mcr profile workload for fixtures/poold (acceptor + worker pool):
#   mcr profile --workload 'scripts/workloads/poold.sh PORT' -- poold --port PORT --threads 3
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: poold.sh PORT}
for round in 1 2 3; do
  for i in $(seq 1 60); do once "$PORT" "INCR" "PING"; done
  sleep 0.2   # idle: workers wait for connections
done
profile_done
