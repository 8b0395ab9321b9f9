#!/usr/bin/env bash
# mcr benchmarks of the state transfer (issue 4): one command reproduces them.
#
# Usage: bench/transfer.sh [--quick]
#
#   1. state transfer time vs open idle connections (kvd, 0/10/100/1000) and vs live
#      objects (kvd, 0/10k/100k/1M keys, code-only updates kvd <-> kvd-v2; 0/1k/10k/100k/1M
#      keys, layout updates kvd <-> kvd-v2-layout): `mcr update --json` phases and
#      transfer figures over several updates; update time vs open sessions (0/10/100) of
#      connd (a process per session) and poold (a worker thread per session), each <-> its
#      v2-layout build; nginx updates with its state and with --fresh-state, and Apache
#      httpd (event MPM) updates with its state, each with 0/10/100 keep-alive
#      connections open (each to its own build)
#   2. allocation micro-benchmark (bench/allocbench.c): plain vs LD_PRELOAD=libmcr.so
#      (inert) vs under `mcr run`, interleaved rounds
#   3. resident memory: kvd with 100 000 keys and nginx idle, plain vs under mcr, side by
#      side
#
# The markdown goes to stdout and replaces the section between the transfer.sh markers
# of bench/results.md (full runs; --quick: target/bench/transfer-quick.md). Raw data:
# target/bench/transfer/. Environment: BENCH_NO_BUILD=1 (use target/release as is),
# BENCH_NGINX=0 (skip nginx), BENCH_HTTPD=0 (skip httpd). Uses 127.0.0.1 only; stops
# everything it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=full
case "${1:-}" in
  "") ;;
  --quick) MODE=quick ;;
  -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) echo "usage: bench/transfer.sh [--quick]" >&2; exit 2 ;;
