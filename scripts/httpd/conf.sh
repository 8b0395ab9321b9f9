#!/usr/bin/env bash
# Write an Apache httpd configuration for mcr's scripts (the series, the benchmarks, the
# pointer census), as crates/cli/tests/support's httpd_conf writes the tests' one.
#
# Usage: scripts/httpd/conf.sh DIR PORT [BODY]
#
# Creates DIR/htdocs/index.html (holding BODY, default "hello from mcr"), DIR/logs and
# DIR/httpd.conf, and prints the configuration's absolute path (last line of stdout).
# Run it with: httpd -f DIR/httpd.conf -DFOREGROUND. It listens on 127.0.0.1:PORT, its
# children run as nobody (DIR and htdocs are made readable by others), keep-alive on
# (60 s, 1000 requests per connection: a benchmark's connections live through its
# updates), StartServers 2, MinSpareThreads 25 (no child forked after startup).
set -euo pipefail
[ $# -ge 2 ] && [ $# -le 3 ] && [[ $2 =~ ^[0-9]+$ ]] || { echo "usage: scripts/httpd/conf.sh DIR PORT [BODY]" >&2; exit 2; }
mkdir -p "$1/htdocs" "$1/logs"
DIR=$(cd "$1" && pwd)
chmod 755 "$DIR" "$DIR/htdocs"
printf '%s\n' "${3:-hello from mcr}" >"$DIR/htdocs/index.html"
printf '%s\n' "ServerRoot \"$DIR\"" "ServerName 127.0.0.1" "Listen 127.0.0.1:$2" "PidFile \"$DIR/logs/httpd.pid\"" \
  "ErrorLog \"$DIR/logs/error_log\"" "LogLevel warn" "User nobody" "Group nogroup" "DocumentRoot \"$DIR/htdocs\"" \
  "DirectoryIndex index.html" "TypesConfig /dev/null" "AddType text/html .html" "KeepAlive On" \
  "MaxKeepAliveRequests 1000" "KeepAliveTimeout 60" "StartServers 2" "MinSpareThreads 25" >"$DIR/httpd.conf"
printf '%s\n' "$DIR/httpd.conf"
