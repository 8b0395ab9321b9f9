#!/usr/bin/env bash
# Run nginx under mcr as a systemd service in a real systemd, booted in a container
# (systemd-nspawn), and drive it the way an operator does: install the Debian package,
# install a unit made from the example the package ships, then systemctl start, status,
# reload (a live update to the next nginx build), a reload that must fail (the new
# version's startup fails: the update rolls back), stop.
#
#   scripts/systemd/unit-test.sh --out DIR [--rootfs TARBALL] [--deb DEB] [--nginx V1] [--nginx-next V2] [--keep]
#
#   --out DIR       where each step's record goes (created; emptied first)
#   --rootfs T      the root file system (default: scripts/systemd/rootfs.sh, cached)
#   --deb DEB       mcr's package (default: $MCR_DEB, else packaging/deb/build.sh --fast)
#   --nginx V1      the nginx the service starts with, and
#   --nginx-next V2 the one `systemctl reload` updates it to (default: $MCR_NGINX's
#                   Debian patch levels N-1 and N, from scripts/nginx/build.sh)
#   --keep          leave the container's root file system in DIR/root
#
# Each step is a command run in the container (or, for HTTP, in its network namespace);
# DIR/<step>.out holds its output (stdout and stderr), DIR/<step>.rc its exit status and
# DIR/<step>.ms its duration. The steps, in order: install, unit, start, status, show,
# http, history; install-next, reload, reload-journal, reload-status, reload-show,
# reload-http; break-conf, bad-pids-before, bad-reload, bad-journal, bad-show, bad-http,
# bad-pids-after, restore-conf; stop, stop-show, stop-procs, stop-nginx-log, history-end,
# journal (the unit's whole journal). The script checks nothing itself (a failed step
# does not stop it): crates/cli/tests/systemd.rs reads the records and asserts. It exits
# non-zero only when the container could not be set up or booted.
#
# Needs root. The host need not run systemd: the container is started with
# --register=no --keep-unit (no machined, no scope unit), and entered with nsenter.
set -euo pipefail
TAG=systemd
# shellcheck source=../lib/build-common.sh
. "$(dirname "$0")/../lib/build-common.sh"

OUT= ROOTFS= DEB=${MCR_DEB:-} NGINX_V1= NGINX_V2= KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --rootfs) ROOTFS=$2; shift 2 ;;
    --deb) DEB=$2; shift 2 ;;
    --nginx) NGINX_V1=$2; shift 2 ;;
    --nginx-next) NGINX_V2=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) usage; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { usage; exit 2; }
[ "$(id -u)" -eq 0 ] || die "needs root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn is missing: apt-get install systemd-container"

[ -n "$ROOTFS" ] || ROOTFS=$("$REPO_ROOT/scripts/systemd/rootfs.sh" | tail -n 1)
[ -n "$DEB" ] || DEB=$("$REPO_ROOT/packaging/deb/build.sh" --fast | tail -n 1)
if [ -z "$NGINX_V1" ] || [ -z "$NGINX_V2" ]; then
  nginx=${MCR_NGINX:-$("$REPO_ROOT/scripts/nginx/build.sh" | tail -n 1)}
  total=$(sed -n 's/^total=//p' "$(dirname "$(dirname "$nginx")")/.mcr-build")
  NGINX_V1=$("$REPO_ROOT/scripts/nginx/build.sh" --patches $((total - 1)) | tail -n 1)
  NGINX_V2=$("$REPO_ROOT/scripts/nginx/build.sh" --patches "$total" | tail -n 1)
