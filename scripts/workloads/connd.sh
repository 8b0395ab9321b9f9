#!/usr/bin/env bash
# mcr profile workload for fixtures/connd (a process per connection): short
# sessions, then two sessions left open at the end, so the per-connection
# process class is long-lived (a session can be open at update time).
#   mcr profile --workload 'scripts/workloads/connd.sh PORT' -- connd --port PORT
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: connd.sh PORT}
for i in $(seq 1 40); do once "$PORT" "SET a $i" "GET a" "QUIT"; done
session "$PORT"; s1=$SESSION
session "$PORT"; s2=$SESSION
ask "$s1" "SET who one"
ask "$s2" "SET who two"
sleep 0.3   # the sessions sit idle, as a client between commands
ask "$s1" "GET who"
profile_done
