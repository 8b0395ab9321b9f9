#!/usr/bin/env bash
# Write a vsftpd configuration for mcr's scripts (the release series, the pointer census),
# as crates/cli/tests/compat.rs writes the tests' one: standalone, anonymous FTP on
# 127.0.0.1:PORT, isolate=NO, uploads allowed into upload/.
#
# Usage: scripts/vsftpd/conf.sh DIR PORT [RELEASE]
#
# Creates DIR/ftp (the FTP root: hello.txt, unless there already, and upload/), DIR/empty
# (the secure chroot) and DIR/vsftpd-RELEASE.conf, and prints the configuration's path
# (last line of stdout). RELEASE (default 3.0.2) decides seccomp_sandbox=NO, a setting
# from 3.0.0 on that Debian 12's libc needs (an older release refuses a setting it does
# not know). Run it with: vsftpd DIR/vsftpd-RELEASE.conf.
set -euo pipefail
[ $# -ge 2 ] && [ $# -le 3 ] && [[ $2 =~ ^[0-9]+$ ]] || { echo "usage: scripts/vsftpd/conf.sh DIR PORT [RELEASE]" >&2; exit 2; }
mkdir -p "$1/ftp/upload" "$1/empty"
DIR=$(cd "$1" && pwd)
RELEASE=${3:-3.0.2}
chmod 755 "$DIR" "$DIR/ftp" "$DIR/empty"
chmod 777 "$DIR/ftp/upload"
[ -f "$DIR/ftp/hello.txt" ] || echo "hello from mcr" >"$DIR/ftp/hello.txt"
CONF=$DIR/vsftpd-$RELEASE.conf
# ftp_username: a user whose home exists in every Debian (vsftpd changes into it).
printf '%s\n' listen=YES listen_address=127.0.0.1 "listen_port=$2" background=NO anonymous_enable=YES \
  local_enable=NO ftp_username=daemon "anon_root=$DIR/ftp" anon_upload_enable=YES write_enable=YES anon_umask=022 \
  "secure_chroot_dir=$DIR/empty" isolate=NO isolate_network=NO pasv_enable=YES port_enable=NO \
  xferlog_enable=NO syslog_enable=NO "vsftpd_log_file=$DIR/vsftpd.log" >"$CONF"
case $RELEASE in 2.*) ;; *) echo seccomp_sandbox=NO >>"$CONF" ;; esac
printf '%s\n' "$CONF"