esac
if [ "$MODE" = full ]; then UPD=8 ALLOC_ROUNDS=20 MEM_ROUNDS=3; else UPD=3 ALLOC_ROUNDS=3 MEM_ROUNDS=1; fi
log() { printf '[transfer %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[transfer] error: %s\n' "$*" >&2; exit 1; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  cargo build --release -q >&2 || die "cargo build --release failed"
fi
make -s -C fixtures OUT="$ROOT/target/fixtures" >&2 || die "building the fixtures failed"
KVD=$ROOT/target/fixtures/kvd KVD2=$ROOT/target/fixtures/kvd-v2-layout KVD_CODE=$ROOT/target/fixtures/kvd-v2
CONND=$ROOT/target/fixtures/connd CONND2=$ROOT/target/fixtures/connd-v2-layout
POOLD=$ROOT/target/fixtures/poold POOLD2=$ROOT/target/fixtures/poold-v2-layout
NGINX=
if [ "${BENCH_NGINX:-1}" = 1 ]; then
  NGINX=$(scripts/nginx/build.sh 2>/dev/null | tail -n 1) || NGINX=
  [ -x "$NGINX" ] || { log "no nginx (scripts/nginx/build.sh failed): nginx rows skipped"; NGINX=; }
fi
HTTPD=
if [ "${BENCH_HTTPD:-1}" = 1 ]; then
  HTTPD=$(scripts/httpd/build.sh 2>/dev/null | tail -n 1) || HTTPD=
  [ -x "$HTTPD" ] || { log "no httpd (scripts/httpd/build.sh failed): httpd rows skipped"; HTTPD=; }
fi
# 1000 client connections in the generator, 1000 more in the server.
ulimit -n 4096 2>/dev/null || [ "$(ulimit -n)" -ge 2100 ] || die "RLIMIT_NOFILE $(ulimit -n) < 2100"

WORK=$(mktemp -d /tmp/mcr-transfer.XXXXXX)
export MCR_RUNTIME_DIR=$WORK/run
mkdir -p "$MCR_RUNTIME_DIR" "$WORK/bin"
cp target/release/mcr target/release/libmcr.so target/release/mcr-bench "$WORK/bin/"
MCR=$WORK/bin/mcr BENCH=$WORK/bin/mcr-bench LIB=$WORK/bin/libmcr.so
cc -O2 -g -Wall -Wextra -o "$WORK/bin/allocbench" bench/allocbench.c || die "cannot build bench/allocbench.c"
RAW=$ROOT/target/bench/transfer
rm -rf "$RAW"; mkdir -p "$RAW"
LOG=$RAW/transfer.log
: >"$LOG"
PIDS=() NAMES=()
cleanup() {
  set +e
  local p n
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for n in "${NAMES[@]}"; do "$MCR" stop "$n" --timeout 3 >>"$LOG" 2>&1; done
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM HUP
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then GIT="$GIT+dirty"; fi
{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"; echo "nproc=$(nproc)"; echo "kernel=$(uname -r)"
  echo "git=$GIT"; echo "mode=$MODE"; echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "command=bench/transfer.sh${1:+ $1}"
} >"$RAW/meta.txt"
T0=$(date +%s)

# --- 1. state transfer -------------------------------------------------------
sweep() { # FILE NAME CONNS KEYS PROTO FRESH PROG_A PROG_B ARGS...
  local file=$1 name=$2 conns=$3 keys=$4 proto=$5 fresh=$6 a=$7 b=$8 summary
  shift 8
  NAMES+=("$name" "$name.next")
  if summary=$("$BENCH" transfer --mcr "$MCR" --name "$name" --a "$a" --b "$b" --port "$PORT" --proto "$proto" \
      --conns "$conns" --keys "$keys" --updates "$UPD" --fresh-state "$fresh" --timeout-ms $((5000 + keys / 20)) \
      --out "$RAW/$file" -- "$@" 2>>"$LOG"); then
    printf '%s\n' "$summary" >>"$LOG"
    log "  $summary"
  else
    log "  $file: FAILED: $(tail -n 1 "$LOG")"
    return 1
  fi
}
PORT=$("$BENCH" free-port)
log "state transfer vs connections (kvd, $UPD updates each)"
for c in 0 4 10 100 1000; do
  # A level that fails (hang, rollback) is not tried with more connections.
  sweep "transfer-conns-$c.tsv" "kc$c" "$c" 0 kvd 0 "$KVD" "$KVD2" --port "$PORT" || break
done
log "state transfer vs live objects, code-only (kvd <-> kvd-v2, $UPD updates each)"
for k in 0 10000 100000 1000000; do
  sweep "transfer-code-$k.tsv" "kq$k" 0 "$k" kvd 0 "$KVD" "$KVD_CODE" --port "$PORT" || break
done
log "state transfer vs live objects, layout (kvd <-> kvd-v2-layout, $UPD updates each)"
for k in 0 1000 10000 100000 1000000; do
  sweep "transfer-keys-$k.tsv" "kk$k" 0 "$k" kvd 0 "$KVD" "$KVD2" --port "$PORT" || break
done
log "update time vs open sessions (connd: a process each; poold: a worker thread each; $UPD updates each)"
for s in 0 10 100; do
  sweep "transfer-sessions-connd-$s.tsv" "sc$s" "$s" 0 connd 0 "$CONND" "$CONND2" --port "$PORT" || break
done
for s in 0 10 100; do
  sweep "transfer-sessions-poold-$s.tsv" "sp$s" "$s" 0 poold 0 "$POOLD" "$POOLD2" --port "$PORT" --threads $((s + 2)) || break
done
if [ -n "$NGINX" ]; then
  log "nginx updates with its state vs keep-alive connections ($UPD updates each)"
  conf=$(scripts/nginx/conf.sh "$WORK/ngx-s" "$PORT" | tail -n 1)
  for c in 0 10 100; do
    sweep "transfer-nginx-state-$c.tsv" "ns$c" "$c" 0 http 0 "$NGINX" "$NGINX" -p "$WORK/ngx-s" -c "$conf" || break
  done
  log "nginx updates with --fresh-state vs keep-alive connections ($UPD updates each)"
  conf=$(scripts/nginx/conf.sh "$WORK/ngx-u" "$PORT" | tail -n 1)
  for c in 0 10 100; do
    sweep "transfer-nginx-$c.tsv" "ng$c" "$c" 0 http 1 "$NGINX" "$NGINX" -p "$WORK/ngx-u" -c "$conf" || break
  done
fi
if [ -n "$HTTPD" ]; then
  log "httpd updates with its state vs keep-alive connections ($UPD updates each)"
  chmod 755 "$WORK" # its children run as nobody
  conf=$(scripts/httpd/conf.sh "$WORK/httpd-s" "$PORT" | tail -n 1)
  for c in 0 10 100; do
    sweep "transfer-httpd-state-$c.tsv" "hs$c" "$c" 0 http 0 "$HTTPD" "$HTTPD" -f "$conf" -DFOREGROUND || break
  done
fi

# --- 2. allocation micro-benchmark -----------------------------------------
log "allocation micro-benchmark: $ALLOC_ROUNDS rounds of plain / LD_PRELOAD / mcr run, rotating order"
ab() { # ROUND VARIANT
  local out
  case $2 in
    plain) out=$("$WORK/bin/allocbench") ;;
    preload) out=$(LD_PRELOAD=$LIB "$WORK/bin/allocbench") ;;
    mcr) out=$("$MCR" run --name "ab$1" -- "$WORK/bin/allocbench") ;;
  esac
  printf '%s\t%s\t%s\n' "$1" "$2" "$(printf '%s' "$out" | awk '{print $1 "\t" $2}')" >>"$RAW/alloc.tsv"
}
V=(plain preload mcr)
for r in $(seq 0 $((ALLOC_ROUNDS - 1))); do
  for i in 0 1 2; do ab "$r" "${V[$(((r + i) % 3))]}"; done
