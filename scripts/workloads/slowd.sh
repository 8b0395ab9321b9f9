#!/usr/bin/env bash
# mcr profile workload for fixtures/slowd: fast clients, idle gaps, and slow
# clients that trickle their request a byte at a time (a worker then waits
# in read() in the middle of a request).
#   mcr profile --workload 'scripts/workloads/slowd.sh PORT' -- slowd --port PORT --threads 2
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: slowd.sh PORT}
slow() {
  local fd
  exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
  for c in P I N G; do printf '%s' "$c" >&"$fd"; sleep 0.1; done
  printf '\n' >&"$fd"
  IFS= read -r -t 5 REPLY <&"$fd"
  exec {fd}>&-
}
for round in 1 2 3; do
  for i in $(seq 1 20); do once "$PORT" "PING"; done
  slow &
  slow
  wait
  sleep 0.3   # idle: both workers wait for connections
done
profile_done
