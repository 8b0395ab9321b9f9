#!/usr/bin/env bash
# mcr profile workload for fixtures/forkd (master + pre-forked workers):
#   mcr profile --workload 'scripts/workloads/forkd.sh PORT' -- forkd --port PORT --workers 2
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: forkd.sh PORT}
for round in 1 2 3; do
  for i in $(seq 1 60); do once "$PORT" "PING" "VERSION"; done
  sleep 0.2
done
profile_done