fi
for f in "$ROOTFS" "$DEB" "$NGINX_V1" "$NGINX_V2"; do [ -f "$f" ] || die "$f does not exist"; done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)
rm -rf "${OUT:?}"/*
ROOT=$OUT/root
MACHINE=mcr-systemd-$$
PORT=8080
UNIT=mcr-nginx
NSPAWN_PID=
LEADER=

cleanup() {
  local rc=$?
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    # A clean shutdown first (the journal is flushed), then the hard way.
    [ -n "$LEADER" ] && nsenter --target "$LEADER" --all -- systemctl poweroff --no-block >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    wait "$NSPAWN_PID" 2>/dev/null || true
  fi
  # nspawn leaves this behind when /run is not a tmpfs ("Attempted to remove disk file
  # system under /run/systemd/nspawn/propagate/..., and we can't allow that").
  rm -rf "/run/systemd/nspawn/propagate/$MACHINE" "/run/systemd/nspawn/unix-export/$MACHINE"
  [ "$KEEP" -eq 1 ] || rm -rf "$ROOT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
T0=$(now_ms)
mkdir "$ROOT"
zstd -q -d -c "$ROOTFS" | tar --numeric-owner --xattrs -C "$ROOT" -xf -
# What the operator copies onto the machine: the package, two nginx builds (the second
# stands for the next release; installing it over /usr/sbin/nginx is the operator's
# update), and a configuration (written in the container by scripts/nginx/conf.sh).
install -m 0644 "$DEB" "$ROOT/root/mcr.deb"
install -m 0755 "$NGINX_V1" "$ROOT/usr/sbin/nginx"
install -m 0755 "$NGINX_V2" "$ROOT/usr/local/sbin/nginx-next"
install -m 0755 "$REPO_ROOT/scripts/nginx/conf.sh" "$ROOT/usr/local/sbin/nginx-test-conf"
log "root file system ready in $(($(now_ms) - T0)) ms"

# --register=no --keep-unit: no machined or scope unit on the host ("Failed to open system
# bus: No such file or directory" without them when the host does not run systemd).
# --private-network: the container has its own loopback, so port $PORT clashes with nothing
# on the host. --system-call-filter=pidfd_getfd: nspawn's seccomp filter refuses it (EPERM)
# although the container keeps CAP_SYS_PTRACE, and mcr update takes the old version's
# descriptors with it (without: "cannot take fd N of process P: Operation not permitted",
# every update rolls back).
systemd-nspawn --quiet --directory="$ROOT" --machine="$MACHINE" --boot --register=no --keep-unit \
  --private-network --system-call-filter=pidfd_getfd --console=pipe >"$OUT/boot.log" 2>&1 </dev/null &
NSPAWN_PID=$!

# The container's init: the systemd that nspawn started (its child).
for _ in $(seq 200); do
  LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
  [ -n "$LEADER" ] && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || die "systemd-nspawn exited: $(cat "$OUT/boot.log")"
  sleep 0.05
done
[ -n "$LEADER" ] || die "no systemd in the container after 10 s: $(cat "$OUT/boot.log")"

in_container() {
  nsenter --target "$LEADER" --all -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
# systemd is up once the boot's jobs are done ("degraded": some unit failed, which does not
# stop the test). Until its private socket exists, systemctl cannot connect at all.
for _ in $(seq 600); do
  state=$(in_container timeout 60 systemctl is-system-running --wait 2>&1 || true)
  case "$state" in *"Failed to connect to bus"*) sleep 0.05 ;; *) break ;; esac
  kill -0 "$NSPAWN_PID" 2>/dev/null || die "systemd-nspawn exited: $(cat "$OUT/boot.log")"
done
log "container booted in $(($(now_ms) - T0)) ms ($state)"
printf '%s\n' "$state" >"$OUT/boot.state"

# step NAME CMD...: run CMD, record its output, status and duration, echo a transcript.
step() {
  local name=$1 start rc
  shift
  start=$(now_ms)
  set +e
  "$@" >"$OUT/$name.out" 2>&1
  rc=$?
  set -e
  printf '%s\n' "$rc" >"$OUT/$name.rc"
  printf '%s\n' "$(($(now_ms) - start))" >"$OUT/$name.ms"
  printf '\n$ %s   # %s: exit %s, %s ms\n' "${*#in_container }" "$name" "$rc" "$(cat "$OUT/$name.ms")"
  sed 's/^/  /' "$OUT/$name.out"
}
http() { nsenter --target "$LEADER" --net -- curl -sS --max-time 5 "http://127.0.0.1:$PORT$1"; }
show() { in_container systemctl show "$UNIT" -p ActiveState -p SubState -p MainPID -p StatusText -p Result -p ExecMainStatus -p NRestarts; }
# The unit, as the operator makes it from the example: only nginx's command line changes
# (this test's configuration).
make_unit() {
  in_container sh -c "sed 's|-- /usr/sbin/nginx -c /etc/nginx/nginx.conf\$|-- /usr/sbin/nginx -p /srv/nginx -c /srv/nginx/conf/mcr-test.conf|' \
    /usr/share/doc/mcr/examples/mcr-nginx.service.example >/etc/systemd/system/$UNIT.service \
    && nginx-test-conf /srv/nginx $PORT >/dev/null && systemctl daemon-reload \
    && { diff /usr/share/doc/mcr/examples/mcr-nginx.service.example /etc/systemd/system/$UNIT.service || true; }"
}
# The unit's journal since a time (seconds since the epoch, microseconds); --sync: what the
# unit's processes wrote before this call is in the journal when it returns.
journal_since() { in_container journalctl --sync && in_container journalctl -u "$UNIT" --no-pager -o cat --since "@$1"; }
clock() { in_container date +%s.%6N; }
nginx_pids() { in_container pgrep -x nginx; }

step install in_container dpkg -i /root/mcr.deb
step unit make_unit
step start in_container systemctl start "$UNIT"
step status in_container systemctl status "$UNIT" --no-pager -l
step show show
step http http /status
step history in_container mcr history nginx

# The next release, installed where the unit's ExecReload= looks for it.
step install-next in_container install -m 0755 /usr/local/sbin/nginx-next /usr/sbin/nginx
since=$(clock)
step reload in_container systemctl reload "$UNIT"
step reload-journal journal_since "$since"
step reload-status in_container systemctl status "$UNIT" --no-pager -l
step reload-show show
step reload-http http /status

# A configuration the new version cannot start with: its startup fails, so the update
# rolls back and the old processes (the configuration they read at their start) serve on.
step break-conf in_container sh -c "cp /srv/nginx/conf/mcr-test.conf /srv/nginx/conf/mcr-test.conf.good \
  && echo 'not_an_nginx_directive on;' >>/srv/nginx/conf/mcr-test.conf"
step bad-pids-before nginx_pids
since=$(clock)
step bad-reload in_container systemctl reload "$UNIT"
step bad-journal journal_since "$since"
step bad-show show
step bad-http http /status
step bad-pids-after nginx_pids
step restore-conf in_container mv /srv/nginx/conf/mcr-test.conf.good /srv/nginx/conf/mcr-test.conf

step stop in_container systemctl stop "$UNIT"
step stop-show show
step stop-procs in_container sh -c 'pgrep -a -x nginx; pgrep -a -x mcr; true'
# How nginx ended: the stop signal (SIGQUIT, KillSignal=) forwarded by mcr to the master.
step stop-nginx-log in_container tail -n 20 /srv/nginx/logs/error.log
step history-end in_container mcr history nginx
step journal in_container sh -c "journalctl --sync && journalctl -u $UNIT --no-pager -o short-precise"
log "done in $(($(now_ms) - T0)) ms; records in $OUT"
