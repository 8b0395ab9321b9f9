#!/usr/bin/env bash
# Quickstart demo: run the kvd sample server under mcr, put data in it, quiesce it (a
# client request waits, it is not refused), resume; then fill it with data, keep a
# client connected with a command half sent, live-update it to a build whose structs
# changed, and show data and connection intact in the new layout; then watch a bad update
# roll back.
# Uses only loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building mcr and the sample servers"
cargo build --release --quiet --workspace
make -s -C fixtures OUT="$PWD/target/fixtures"

MCR="$PWD/target/release/mcr"
export MCR_RUNTIME_DIR
MCR_RUNTIME_DIR="$(mktemp -d /tmp/mcr-demo.XXXXXX)"
PORT="${PORT:-17070}"
cleanup() { "$MCR" stop demo --timeout 3 >/dev/null 2>&1 || true; rm -rf "$MCR_RUNTIME_DIR"; }
trap cleanup EXIT

say "mcr run --detach --name demo -- kvd --port $PORT"
"$MCR" run --detach --name demo -- "$PWD/target/fixtures/kvd" --port "$PORT"

say "a client connects and stores three keys"
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
for kv in "city Lisbon" "lang C" "answer 42"; do
    printf 'SET %s\n' "$kv" >&3
    read -r reply <&3
    echo "SET $kv -> $reply"
done

say "mcr status demo"
"$MCR" status demo

say "mcr ctl demo quiesce: every thread parks at its quiescent point"
"$MCR" ctl demo quiesce
"$MCR" status demo | sed -n '4,5p'

say "the client sends GET city while the server is quiesced"
printf 'GET city\n' >&3
if read -r -t 1 reply <&3; then echo "unexpected answer while quiesced: $reply"; exit 1; fi
echo "no answer yet (the request waits in the socket; nothing is refused)"

say "mcr ctl demo resume"
"$MCR" ctl demo resume
read -r -t 2 reply <&3
echo "GET city -> $reply   (answered on the same connection right after resume)"
printf 'COUNT\n' >&3; read -r reply <&3; echo "COUNT -> $reply"
exec 3>&-

say "mcr status demo --log: the startup operations mcr recorded (replayed by the next version)"
"$MCR" status demo --log | head -8

say "mcr check kvd kvd-v2-layout: what the new build changed in the data (offline)"
"$MCR" check "$PWD/target/fixtures/kvd" "$PWD/target/fixtures/kvd-v2-layout" | head -20 || true

say "a client fills 1000 keys, reads one 7 times, and keeps its connection open with a command half sent"
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
for i in $(seq 1 1000); do printf 'SET key%d value number %d\n' "$i" "$i"; done >&3
for i in $(seq 1 1000); do read -r reply <&3; done
for i in $(seq 1 7); do printf 'GET key42\n' >&3; read -r reply <&3; done
printf 'VERSION\nHITS key42\n' >&3; read -r v <&3; read -r h <&3
echo "before: $v, $h, COUNT -> $(printf 'COUNT\n' >&3; read -r r <&3; echo "$r")"
printf 'SET half' >&3   # no newline yet: the rest comes after the update

say "mcr update demo -- kvd-v2-layout (struct kv_node gains a field, hits widens int -> long)"
"$MCR" update demo -- "$PWD/target/fixtures/kvd-v2-layout" --port "$PORT"

say "the same connection, after the update"
printf ' finished after the update\n' >&3; read -r reply <&3
echo "the half-sent SET completes: $reply"
printf 'VERSION\nHITS key42\nGET key1000\nGET half\nCOUNT\n' >&3
for what in VERSION "HITS key42" "GET key1000" "GET half" COUNT; do read -r reply <&3; echo "$what -> $reply"; done
exec 3>&-

say "an update that must fail: kvd-v2-listen-other binds another port; mcr rolls back"
"$MCR" update demo -- "$PWD/target/fixtures/kvd-v2-listen-other" --port "$PORT" || true
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
printf 'VERSION\n' >&3; read -r reply <&3; echo "still serving: $reply"
exec 3>&-

say "mcr stop demo"
"$MCR" stop demo
