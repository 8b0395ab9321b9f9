#!/usr/bin/env bash
# nginx 1.22.1 live-updated with its state through its Debian patch series (issue 15):
# one nginx under `mcr run`, updated with `mcr update` (no --fresh-state) from the build
# with the first L0 Debian patches to L1, L2, ... in order, with a keep-alive session and
# a slow download in progress across every update.
#
# Usage: scripts/nginx/series.sh [--levels L0,L1,...] [--size MB] [--rate R] [--keep-going]
#
#   --levels     patch levels in order (default: 0,1,...,N, the whole series of the
#                Debian source scripts/nginx/build.sh uses; each is built if not cached,
#                about a minute each)
#   --size MB    the download's size (default 50)
#   --rate R     the download's pace, nginx's limit_rate for it (default 4M)
#   --keep-going after an update that does not commit, note it, start the next level
#                afresh and go on (for a count of the series' automatic updates); default:
#                stop at the first problem
#
# Per update, one line: from, to, committed or not, the update's total and state-transfer
# times, the connections and other descriptors that moved, the download's bytes at the
# commit, and the servers' resident memory after it. Checks, each of which stops the
# series (or, with --keep-going, counts as a failed update): the update committed; the
# session and the download were among the connections it moved; the download completes (HTTP 200, every byte, sha256 equal to the file's) and nginx then
# closes its connection (it was sent `Connection: close`); the session's request after
# the update is answered on the same connection, and only its last request of the whole
# series (the location's `keepalive_requests`) ends the connection, so its request count
# moved with the state; the server still runs 3 processes; error.log gained no [alert],
# [emerg] or crash line.
#
# Needs curl and the release build of mcr (built if target/release/mcr is missing).
# Loopback only, every loop bounded; stops the instance and removes its files at exit.
# Exit 0 when every update passed, 1 otherwise, 2 on a usage error.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

LEVELS= SIZE_MB=50 RATE=4M KEEP_GOING=0
while [ $# -gt 0 ]; do
  case $1 in
    --levels) [[ ${2:-} =~ ^[0-9]+(,[0-9]+)+$ ]] || usage; LEVELS=$2; shift ;;
    --size) [[ ${2:-} =~ ^[0-9]+$ ]] && [ "$2" -ge 2 ] || usage; SIZE_MB=$2; shift ;;
    --rate) [[ ${2:-} =~ ^[0-9]+[kKmMgG]?$ ]] || usage; RATE=$2; shift ;;
    --keep-going) KEEP_GOING=1 ;;
    -h | --help) usage ;;
    *) usage ;;
  esac
  shift
done

SERIES_TAG="series"
# shellcheck source=../lib/series.sh
source "$ROOT/scripts/lib/series.sh"
series_need_mcr

if [ -z "$LEVELS" ]; then
  total=$("$ROOT/scripts/nginx/build.sh" --list-patches 2>/dev/null | wc -l)
  [ "$total" -ge 1 ] || { say "cannot read the patch series (scripts/nginx/build.sh --list-patches)"; exit 1; }
  LEVELS=$(seq -s, 0 "$total")
