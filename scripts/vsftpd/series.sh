#!/usr/bin/env bash
# vsftpd live-updated with its state through its upstream releases (issue 15): one vsftpd
# under `mcr run` (standalone, anonymous FTP, isolate=NO), updated with `mcr update` (no
# --fresh-state) from the first release to the next, and so on to the last, with an FTP
# session after every update (anonymous login, LIST, RETR, STOR of a new file, RETR of it).
#
# Usage: scripts/vsftpd/series.sh [--releases R0,R1,...] [--keep-going]
#
#   --releases   releases in order (default: every release of ../shared/servers/vsftpd,
#                scripts/vsftpd/build.sh --list-releases; each is built if not cached,
#                about ten seconds each). A release whose upstream tree does not build
#                (2.3.3: its access.c calls vsf_filename_passes_filter with the arguments
#                ls.h had before) is left out, and the update goes from the release
#                before it to the one after, as an operator's would.
#   --keep-going after an update that does not pass, note it, start the next release
#                afresh and go on (for a count of the series' automatic updates);
#                default: stop at the first problem
#
# Per update, one line: from, to, committed or not, the update's total and state-transfer
# times, the globals copied and heap blocks of the state, and the FTP session after it.
# Each release gets its own configuration file (seccomp_sandbox exists from 3.0.0 on, and
# must be NO with Debian 12's libc; an older release refuses a setting it does not know).
# Every upload of the series must be there, whole, at the end.
#
# Needs curl and the release build of mcr (built if target/release/mcr is missing).
# Loopback only, every wait bounded; stops the instance and removes its files at exit.
# Exit 0 when every update passed, 1 otherwise, 2 on a usage error.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

SERIES_TAG="vsftpd series"
# shellcheck source=../lib/series.sh
source "$ROOT/scripts/lib/series.sh"
series_release_options "$@"
series_need_mcr
[ -n "$RELEASES" ] || RELEASES=$("$ROOT/scripts/vsftpd/build.sh" --list-releases | paste -sd, -)
IFS=, read -r -a WANTED <<<"$RELEASES"
declare -A BIN
RELEASE=()
for r in "${WANTED[@]}"; do
  if BIN[$r]=$("$ROOT/scripts/vsftpd/build.sh" --release "$r" 2>"/tmp/vsftpd-build-$$.log" | tail -n 1) \
    && [ -x "${BIN[$r]}" ]; then
    RELEASE+=("$r")
  else
    say "vsftpd $r does not build (left out): $(grep -m1 -E 'error:' "/tmp/vsftpd-build-$$.log" || tail -n 1 "/tmp/vsftpd-build-$$.log")"
  fi
  rm -f "/tmp/vsftpd-build-$$.log"
done
UPDATES=$((${#RELEASE[@]} - 1))
[ "$UPDATES" -ge 1 ] || { say "fewer than two releases build"; exit 1; }

WORK=$(mktemp -d /tmp/mcr-vsftpd-series.XXXXXX)
chmod 755 "$WORK"
export MCR_RUNTIME_DIR=$WORK/run
NAME=vsftpd
cleanup() {
  "$MCR" stop "$NAME" --timeout 3 >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

series_free_port

FTP=$WORK/ftp
mkdir -p "$FTP"
echo "hello from the series" >"$FTP/hello.txt"
conf_of() { "$ROOT/scripts/vsftpd/conf.sh" "$WORK" "$PORT" "$1" | tail -n 1; } # RELEASE: its configuration file
UPLOADS=()
WHY=
ftp_session() { # N: login, LIST, RETR, STOR upload/series-N.txt, RETR it back
  local url=ftp://127.0.0.1:$PORT list got back
  list=$(curl -s --max-time 10 "$url/") || { WHY="LIST failed (curl exit $?)"; return 1; }
  grep -q 'hello.txt' <<<"$list" || { WHY="LIST lacks hello.txt: $list"; return 1; }
  got=$(curl -s --max-time 10 "$url/hello.txt") || { WHY="RETR failed (curl exit $?)"; return 1; }
  [ "$got" = "hello from the series" ] || { WHY="RETR gave '$got'"; return 1; }
  echo "upload $1" >"$WORK/up.txt"
  curl -s --max-time 10 -T "$WORK/up.txt" "$url/upload/series-$1.txt" || { WHY="STOR failed (curl exit $?)"; return 1; }
  back=$(curl -s --max-time 10 "$url/upload/series-$1.txt") || { WHY="RETR of the upload failed"; return 1; }
  [ "$back" = "upload $1" ] || { WHY="the upload came back as '$back'"; return 1; }
  UPLOADS+=("$1")
}
start_release() { # RELEASE: a fresh instance of that build
  "$MCR" stop "$NAME" --timeout 3 >/dev/null 2>&1 || true
  "$MCR" run --detach --name "$NAME" -- "${BIN[$1]}" "$(conf_of "$1")" >/dev/null
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.05; done
  say "vsftpd $1 does not accept connections"; exit 1
}

say "port $PORT, releases ${RELEASE[*]}"
start_release "${RELEASE[0]}"
ftp_session 0 || { say "before the first update: $WHY"; exit 1; }
printf '%-16s %-11s %8s %9s %8s %7s %s\n' update result total_ms transfer globals blocks "FTP after"
COMMITTED=0 FAILED=0
for i in $(seq 1 "$UPDATES"); do
  from=${RELEASE[$((i - 1))]} to=${RELEASE[$i]}
  problem= rc=0
  timeout 120 "$MCR" update "$NAME" --json -- "${BIN[$to]}" "$(conf_of "$to")" >"$WORK/update.json" 2>"$WORK/update.err" \
    || rc=$?
  total_ms=$(json_number total_ms "$WORK/update.json") transfer_ms=$(json_number transfer_ms "$WORK/update.json")
  globals=$(json_number globals "$WORK/update.json" | cut -d. -f1)
  blocks=$(json_number objects "$WORK/update.json" | cut -d. -f1)
  result=committed ftp=-
  if [ "$rc" -ne 0 ] || ! grep -q '"committed": true' "$WORK/update.json"; then
    result="ROLLED BACK"
    problem="did not commit: $(grep -m1 'why' "$WORK/update.err" || tail -n 2 "$WORK/update.err" | tr '\n' ' ')"
  elif ! ftp_session "$i"; then
    result=FAILED problem="FTP after the update: $WHY" ftp=failed
  else
    ftp="login, LIST, RETR, STOR ok"
  fi
  printf '%-16s %-11s %8s %9s %8s %7s %s\n' "$from -> $to" "$result" "${total_ms:-?}" "${transfer_ms:-?}" \
    "${globals:-?}" "${blocks:-?}" "$ftp"
  if [ -z "$problem" ]; then
    COMMITTED=$((COMMITTED + 1))
    continue
  fi
  FAILED=$((FAILED + 1))
  say "$from -> $to: $problem"
  [ "$KEEP_GOING" = 1 ] || exit 1
  start_release "$to"
  ftp_session "$i" || { say "after restarting at $to: $WHY"; exit 1; }
done
for n in "${UPLOADS[@]}"; do
  [ "$(cat "$FTP/upload/series-$n.txt" 2>/dev/null)" = "upload $n" ] || { say "upload $n is gone"; FAILED=$((FAILED + 1)); }
done
say "$UPDATES updates: $COMMITTED passed, $FAILED failed; ${#UPLOADS[@]} uploads all there"
[ "$FAILED" -eq 0 ]
