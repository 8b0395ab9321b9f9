#!/usr/bin/env bash
# mcr profile workload for Apache httpd (conf as crates/cli/tests/support's httpd_conf):
# requests on fresh connections, keep-alive connections left open at the end.
#   mcr profile --workload 'scripts/workloads/httpd.sh PORT' -- httpd -f CONF -DFOREGROUND
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: httpd.sh PORT}
get() { http_get "$PORT" "$1"; }
for round in 1 2 3; do
  for i in $(seq 1 30); do get /index.html; done
  sleep 0.2
done
session "$PORT"; k1=$SESSION
printf 'GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n' >&"$k1"
sleep 0.2
profile_done