fi
IFS=, read -r -a LEVEL <<<"$LEVELS"
UPDATES=$((${#LEVEL[@]} - 1))
declare -A BIN
for n in "${LEVEL[@]}"; do
  if [ -z "${BIN[$n]:-}" ]; then
    say "nginx with the first $n Debian patches"
    BIN[$n]=$("$ROOT/scripts/nginx/build.sh" --patches "$n" | tail -n 1)
  fi
done

WORK=$(mktemp -d /tmp/mcr-series.XXXXXX)
export MCR_RUNTIME_DIR=$WORK/run
NAME=nginx
CURL_PID=
cleanup() {
  [ -n "$CURL_PID" ] && kill "$CURL_PID" 2>/dev/null || true
  "$MCR" stop "$NAME" --timeout 3 >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

series_free_port

# conf.sh's config, plus a location whose keep-alive connections end after the session's
# last request of the series.
PREFIX=$WORK/nginx
CONF=$("$ROOT/scripts/nginx/conf.sh" "$PREFIX" "$PORT" | tail -n 1)
SESSION_REQUESTS=$((UPDATES + 1))
extra="        location /counted {\n            keepalive_requests $SESSION_REQUESTS;\n            return 200 \"counted\\\\n\";\n        }\n\n"
# The download is paced by nginx (limit_rate), not by the client: with a client that reads
# slowly, loopback's buffers (up to 32 MB) took the rest of the file early on a loaded
# machine, and nginx had finished with the connection before the update began.
extra="$extra        location = /big.bin {\n            limit_rate $RATE;\n        }\n\n"
sed -i "s|^        location /status {|$extra        location /status {|" "$CONF"
grep -q "keepalive_requests $SESSION_REQUESTS;" "$CONF" || { say "could not add /counted to $CONF"; exit 1; }
SIZE=$((SIZE_MB << 20))
head -c "$SIZE" /dev/urandom >"$PREFIX/html/big.bin"
BIG_SHA=$(sha256sum <"$PREFIX/html/big.bin" | cut -d' ' -f1)
ARGS=(-p "$PREFIX" -c "$CONF")

# --- the keep-alive session -----------------------------------------------------------
# One connection; KA_MADE: the requests answered on it. A check that fails says why in WHY.
KA= KA_MADE=0 KA_CLOSING=0 WHY=
session_open() {
  exec {KA}<>"/dev/tcp/127.0.0.1/$PORT"
  KA_MADE=0
}
# One GET /counted on the session, answered "counted"; KA_CLOSING=1 when nginx said it
# ends the connection after it.
session_request() {
  local line len=0 body
  KA_CLOSING=0
  printf 'GET /counted HTTP/1.1\r\nHost: localhost\r\n\r\n' >&"$KA" 2>/dev/null || { WHY="send failed"; return 1; }
  IFS= read -r -t 10 line <&"$KA" || { WHY="no status line (connection closed or timed out)"; return 1; }
  [[ $line == "HTTP/1.1 200"* ]] || { WHY="status line ${line%$'\r'}"; return 1; }
  for _ in $(seq 50); do
    IFS= read -r -t 10 line <&"$KA" || { WHY="headers cut short"; return 1; }
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case ${line,,} in
      content-length:*) len=${line#*: } ;;
      "connection: close") KA_CLOSING=1 ;;
    esac
  done
  IFS= read -r -N "$len" -t 10 body <&"$KA" || { WHY="body cut short"; return 1; }
  [ "$body" = $'counted\n' ] || { WHY="body '$body'"; return 1; }
  KA_MADE=$((KA_MADE + 1))
}
# The session's next request: only its last of the series may end the connection, and
# then nginx closes it.
session_check() {
  session_request || { WHY="session request $((KA_MADE + 1)): $WHY"; return 1; }
  if [ "$KA_MADE" -eq "$SESSION_REQUESTS" ]; then
    [ "$KA_CLOSING" = 1 ] || {
      WHY="session request $KA_MADE of $SESSION_REQUESTS did not end the connection: its count started again"
      return 1
    }
    local line rc=0
    IFS= read -r -t 10 line <&"$KA" || rc=$?
    [ "$rc" -eq 1 ] && [ -z "$line" ] || { WHY="nginx did not close the session after its last request"; return 1; }
  elif [ "$KA_CLOSING" = 1 ]; then
    WHY="nginx ended the session after request $KA_MADE of $SESSION_REQUESTS"
    return 1
  fi
}

# --- helpers ------------------------------------------------------------------------------
start_level() { # LEVEL: a fresh instance of that build, with its session
  "$MCR" stop "$NAME" --timeout 3 >/dev/null 2>&1 || true
  "$MCR" run --detach --name "$NAME" -- "${BIN[$1]}" "${ARGS[@]}" >/dev/null
  session_open
}
# Whether nginx still holds its end of the connection from local client port $1.
server_end_open() {
  local sp cp
  sp=$(printf '%04X' "$PORT") cp=$(printf '%04X' "$1")
  awk -v sp=":$sp" -v cp=":$cp" 'NR > 1 && substr($2, length($2) - 4) == sp && substr($3, length($3) - 4) == cp \
    && ($4 == "01" || $4 == "08") { found = 1 } END { exit !found }' /proc/net/tcp
}
# Resident memory of the instance's server processes (MB).
rss_mb() {
  local sup ns init kb=0 p
  sup=$(cat "$MCR_RUNTIME_DIR/$NAME.pid" 2>/dev/null) || { echo "?"; return; }
  ns=$(readlink "/proc/$sup/ns/pid") init=$(awk '{print $4}' "/proc/$sup/stat")
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$sup" ] || [ "$p" = "$init" ] && continue
    [ "$(readlink "/proc/$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
    kb=$((kb + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# --- the series ---------------------------------------------------------------------------
say "port $PORT, levels ${LEVEL[*]}, a $SIZE_MB MB download at $RATE/s across each update"
start_level "${LEVEL[0]}"
session_check || { say "before the first update: $WHY"; exit 1; }
printf '%-11s %-11s %8s %9s %7s %11s %9s %s\n' update result total_ms transfer connections descriptors rss_mb download
COMMITTED=0 FAILED=0
for i in $(seq 1 "$UPDATES"); do
  from=${LEVEL[$((i - 1))]} to=${LEVEL[$i]}
  problem=
  log_before=$(wc -l <"$PREFIX/logs/error.log")
  rm -f "$WORK/dl.bin" "$WORK/curl.out"
  curl -s --max-time 600 -H 'Connection: close' -o "$WORK/dl.bin" \
    -w '%{http_code} %{size_download} %{local_port}\n' "http://127.0.0.1:$PORT/big.bin" >"$WORK/curl.out" &
  CURL_PID=$!
  for _ in $(seq 300); do
    [ "$(stat -c %s "$WORK/dl.bin" 2>/dev/null || echo 0)" -ge $((1 << 20)) ] && break
    sleep 0.1
  done
  rc=0
  timeout 300 "$MCR" update "$NAME" --json -- "${BIN[$to]}" "${ARGS[@]}" >"$WORK/update.json" 2>"$WORK/update.err" || rc=$?
  at_commit=$(stat -c %s "$WORK/dl.bin" 2>/dev/null || echo 0)
  # The rest of the download comes at the same pace; the bound is --max-time.
  wait "$CURL_PID" || true
  CURL_PID=
  read -r http got client_port <"$WORK/curl.out" || true
  total_ms=$(json_number total_ms "$WORK/update.json") transfer_ms=$(json_number transfer_ms "$WORK/update.json")
  moved=$(json_number connections "$WORK/update.json" | cut -d. -f1)
  descriptors=$(json_number descriptors "$WORK/update.json" | cut -d. -f1)
  crash=$(tail -n +"$((log_before + 1))" "$PREFIX/logs/error.log" | grep -E '\[(alert|emerg)\]|exited on signal' | head -n 1 || true)
  if [ "$rc" -ne 0 ] || ! grep -q '"committed": true' "$WORK/update.json"; then
    problem="did not commit: $(sed -n 's/^  "message": "\(.*\)",$/\1/p' "$WORK/update.json" | head -n 1)$(tail -n 3 "$WORK/update.err" | tr '\n' ' ')"
  elif [ -n "$crash" ]; then
    problem="error.log: $crash"
  elif [ "$at_commit" -ge "$SIZE" ] || [ "${moved:-0}" -lt 2 ]; then
    problem="the download was not in progress across the update ($at_commit bytes received at the commit, \
${moved:-0} connections moved): a larger --size or a lower --rate"
  elif [ "${http:-}" != 200 ] || [ "${got:-0}" -ne "$SIZE" ]; then
    problem="download: HTTP ${http:-none}, $got of $SIZE bytes"
  elif [ "$(sha256sum <"$WORK/dl.bin" | cut -d' ' -f1)" != "$BIG_SHA" ]; then
    problem="download: the bytes received are not the file's"
  else
    for _ in $(seq 50); do server_end_open "$client_port" || break; sleep 0.1; done
    if server_end_open "$client_port"; then
      problem="nginx never closed the download's connection (Connection: close) after the response"
    elif ! session_check; then
      problem=$WHY
    else
      procs=$("$MCR" status "$NAME" --json | grep -c '"pid": ' || true)
      crash=$(tail -n +"$((log_before + 1))" "$PREFIX/logs/error.log" | grep -E '\[(alert|emerg)\]|exited on signal' | head -n 1 || true)
      [ "$procs" -eq 3 ] || problem="the server runs $procs processes, not 3"
      [ -z "$crash" ] || problem="error.log: $crash"
    fi
  fi
  result=committed
  [ "$rc" -eq 0 ] && grep -q '"committed": true' "$WORK/update.json" || result="ROLLED BACK"
  [ -n "$problem" ] && [ "$result" = committed ] && result=FAILED
  download="$((at_commit >> 10)) KiB of $SIZE_MB MB received at the commit"
  [ -z "$problem" ] && download="$download, all received, sha256 ok"
  printf '%-11s %-11s %8s %9s %7s %11s %9s %s\n' "p$from -> p$to" "$result" "${total_ms:-?}" "${transfer_ms:-?}" \
    "${moved:-?}" "${descriptors:-?}" "$(rss_mb)" "$download"
  if [ -z "$problem" ]; then
    COMMITTED=$((COMMITTED + 1))
    continue
  fi
  FAILED=$((FAILED + 1))
  say "p$from -> p$to: $problem"
  # What the update says of the connections and processes, for the cause.
  say "the update's report (connections, processes):"
  grep -E '"(connections|descriptors|adopted_connections|respawned_processes|volatile)"|"(old|new)_processes"' \
    "$WORK/update.json" >&2 || true
  sed -n '/"connections_left"/,/\]/p' "$WORK/update.json" | head -n 30 >&2 || true
  if [ "$KEEP_GOING" = 0 ]; then
    say "error.log (last lines):"; tail -n 5 "$PREFIX/logs/error.log" >&2
    exit 1
  fi
  # Go on from the next level, afresh (its session's count starts again: it never
  # reaches the series' keepalive_requests).
  start_level "$to"
  session_check || { say "after restarting at p$to: $WHY"; exit 1; }
done
say "$UPDATES updates: $COMMITTED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
