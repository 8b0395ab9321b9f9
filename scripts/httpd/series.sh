#!/usr/bin/env bash
# Apache httpd (event MPM) live-updated with its state through its upstream releases
# (issue 15): one httpd under `mcr run`, updated with `mcr update` (no --fresh-state) from
# the first release to the next, and so on to the last, with a keep-alive connection
# opened before the first update that must answer after every one, and a request on a
# fresh connection after each.
#
# Usage: scripts/httpd/series.sh [--releases R0,R1,...] [--keep-going]
#
#   --releases   releases in order (default: every release of ../shared/servers/httpd,
#                scripts/httpd/build.sh --list-releases; each is built if not cached,
#                a minute or two each)
#   --keep-going after an update that does not pass, note it, start the next release
#                afresh (with a new keep-alive connection) and go on, for a count of the
#                series' automatic updates; default: stop at the first problem
#
# Per update, one line: from, to, committed or not, the update's total and
# state-transfer times, the bytes of memory httpd mapped at startup that were carried,
# and the requests after it. An update that changes a type's layout cannot carry the
# pages libapr mapped at startup (untyped memory) and rolls back, saying so.
#
# Needs curl and the release build of mcr (built if target/release/mcr is missing).
# Loopback only, every wait bounded; stops the instance and removes its files at exit.
# Exit 0 when every update passed, 1 otherwise, 2 on a usage error.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

SERIES_TAG="httpd series"
# shellcheck source=../lib/series.sh
source "$ROOT/scripts/lib/series.sh"
series_release_options "$@"
series_need_mcr
[ -n "$RELEASES" ] || RELEASES=$("$ROOT/scripts/httpd/build.sh" --list-releases | paste -sd, -)
IFS=, read -r -a RELEASE <<<"$RELEASES"
declare -A BIN
for r in "${RELEASE[@]}"; do
  BIN[$r]=$("$ROOT/scripts/httpd/build.sh" --release "$r" 2>"/tmp/httpd-build-$$.log" | tail -n 1) \
    && [ -x "${BIN[$r]}" ] || { say "httpd $r does not build: $(tail -n 1 "/tmp/httpd-build-$$.log")"; exit 1; }
  rm -f "/tmp/httpd-build-$$.log"
done
UPDATES=$((${#RELEASE[@]} - 1))
[ "$UPDATES" -ge 1 ] || usage

WORK=$(mktemp -d /tmp/mcr-httpd-series.XXXXXX)
chmod 755 "$WORK"
export MCR_RUNTIME_DIR=$WORK/run
NAME=httpd
cleanup() {
  "$MCR" stop "$NAME" --timeout 3 >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

series_free_port
BODY="hello from the series"
CONF=$("$ROOT/scripts/httpd/conf.sh" "$WORK" "$PORT" "$BODY" | tail -n 1)

WHY=
# keep_open: a keep-alive connection (fd KA) and its first request.
keep_open() {
  exec {KA}<>"/dev/tcp/127.0.0.1/$PORT" || { WHY="cannot connect"; return 1; }
  kept_get
}
# kept_get: GET on the kept connection; its body must come back (read bounded).
kept_get() {
  local line status=
  printf 'GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n' >&"$KA" 2>/dev/null || { WHY="kept connection: write failed"; return 1; }
  while IFS= read -r -t 5 line <&"$KA"; do
    [ -z "$status" ] && status=${line%$'\r'}
    [ "$line" = "$BODY" ] && { [[ $status == *" 200 "* ]] && return 0; WHY="kept connection: $status"; return 1; }
  done
  WHY="kept connection: no answer (${status:-nothing read})"
  return 1
}
fresh_get() {
  local got
  got=$(curl -s --max-time 10 "http://127.0.0.1:$PORT/index.html") || { WHY="a new connection: curl exit $?"; return 1; }
  [ "$got" = "$BODY" ] || { WHY="a new connection got '$got'"; return 1; }
}
start_release() { # RELEASE: a fresh instance of that build
  "$MCR" stop "$NAME" --timeout 3 >/dev/null 2>&1 || true
  "$MCR" run --detach --name "$NAME" -- "${BIN[$1]}" -f "$CONF" -DFOREGROUND >/dev/null
  for _ in $(seq 200); do fresh_get 2>/dev/null && { keep_open && return; say "$WHY"; exit 1; }; sleep 0.05; done
  say "httpd $1 does not answer"; exit 1
}

say "port $PORT, releases ${RELEASE[*]}"
start_release "${RELEASE[0]}"
printf '%-18s %-11s %8s %9s %14s %s\n' update result total_ms transfer carried_bytes "requests after"
COMMITTED=0 FAILED=0
for i in $(seq 1 "$UPDATES"); do
  from=${RELEASE[$((i - 1))]} to=${RELEASE[$i]}
  problem= rc=0
  timeout 120 "$MCR" update "$NAME" --json -- "${BIN[$to]}" -f "$CONF" -DFOREGROUND >"$WORK/update.json" \
    2>"$WORK/update.err" || rc=$?
  total_ms=$(json_number total_ms "$WORK/update.json") transfer_ms=$(json_number transfer_ms "$WORK/update.json")
  carried=$(json_number startup_mapped_bytes_carried "$WORK/update.json" | cut -d. -f1)
  result=committed after=-
  if [ "$rc" -ne 0 ] || ! grep -q '"committed": true' "$WORK/update.json"; then
    result="ROLLED BACK"
    problem="did not commit: $(sed -n 's/^ *"message": "\(.*\)",\{0,1\}$/\1/p' "$WORK/update.json" | head -n 1)"
    [ -n "${problem#did not commit: }" ] || problem="did not commit: $(tail -n 2 "$WORK/update.err" | tr '\n' ' ')"
  elif ! kept_get; then
    result=FAILED problem=$WHY after=failed
  elif ! fresh_get; then
    result=FAILED problem=$WHY after=failed
  else
    after="kept connection and a new one answered"
  fi
  printf '%-18s %-11s %8s %9s %14s %s\n' "$from -> $to" "$result" "${total_ms:-?}" "${transfer_ms:-?}" \
    "${carried:-?}" "$after"
  if [ -z "$problem" ]; then
    COMMITTED=$((COMMITTED + 1))
    continue
  fi
  FAILED=$((FAILED + 1))
  say "$from -> $to: $problem"
  [ "$KEEP_GOING" = 1 ] || exit 1
  exec {KA}>&-
  start_release "$to"
done
if grep -q "exit signal" "$WORK/logs/error_log"; then
  say "children died: $(grep -m 3 'exit signal' "$WORK/logs/error_log" | tr '\n' ' ')"
  FAILED=$((FAILED + 1))
fi
say "$UPDATES updates: $COMMITTED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
