#!/usr/bin/env bash
# Write an nginx test config for mcr's integration tests.
#
# Usage: scripts/nginx/conf.sh PREFIX_DIR PORT
#
# Creates PREFIX_DIR/{conf,logs,html,tmp}, PREFIX_DIR/html/index.html and
# PREFIX_DIR/conf/mcr-test.conf, and prints the config's absolute path (last
# line of stdout). Every path in the config is absolute inside PREFIX_DIR;
# run it with:
#   nginx -p PREFIX_DIR -c PREFIX_DIR/conf/mcr-test.conf
#
# The server daemonizes (daemon on: the master forks into the background, as
# in production), runs a master and 2 workers, listens on 127.0.0.1:PORT,
# serves index.html at / and "ok\n" at /status. Pid file:
# PREFIX_DIR/logs/nginx.pid, error log: PREFIX_DIR/logs/error.log.
# When written by root the workers run as root too ("user root;"), so that
# they can read PREFIX_DIR wherever it is (e.g. a 0700 mktemp dir).
set -euo pipefail

if [ $# -ne 2 ]; then
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
fi
case "$2" in
  ''|*[!0-9]*) echo "conf.sh: PORT must be a number, got '$2'" >&2; exit 2 ;;
esac
PORT=$2
mkdir -p "$1"
PREFIX=$(cd "$1" && pwd -P)

mkdir -p "$PREFIX/conf" "$PREFIX/logs" "$PREFIX/html" "$PREFIX/tmp"

cat >"$PREFIX/html/index.html" <<'EOF'
<!DOCTYPE html>
<html>
<head><title>mcr test</title></head>
<body><p>Hello from nginx under mcr.</p></body>
</html>
EOF

USER_LINE=
if [ "$(id -u)" -eq 0 ]; then USER_LINE="user root;"; fi

CONF=$PREFIX/conf/mcr-test.conf
cat >"$CONF.tmp" <<EOF
# mcr integration-test config, written by scripts/nginx/conf.sh
# run: nginx -p $PREFIX -c $CONF
$USER_LINE
daemon on;
master_process on;
worker_processes 2;
error_log $PREFIX/logs/error.log notice;
pid $PREFIX/logs/nginx.pid;

events {
    worker_connections 1024;
}

http {
    types {
        text/html html htm;
        text/plain txt;
    }
    default_type text/plain;

    access_log off;
    sendfile on;
    keepalive_timeout 65;

    client_body_temp_path $PREFIX/tmp/client_body;
    proxy_temp_path $PREFIX/tmp/proxy;
    fastcgi_temp_path $PREFIX/tmp/fastcgi;
    uwsgi_temp_path $PREFIX/tmp/uwsgi;
    scgi_temp_path $PREFIX/tmp/scgi;

    server {
        listen 127.0.0.1:$PORT;
        server_name localhost;
        root $PREFIX/html;
        index index.html;

        location / {
        }

        location /status {
            return 200 "ok\n";
        }
    }
}
EOF
mv -f "$CONF.tmp" "$CONF"
printf '%s\n' "$CONF"
