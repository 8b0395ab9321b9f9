#!/usr/bin/env bash
# The MCR paper's Table 2 for mcr: the pointers the state transfer traces in each of the
# paper's four servers, precise and likely, by source and target, from
# `mcr update --count-pointers --json` (an update to the same build, with the server's
# state, after a short workload).
#
# Usage: scripts/pointers.sh [--servers nginx,vsftpd,sshd,httpd]
#
# Each server runs under `mcr run` in a scratch folder, serves a few requests (nginx and
# httpd: HTTP GETs, one keep-alive connection left open; vsftpd: anonymous FTP logins,
# isolate=NO; sshd: a key login running a command), then is updated once. Prints one
# Markdown row per server (the README's Table 2), or why the update did not commit.
# Builds come from scripts/{nginx,vsftpd,sshd,httpd}/build.sh (cached), configurations
# from their conf.sh (sshd's is written here). Loopback only; every wait is bounded;
# stops every instance it started and removes its files at exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
SERVERS=nginx,vsftpd,sshd,httpd
while [ $# -gt 0 ]; do
  case $1 in
    --servers) [[ ${2:-} =~ ^[a-z,]+$ ]] || usage; SERVERS=$2; shift ;;
    -h|--help) usage ;;
    *) usage ;;
  esac
  shift
done
cd "$ROOT"
[ -x target/release/mcr ] || cargo build --release -q
MCR=$ROOT/target/release/mcr
BENCH=$ROOT/target/release/mcr-bench
[ -x "$BENCH" ] || cargo build --release -q -p mcr-bench
WORK=$(mktemp -d /tmp/mcr-pointers.XXXXXX)
chmod 755 "$WORK"
STARTED=()
cleanup() {
  for n in "${STARTED[@]}"; do "$MCR" stop "$n" --timeout 5 >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[pointers] $*" >&2; }

# start NAME PORT PROGRAM ARGS...: under mcr, detached, until PORT accepts.
start() {
  local name=$1 port=$2; shift 2
  "$MCR" run --detach --name "$name" -- "$@" >>"$WORK/$name.out" 2>&1 || { log "$name did not start"; return 1; }
  STARTED+=("$name")
  "$BENCH" wait-port --port "$port" || { log "$name does not listen on $port"; return 1; }
}

http_gets() { # PORT N
  for _ in $(seq 1 "$2"); do curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$1/" || true; done
}

# keepalive PORT: a connection that made one request and stays open (until exit).
keepalive() {
  exec {KA}<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n' >&"$KA"
  sleep 0.2
}

ftp_logins() { # PORT N
  local fd line
  for _ in $(seq 1 "$2"); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$1"
    for cmd in "" "USER anonymous" "PASS mcr@example.org" "PWD" "QUIT"; do
      [ -n "$cmd" ] && printf '%s\r\n' "$cmd" >&"$fd"
      while IFS= read -r -t 5 line <&"$fd"; do [[ $line =~ ^[0-9]{3}\  ]] && break; done
    done
    exec {fd}>&-
  done
}

# row SERVER NAME PROGRAM: the update and its Markdown row.
row() {
  local server=$1 name=$2 program=$3 json
  json=$("$MCR" update "$name" --count-pointers --json -- "$program" 2>"$WORK/$name.err" || true)
  printf '%s' "$json" | python3 -c '
import json, sys
server = sys.argv[1]
try:
    r = json.load(sys.stdin)
except ValueError:
    print(f"| {server} | update failed: see its stderr |"); sys.exit(0)
p = (r.get("transfer") or {}).get("pointers")
if not r.get("committed") or not p:
    msg = r.get("message", "")[:200].replace("|", "/")
    print(f"| {server} | not counted: {msg} |"); sys.exit(0)
def cells(c):
    return [c["total"], c["from_static"], c["to_static"], c["from_dynamic"], c["to_dynamic"], c["to_library"], c["to_other"]]
row = [server] + cells(p["precise"]) + cells(p["likely"])[:6]
print("| " + " | ".join(f"{v:,}" if isinstance(v, int) else v for v in row) + " |")
' "$server"
}

echo "| server | precise: total | static src | static targ | dynamic src | dynamic targ | lib targ | other targ | likely: total | static src | static targ | dynamic src | dynamic targ | lib targ |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
IFS=, read -r -a LIST <<<"$SERVERS"
for server in "${LIST[@]}"; do
  port=$("$BENCH" free-port)
  dir=$WORK/$server
  mkdir -p "$dir"
  chmod 755 "$dir"
  case $server in
    nginx)
      bin=$(scripts/nginx/build.sh | tail -n 1)
      conf=$(scripts/nginx/conf.sh "$dir" "$port" | tail -n 1)
      start ptr-nginx "$port" "$bin" -p "$dir" -c "$conf" || continue
      http_gets "$port" 20; keepalive "$port"
      row nginx ptr-nginx "$bin"
      ;;
    httpd)
      bin=$(scripts/httpd/build.sh | tail -n 1)
      conf=$(scripts/httpd/conf.sh "$dir" "$port" | tail -n 1)
      start ptr-httpd "$port" "$bin" -f "$conf" -DFOREGROUND || continue
      http_gets "$port" 20; keepalive "$port"
      row httpd ptr-httpd "$bin"
      ;;
    vsftpd)
      bin=$(scripts/vsftpd/build.sh | tail -n 1)
      conf=$(scripts/vsftpd/conf.sh "$dir" "$port" | tail -n 1)
      start ptr-vsftpd "$port" "$bin" "$conf" || continue
      ftp_logins "$port" 5; sleep 0.3
      row vsftpd ptr-vsftpd "$bin"
      ;;
    sshd)
      bin=$(scripts/sshd/build.sh | tail -n 1)
      ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"; ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
      cp "$dir/user_key.pub" "$dir/authorized_keys"
      echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" >"$dir/known_hosts"
      printf '%s\n' "Port $port" "ListenAddress 127.0.0.1" "HostKey $dir/host_key" "PidFile $dir/sshd.pid" \
        "AuthorizedKeysFile $dir/authorized_keys" "StrictModes no" "PermitRootLogin prohibit-password" \
        "PubkeyAuthentication yes" "PasswordAuthentication no" "KbdInteractiveAuthentication no" "UseDNS no" \
        >"$dir/sshd_config"
      start ptr-sshd "$port" "$bin" -D -e -f "$dir/sshd_config" || continue
      for _ in 1 2 3; do
        timeout 20 ssh -F /dev/null -T -i "$dir/user_key" -o BatchMode=yes -o IdentitiesOnly=yes \
          -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$dir/known_hosts" -o ConnectTimeout=5 \
          -p "$port" root@127.0.0.1 true </dev/null >/dev/null 2>&1 || log "an ssh login failed"
      done
      sleep 0.3
      row sshd ptr-sshd "$bin"
      ;;
    *) log "unknown server $server"; usage ;;
  esac
done
