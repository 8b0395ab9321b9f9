#!/usr/bin/env bash
# mcr profile workload for nginx (conf from scripts/nginx/conf.sh): requests
# on fresh connections, keep-alive connections left open at the end.
#   mcr profile --workload 'scripts/workloads/nginx.sh PORT' -- nginx -p PREFIX -c CONF
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: nginx.sh PORT}
get() { http_get "$PORT" "$1"; }
for round in 1 2 3; do
  for i in $(seq 1 40); do get /status; get /; done
  sleep 0.2
done
session "$PORT"; k1=$SESSION
session "$PORT"; k2=$SESSION
printf 'GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n' >&"$k1"
printf 'GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n' >&"$k2"
sleep 0.2
profile_done