done

# --- 3. resident memory -------------------------------------------------------
rss_of() { "$BENCH" rss --tree "$1" --comm "$2"; }
pss_of() { "$BENCH" pss --tree "$1" --comm "$2"; }
sup_rss() { "$BENCH" rss --pid "$1"; } # the supervisor alone
supervisor_pid() { "$BENCH" supervisor-pid --mcr "$MCR" --name "$1"; }
instance_root() { "$BENCH" instance-root --mcr "$MCR" --name "$1"; }
log "resident memory: kvd with 100000 keys, $MEM_ROUNDS rounds"
for r in $(seq 0 $((MEM_ROUNDS - 1))); do
  pb=$("$BENCH" free-port); pm=$("$BENCH" free-port)
  while [ "$pm" = "$pb" ]; do pm=$("$BENCH" free-port); done
  setsid "$KVD" --port "$pb" 2>>"$LOG" & bp=$!; PIDS+=("$bp")
  NAMES+=("mem$r"); "$MCR" run --detach --name "mem$r" -- "$KVD" --port "$pm" >>"$LOG" 2>&1 || die "mcr run failed"
  "$BENCH" wait-port --port "$pb" || die "baseline kvd did not start"
  "$BENCH" fill --port "$pb" --keys 100000 || die "fill failed"
  "$BENCH" fill --port "$pm" --keys 100000 || die "fill failed"
  sp=$(supervisor_pid "mem$r"); root=$(instance_root "mem$r")
  printf '%s\tbase\tkvd\t%s\n%s\tmcr\tkvd\t%s\n%s\tsupervisor\tkvd\t%s\n' "$r" "$(rss_of "$bp" kvd)" \
    "$r" "$(rss_of "$root" kvd)" "$r" "$(sup_rss "$sp")" >>"$RAW/rss.tsv"
  printf '%s\tbase\tkvd\t%s\n%s\tmcr\tkvd\t%s\n' "$r" "$(pss_of "$bp" kvd)" "$r" "$(pss_of "$root" kvd)" >>"$RAW/pss.tsv"
  kill -TERM "$bp"; wait "$bp" 2>/dev/null || true
  "$MCR" stop "mem$r" --timeout 5 >>"$LOG" 2>&1
