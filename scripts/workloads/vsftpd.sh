#!/usr/bin/env bash
# mcr profile workload for vsftpd (anonymous FTP, isolate=NO, as crates/cli/tests/compat.rs
# configures it): logins on fresh control connections, each ended with QUIT, then one
# logged-in session left open at the end.
#   mcr profile --workload 'scripts/workloads/vsftpd.sh PORT' -- vsftpd CONF
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PORT=${1:?usage: vsftpd.sh PORT}
# login FD: anonymous login on control connection FD (each reply read to its last line).
reply() {
  local line
  while IFS= read -r -t 5 line <&"$1"; do
    [[ $line =~ ^[0-9]{3}\  ]] && return 0
  done
  echo "workload: no FTP reply" >&2
  return 1
}
login() {
  reply "$1"
  printf 'USER anonymous\r\n' >&"$1"; reply "$1"
  printf 'PASS mcr@example.org\r\n' >&"$1"; reply "$1"
}
for round in 1 2 3; do
  for i in 1 2 3 4; do
    exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
    login "$fd"
    printf 'PWD\r\n' >&"$fd"; reply "$fd"
    printf 'QUIT\r\n' >&"$fd"; reply "$fd" || true
    exec {fd}>&-
  done
  sleep 0.2
done
session "$PORT"; k=$SESSION
login "$k"
sleep 0.3
profile_done
