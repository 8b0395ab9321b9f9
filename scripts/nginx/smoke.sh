#!/usr/bin/env bash
# Smoke test of a built nginx: scripts/nginx/smoke.sh [build.sh args...]
#
# Builds (or takes from the cache) nginx with scripts/nginx/build.sh, checks
# the binary (cc opts in nginx -V, .debug_info, dynamically linked), writes a
# config with conf.sh on a free loopback port, starts it (daemon on), curls /
# and /status, reloads with SIGHUP (new worker pids), runs wrk for 3 s if wrk
# is installed (MCR_SMOKE_WRK=0 to skip), and stops it with SIGQUIT.
# Prints "smoke: 1 passed, 0 failed" at the end on success.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

fail() { echo "smoke: FAIL: $*" >&2; echo "smoke: 0 passed, 1 failed"; exit 1; }

NGINX=$("$here/build.sh" "$@" | tail -n1)
[ -x "$NGINX" ] || fail "no binary at '$NGINX'"
echo "smoke: binary $NGINX"

"$NGINX" -V 2>&1 | grep -qF -- "-g -O2 -fno-omit-frame-pointer" || fail "cc opts missing from nginx -V"
readelf -S "$NGINX" | grep -q '\.debug_info' || fail "no .debug_info"
readelf -l "$NGINX" | grep -q 'Requesting program interpreter' || fail "not dynamically linked"
readelf -d "$NGINX" | grep -q NEEDED || fail "no NEEDED libraries"

PREFIX=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CONF=$("$here/conf.sh" "$PREFIX" "$PORT" | tail -n1)
PIDFILE=$PREFIX/logs/nginx.pid
master=
cleanup() {
  if [ -n "$master" ] && kill -0 "$master" 2>/dev/null; then kill -TERM "$master" 2>/dev/null || true; fi
  rm -rf "$PREFIX"
}
trap cleanup EXIT

"$NGINX" -p "$PREFIX" -c "$CONF" || fail "nginx did not start"
for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
master=$(cat "$PIDFILE")
echo "smoke: master $master on 127.0.0.1:$PORT"

workers() { pgrep -P "$master" | sort | tr '\n' ' '; }
wait_workers() { # wait for 2 workers different from $1
  local w
  for _ in $(seq 100); do
    w=$(workers)
    if [ "$(wc -w <<<"$w")" -eq 2 ] && [ "$w" != "$1" ]; then echo "$w"; return 0; fi
    sleep 0.1
  done
  return 1
}
before=$(wait_workers "") || fail "no 2 workers"

curl -fsS "http://127.0.0.1:$PORT/" | grep -q 'Hello from nginx' || fail "GET / failed"
[ "$(curl -fsS "http://127.0.0.1:$PORT/status")" = ok ] || fail "GET /status failed"

kill -HUP "$master"
after=$(wait_workers "$before") || fail "no new workers after SIGHUP"
echo "smoke: reload: workers $before-> $after"
[ "$(curl -fsS "http://127.0.0.1:$PORT/status")" = ok ] || fail "GET /status after reload failed"

if [ "${MCR_SMOKE_WRK:-1}" = 1 ] && command -v wrk >/dev/null 2>&1; then
  out=$(wrk -t1 -c10 -d3s "http://127.0.0.1:$PORT/")
  echo "$out" | grep -E 'requests in|Requests/sec'
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then fail "wrk saw errors: $out"; fi
fi

kill -QUIT "$master"
for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
kill -0 "$master" 2>/dev/null && fail "master $master did not exit on SIGQUIT"
master=
echo "smoke: 1 passed, 0 failed"
