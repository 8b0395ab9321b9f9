# Helpers for the `mcr profile` workloads: line-protocol clients in plain bash
# (/dev/tcp), loopback only, every loop bounded.
#
# A workload drives the server into every state that must count as quiescent
# (idle, serving, idle sessions open), then calls `profile_done`: mcr profile
# takes its final snapshot at that moment, with the sessions still open, and
# ends the workload itself.

# ask FD LINE: send LINE on session FD, read one reply line into $REPLY.
ask() {
  printf '%s\n' "$2" >&"$1"
  IFS= read -r -t 5 REPLY <&"$1" || { echo "workload: no reply to '$2'" >&2; return 1; }
}

# once PORT LINE...: a fresh connection, one reply per line, then close.
once() {
  local port=$1 fd
  shift
  exec {fd}<>"/dev/tcp/127.0.0.1/$port" || return 1
  for line in "$@"; do ask "$fd" "$line" || { exec {fd}>&-; return 1; }; done
  exec {fd}>&-
}

# session PORT: open a connection and leave it open; its descriptor in $SESSION.
session() {
  exec {SESSION}<>"/dev/tcp/127.0.0.1/$1"
}

# profile_done: tell mcr profile the workload reached its final state, and wait
# to be ended (mcr profile kills the workload's process group).
profile_done() {
  if [ -n "${MCR_PROFILE_DONE:-}" ]; then
    : >"$MCR_PROFILE_DONE"
    sleep 60
  fi
}

# http_get PORT PATH: one HTTP/1.0 GET on a fresh connection, the answer read to its end.
http_get() {
  local fd line
  exec {fd}<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&"$fd"
  while IFS= read -r -t 5 line <&"$fd"; do :; done
  exec {fd}>&-
}