done
if [ -n "$NGINX" ]; then
  log "resident memory: nginx idle, $MEM_ROUNDS rounds"
  for r in $(seq 0 $((MEM_ROUNDS - 1))); do
    pb=$("$BENCH" free-port); pm=$("$BENCH" free-port)
    while [ "$pm" = "$pb" ]; do pm=$("$BENCH" free-port); done
    cb=$(scripts/nginx/conf.sh "$WORK/nb$r" "$pb" | tail -n 1); cm=$(scripts/nginx/conf.sh "$WORK/nm$r" "$pm" | tail -n 1)
    "$NGINX" -p "$WORK/nb$r" -c "$cb" >>"$LOG" 2>&1 || die "nginx did not start"
    "$BENCH" wait-port --port "$pb" || die "baseline nginx did not listen"
    bp=$(cat "$WORK/nb$r/logs/nginx.pid"); PIDS+=("$bp")
    NAMES+=("ngm$r"); "$MCR" run --detach --name "ngm$r" -- "$NGINX" -p "$WORK/nm$r" -c "$cm" >>"$LOG" 2>&1 || die "mcr run nginx failed"
    "$BENCH" wait-port --port "$pm" || die "nginx under mcr did not listen"
    sleep 0.5
    sp=$(supervisor_pid "ngm$r"); root=$(instance_root "ngm$r")
    printf '%s\tbase\tnginx\t%s\n%s\tmcr\tnginx\t%s\n%s\tsupervisor\tnginx\t%s\n' "$r" "$(rss_of "$bp" nginx)" \
      "$r" "$(rss_of "$root" nginx)" "$r" "$(sup_rss "$sp")" >>"$RAW/rss.tsv"
    printf '%s\tbase\tnginx\t%s\n%s\tmcr\tnginx\t%s\n' "$r" "$(pss_of "$bp" nginx)" "$r" "$(pss_of "$root" nginx)" \
      >>"$RAW/pss.tsv"
    kill -QUIT "$bp" 2>/dev/null || true
    "$MCR" stop "ngm$r" --timeout 5 >>"$LOG" 2>&1
  done
fi

# --- report -------------------------------------------------------------------
{
  echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "setup=loopback only, nothing pinned, the machine's $(nproc) CPUs shared with whatever else runs. Transfer: for each row a fresh kvd under \`mcr run --detach\` (fixtures/kvd.c), filled with the keys (SET k:i, 16-byte values: node + key + value = 3 heap blocks), then the idle client connections opened one by one (each SETs and GETs its own key), then $UPD \`mcr update --json\` alternating kvd-v2-layout and kvd, 50 ms apart; after each, every connection must still GET its own value and COUNT must be unchanged (else the update counts as failed). Sessions: the same with a fresh connd (fixtures/connd.c, fork per connection) or poold (fixtures/poold.c, --threads sessions + 2) per row and no keys; each connd session sends PID and SETs 3 session variables, each poold session SESSION (answered by the worker thread that then serves it); updates alternate with connd-v2-layout / poold-v2-layout; after each, every session must still answer from the same PID with its 3 variables (connd) or with the same session id (poold), else it died and the update counts as failed. transfer_ms/heap_scan_ms/trace_ms/connections_ms and the page and global counts are those \`mcr update --json\` reports; total_ms is the whole update (drain, quiesce, restart+replay, transfer, commit). nginx: master + 2 workers (scripts/nginx/conf.sh), each connection made 2 keep-alive GETs, updates to the same build with its state and with --fresh-state. httpd: event MPM, master + 2 children (StartServers 2), the same keep-alive GETs, updates to the same build with its state. Allocation micro-benchmark: bench/allocbench.c (40 rounds of building, growing, looking up, half-replacing and freeing a 20 000-entry hash table of heap strings), CPU time of the process, plain / LD_PRELOAD=libmcr.so (no MCR_RUNTIME_SOCKET: only the malloc interposition: mcr's heap, no header per block) / \`mcr run\` (foreground), $ALLOC_ROUNDS rounds in rotating order. Memory: VmRSS and PSS (smaps_rollup) of the server process(es) (kvd; nginx master + workers), plain and under mcr side by side, after the same fill; the mcr supervisor is reported apart. Total run time $(( $(date +%s) - T0 )) s."
} >>"$RAW/meta.txt"
"$BENCH" transfer-report --dir "$RAW" >"$RAW/results.md" || die "report failed"
cat "$RAW/results.md"
if [ "$MODE" = full ]; then
  OUT=$ROOT/bench/results.md
  B='<!-- bench/transfer.sh: begin -->' E='<!-- bench/transfer.sh: end -->'
  touch "$OUT"
  awk -v b="$B" -v e="$E" '$0==b{skip=1} !skip{print} $0==e{skip=0}' "$OUT" >"$WORK/prev.md"
  { cat "$WORK/prev.md"; echo "$B"; cat "$RAW/results.md"; echo "$E"; } >"$OUT"
else
  OUT=$ROOT/target/bench/transfer-quick.md
  cp "$RAW/results.md" "$OUT"
fi
log "saved to ${OUT#"$ROOT"/}"
