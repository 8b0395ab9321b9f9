#!/usr/bin/env bash
# mcr profile workload for fixtures/kvd (epoll, one thread):
#   mcr profile --workload 'scripts/workloads/kvd.sh PORT' -- kvd --port PORT
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: kvd.sh PORT}
session "$PORT"; idle=$SESSION
session "$PORT"; busy=$SESSION
for i in $(seq 1 150); do
  once "$PORT" "SET k$i v$i" "GET k$i"
  ask "$busy" "GET k$i"
done
for i in $(seq 1 50); do once "$PORT" "DEL k$i"; done
ask "$idle" "PING"
profile_done
