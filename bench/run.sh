#!/usr/bin/env bash
# mcr benchmarks: the single command that reproduces the results table.
#
# Usage: bench/run.sh [--quick]
#
#   (default)  full run, about 4 minutes; the table goes to stdout and to
#              bench/results.md
#   --quick    smoke run, about 1 minute, fewer rounds and cycles; the table goes
#              to stdout and to target/bench/results-quick.md (bench/results.md
#              is left alone)
#
# The state transfer, allocation-metadata and memory figures are bench/transfer.sh's;
# its section of bench/results.md is kept.
#
# Figures (see bench/README.md for the method):
#   1. kvd steady-state throughput, without and with mcr, interleaved
#   2. nginx steady-state throughput (wrk -t1 -c32 -d3s --latency), interleaved
#   3. quiescence time (`mcr ctl NAME quiesce --json` -> elapsed_us) for kvd and
#      nginx, idle and under load
#   4. update time (`mcr update NAME --json` -> phases) for kvd <-> kvd-v2 (with
#      the state transfer) and nginx (--fresh-state; Debian patches 1 <-> 2 when both
#      are cached, else the same build),
#      against the cold start of the same binaries under mcr
#   plus the on-CPU time per request of each server's process tree.
#
# Builds what is missing (cargo build --release, the fixtures, the cached nginx;
# installs wrk with apt-get if absent and we are root). Uses 127.0.0.1 only.
# Every process it starts is stopped on exit, Ctrl-C included. Raw data of the
# last run: target/bench/last/.
#
# Environment: BENCH_PIN=0 to not pin (default: servers on CPU 1, load
# generators on CPU 0, when there are at least 2 CPUs); BENCH_ONLY=kvd, nginx,
# quiesce or update to run one part (the table then lacks the other rows, and
# nothing is saved to bench/results.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MODE=full
case "${1:-}" in
  "") ;;
  --quick) MODE=quick ;;
  -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac

if [ "$MODE" = full ]; then
  KVD_ROUNDS=6 KVD_PAIRS=16 KVD_SLICE=0.25     # 6 x 16 x 2 x 0.25 s = 48 s of load
  NGX_ROUNDS=5 NGX_PAIRS=4 WRK_D=3s            # 5 x 4 x 2 wrk runs of 3 s
  CYCLES=200
  UPD_KVD_ROUNDS=10 UPD_KVD_UPDATES=2          # 20 kvd updates, 10 cold starts
  UPD_NGX_ROUNDS=10 UPD_NGX_UPDATES=2          # 20 nginx updates, 10 cold starts
else
  KVD_ROUNDS=2 KVD_PAIRS=8 KVD_SLICE=0.25
  NGX_ROUNDS=1 NGX_PAIRS=6 WRK_D=1s
  CYCLES=100
  UPD_KVD_ROUNDS=4 UPD_KVD_UPDATES=2
  UPD_NGX_ROUNDS=3 UPD_NGX_UPDATES=2
fi
KVD_CONNS=8 KVD_DEPTH=16
WRK_ARGS=(-t1 -c32 "-d$WRK_D" --latency)
GAP_MS=10          # between a resume and the next quiesce
UPD_GAP_MS=100     # after a cold start and after each update
LOAD_MAX_S=120     # hard bound on a background load during the quiescence cycles

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------
for t in cargo make taskset setsid; do
  command -v "$t" >/dev/null 2>&1 || die "'$t' is needed"
done
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing wrk"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >&2; } \
      || die "cannot install wrk"
  else
    die "wrk is not installed (apt-get install wrk)"
  fi
fi
BUILD_NOTE=
if [ "${BENCH_NO_BUILD:-0}" = 1 ] && [ -x target/release/mcr ] && [ -x target/release/mcr-bench ]; then
  log "BENCH_NO_BUILD=1: using the existing release build"
  BUILD_NOTE=" (existing build, not rebuilt)"
else
  log "cargo build --release (mcr, libmcr.so, mcr-bench)"
  cargo build --release --workspace -q >&2 \
    || die "cargo build --release failed (BENCH_NO_BUILD=1 uses the binaries already in target/release)"
fi
MCR=$ROOT/target/release/mcr
BENCH=$ROOT/target/release/mcr-bench
[ -x "$MCR" ] && [ -f "$ROOT/target/release/libmcr.so" ] && [ -x "$BENCH" ] || die "release build incomplete"
log "fixtures"
make -s -C fixtures OUT="$ROOT/target/fixtures" >&2 || die "building the fixtures failed"
KVD=$ROOT/target/fixtures/kvd
KVD2=$ROOT/target/fixtures/kvd-v2
[ -x "$KVD" ] && [ -x "$KVD2" ] || die "no $KVD or $KVD2"
log "nginx (scripts/nginx/build.sh, cached)"
NGINX=$(scripts/nginx/build.sh | tail -n 1) || die "scripts/nginx/build.sh failed"
[ -x "$NGINX" ] || die "no nginx binary at '$NGINX'"

# The update figure updates nginx between two successive versions, the builds with the
# first 1 and 2 Debian patches, when both are in the cache with the same recipe as
# $NGINX (then build.sh only checks them); otherwise it updates $NGINX to itself rather
# than spend minutes building.
same_recipe() { # DIR1 DIR2
  local k
  for k in debver recipe cc_opt ld_opt configure; do
    [ "$(grep "^$k=" "$1/.mcr-build" 2>/dev/null)" = "$(grep "^$k=" "$2/.mcr-build" 2>/dev/null)" ] || return 1
  done
}
NGX_DIR=$(dirname "$(dirname "$NGINX")")
NGX_UA=$NGINX NGX_UB=$NGINX UPD_NGX_DESC="nginx → the same build"
if [ "${NGX_DIR%-p*}" != "$NGX_DIR" ] \
   && same_recipe "$NGX_DIR" "${NGX_DIR%-p*}-p1" && same_recipe "$NGX_DIR" "${NGX_DIR%-p*}-p2"; then
  a=$(scripts/nginx/build.sh --patches 1 | tail -n 1) && b=$(scripts/nginx/build.sh --patches 2 | tail -n 1) \
    && [ -x "$a" ] && [ -x "$b" ] && NGX_UA=$a NGX_UB=$b UPD_NGX_DESC="nginx Debian patches 1 ↔ 2"
fi

NPROC=$(nproc)
PIN=${BENCH_PIN:-1}
[ "$NPROC" -ge 2 ] || PIN=0
if [ "$PIN" = 1 ]; then
  SRV=(taskset -c 1)   # servers (and, under mcr, their supervisor)
  GEN=(taskset -c 0)   # load generators
else
  SRV=() GEN=()
fi

# --- state and cleanup -----------------------------------------------------
WORK=$(mktemp -d /tmp/mcr-bench.XXXXXX)
export MCR_RUNTIME_DIR=$WORK/run
mkdir -p "$MCR_RUNTIME_DIR"
# Run private copies of mcr and libmcr.so (mcr finds the library next to itself): the
# tree is shared, and a concurrent `cargo build` must not swap the runtime mid-run
# (an update would then pair an old version on one build with a new one on another).
mkdir -p "$WORK/bin"
cp "$MCR" "$ROOT/target/release/libmcr.so" "$WORK/bin/" || die "cannot copy mcr to $WORK/bin"
MCR=$WORK/bin/mcr
RAW=$ROOT/target/bench/last
rm -rf "$RAW"
mkdir -p "$RAW"
LOG=$RAW/bench.log
: >"$LOG"

BG_PIDS=()        # load generators, wrk, baseline kvd
NGX_MASTERS=()    # baseline nginx master pids
MCR_NAMES=()      # mcr instances
CLEANED=0

cleanup() {
  [ "$CLEANED" = 1 ] && return 0
  CLEANED=1
  set +e
  local p n
  for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${NGX_MASTERS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for n in "${MCR_NAMES[@]}"; do "$MCR" stop "$n" --timeout 3 >>"$LOG" 2>&1; done
  for p in "${BG_PIDS[@]}" "${NGX_MASTERS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

forget() { # PID: drop from BG_PIDS
  local keep=() p
  for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  BG_PIDS=("${keep[@]}")
}
forget_master() {
  local keep=() p
  for p in "${NGX_MASTERS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  NGX_MASTERS=("${keep[@]}")
}
forget_name() {
  local keep=() p
  for p in "${MCR_NAMES[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  MCR_NAMES=("${keep[@]}")
}

stop_pid() { # PID: SIGTERM, wait up to 5 s, then SIGKILL
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

supervisor_pid() { # NAME
  "$BENCH" supervisor-pid --mcr "$MCR" --name "$1"
}

# Each start_* sets ROOTPID (the root of the server's process tree: the server
# itself, the nginx master, or the init of the mcr instance's PID namespace, parent of
# its supervisor and of the server's orphans) and STOP (how to stop it).
start_kvd_base() { # PORT
  # setsid: its own session, hence its own scheduler autogroup, as under mcr.
  "${SRV[@]}" setsid "$KVD" --port "$1" 2>>"$LOG" &
  ROOTPID=$!
  BG_PIDS+=("$ROOTPID")
  "$BENCH" wait-port --port "$1" --timeout 10 || die "baseline kvd did not start on port $1"
  [ "$(cat /proc/$ROOTPID/comm 2>/dev/null)" = kvd ] || die "pid $ROOTPID is not kvd (setsid forked?)"
  STOP="stop_pid $ROOTPID; forget $ROOTPID"
}

start_mcr() { # NAME PORT PROGRAM ARGS...
  local name=$1 port=$2
  shift 2
  MCR_NAMES+=("$name")
  "${SRV[@]}" "$MCR" run --detach --name "$name" -- "$@" >>"$LOG" 2>&1 \
    || die "mcr run $name failed (see $LOG)"
  "$BENCH" wait-port --port "$port" --timeout 10 || die "$name did not start on port $port"
  ROOTPID=$("$BENCH" instance-root --mcr "$MCR" --name "$name" 2>>"$LOG") || die "no supervisor pid for $name (see $LOG)"
  STOP="\"\$MCR\" stop $name --timeout 5 >>\"\$LOG\" 2>&1 || die 'mcr stop $name failed'; forget_name $name"
}

nginx_prefix() { # DIR PORT -> prints conf path
  scripts/nginx/conf.sh "$1" "$2" | tail -n 1
}

start_nginx_base() { # PORT
  local prefix=$WORK/ngx-base-$1 conf
  conf=$(nginx_prefix "$prefix" "$1")
  rm -f "$prefix/logs/nginx.pid"
  "${SRV[@]}" "$NGINX" -p "$prefix" -c "$conf" >>"$LOG" 2>&1 || die "nginx did not start"
  for _ in $(seq 100); do [ -s "$prefix/logs/nginx.pid" ] && break; sleep 0.05; done
  ROOTPID=$(cat "$prefix/logs/nginx.pid")
  NGX_MASTERS+=("$ROOTPID")
  "$BENCH" wait-port --port "$1" --timeout 10 || die "nginx did not listen on $1"
  STOP="stop_nginx_base $ROOTPID"
}

stop_nginx_base() {
  kill -QUIT "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$1" 2>/dev/null || true
  forget_master "$1"
}

start_nginx_mcr() { # NAME PORT
  local prefix=$WORK/ngx-$1 conf
  conf=$(nginx_prefix "$prefix" "$2")
  start_mcr "$1" "$2" "$NGINX" -p "$prefix" -c "$conf"
}

PORT_A=$("$BENCH" free-port)
PORT_B=$("$BENCH" free-port)
while [ "$PORT_B" = "$PORT_A" ]; do PORT_B=$("$BENCH" free-port); done

# --- meta ------------------------------------------------------------------
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then GIT="$GIT+dirty"; fi
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc=$NPROC"
  echo "cpu=${CPU:-unknown}"
  echo "kernel=$(uname -r)"
  echo "git=$GIT$BUILD_NOTE"
  echo "mode=$MODE"
  echo "loadavg_start=$LOAD0"
  echo "command=${BENCH_ONLY:+BENCH_ONLY=$BENCH_ONLY }bench/run.sh${1:+ $1}"
  echo "update_kvd=kvd ↔ kvd-v2, state transferred"
  echo "update_nginx=$UPD_NGX_DESC, --fresh-state"
} >"$RAW/meta.txt"
log "$MODE run; raw data in $RAW; ports $PORT_A $PORT_B; pinning $([ "$PIN" = 1 ] && echo 'servers CPU 1, load CPU 0' || echo off)"
T_START=$(date +%s)

ONLY=${BENCH_ONLY:-}
case "$ONLY" in ""|kvd|nginx|quiesce|update) ;; *) die "BENCH_ONLY must be kvd, nginx, quiesce or update" ;; esac
part() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# --- 1. kvd throughput -------------------------------------------------------
if part kvd; then
log "kvd throughput: $KVD_ROUNDS rounds x $KVD_PAIRS interleaved pairs x ${KVD_SLICE}s"
for r in $(seq 0 $((KVD_ROUNDS - 1))); do
  # Swap the ports every round, so neither variant always has the same one.
  if [ $((r % 2)) -eq 0 ]; then pb=$PORT_A pm=$PORT_B; else pb=$PORT_B pm=$PORT_A; fi
  start_kvd_base "$pb"; base_root=$ROOTPID; base_stop=$STOP
  start_mcr kvd-tp "$pm" "$KVD" --port "$pm"; mcr_root=$ROOTPID; mcr_stop=$STOP
  "${GEN[@]}" "$BENCH" kvd-ab --port-a "$pb" --port-b "$pm" --pairs "$KVD_PAIRS" --slice "$KVD_SLICE" \
    --conns "$KVD_CONNS" --depth "$KVD_DEPTH" --warmup 0.5 --round "$r" \
    --tree-a "$base_root" --tree-b "$mcr_root" \
    --out "$RAW/kvd-throughput.tsv" --cpu-out "$RAW/kvd-cpu.tsv" >>"$LOG" 2>&1 \
    || die "kvd load failed (see $LOG)"
  eval "$mcr_stop"
  eval "$base_stop"
  log "  round $((r + 1))/$KVD_ROUNDS: $(tail -n 2 "$RAW/kvd-cpu.tsv" | awk -F'\t' '{v[$2]=$3/$4} END{printf "CPU/request mcr/base %.3f", v["mcr"]/v["base"]}')"
done

fi

# --- 2. nginx throughput -----------------------------------------------------
wrk_run() { # PORT TREE_ROOT KEY VARIANT
  local out c0 c1 rps reqs p99
  c0=$("$BENCH" cpu --tree "$2")
  out=$("${GEN[@]}" wrk "${WRK_ARGS[@]}" "http://127.0.0.1:$1/") || die "wrk failed"
  c1=$("$BENCH" cpu --tree "$2")
  printf '%s\n' "$out" >>"$LOG"
  if printf '%s\n' "$out" | grep -qE 'Non-2xx|Socket errors'; then die "wrk saw errors on $4: $out"; fi
  rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/ {print $2}')
  reqs=$(printf '%s\n' "$out" | awk '/requests in/ {print $1}')
  p99=$(printf '%s\n' "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) sub(/ms$/,"",v); else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}')
  [ -n "$rps" ] && [ -n "$reqs" ] || die "cannot parse wrk output: $out"
  printf '%s\t%s\t%s\n' "$3" "$4" "$rps" >>"$RAW/nginx-throughput.tsv"
  printf '%s\t%s\t%s\t%s\n' "$3" "$4" "$((c1 - c0))" "$reqs" >>"$RAW/nginx-cpu.tsv"
  [ -n "$p99" ] && printf '%s\t%s\t%s\n' "$3" "$4" "$p99" >>"$RAW/nginx-latency.tsv"
  printf '%s' "$rps"
}

if part nginx; then
log "nginx throughput: $NGX_ROUNDS rounds x $NGX_PAIRS pairs of wrk ${WRK_ARGS[*]} (2 workers)"
for r in $(seq 0 $((NGX_ROUNDS - 1))); do
  if [ $((r % 2)) -eq 0 ]; then pb=$PORT_A pm=$PORT_B; else pb=$PORT_B pm=$PORT_A; fi
  start_nginx_base "$pb"; base_root=$ROOTPID; base_stop=$STOP
  start_nginx_mcr ngx-tp "$pm"; mcr_root=$ROOTPID; mcr_stop=$STOP
  # warm-up, not recorded
  "${GEN[@]}" wrk -t1 -c32 -d1s "http://127.0.0.1:$pb/" >/dev/null
  "${GEN[@]}" wrk -t1 -c32 -d1s "http://127.0.0.1:$pm/" >/dev/null
  for p in $(seq 0 $((NGX_PAIRS - 1))); do
    key=$((r * 100 + p))
    if [ $(((r * NGX_PAIRS + p) % 2)) -eq 0 ]; then
      b=$(wrk_run "$pb" "$base_root" "$key" base); m=$(wrk_run "$pm" "$mcr_root" "$key" mcr)
    else
      m=$(wrk_run "$pm" "$mcr_root" "$key" mcr); b=$(wrk_run "$pb" "$base_root" "$key" base)
    fi
    log "  round $((r + 1)) pair $((p + 1)): base $b req/s, mcr $m req/s"
  done
  eval "$mcr_stop"
  eval "$base_stop"
done

fi

# --- 3. quiescence -----------------------------------------------------------
quiesce() { # NAME SCENARIO
  local summary
  summary=$("$BENCH" quiesce --mcr "$MCR" --name "$1" --cycles "$CYCLES" --gap-ms "$GAP_MS" \
    --timeout-ms 1000 --max-seconds 90 --out "$RAW/quiesce-$2.tsv" 2>>"$LOG") \
    || die "quiesce cycles on $1 failed (see $LOG)"
  printf '%s\n' "$summary" >>"$LOG"
  log "  $2: $summary"
}

if part quiesce; then
log "quiescence: $CYCLES quiesce/resume cycles per scenario (nothing pinned)"
# Not pinned: pinning would put the supervisor on the CPU of the busy server
# and measure the scheduler's latency more than mcr's.
SRV=() GEN=()
start_mcr kvd-q "$PORT_A" "$KVD" --port "$PORT_A"; kvd_stop=$STOP
quiesce kvd-q kvd-idle
"${GEN[@]}" "$BENCH" kvd-load --port "$PORT_A" --conns "$KVD_CONNS" --depth "$KVD_DEPTH" \
  --warmup 0 --duration "$LOAD_MAX_S" --io-timeout 10 >>"$LOG" 2>&1 &
lp=$!; BG_PIDS+=("$lp")
sleep 0.5
kill -0 "$lp" 2>/dev/null || die "the kvd load generator did not start (see $LOG)"
quiesce kvd-q kvd-load
kill -0 "$lp" 2>/dev/null || die "the kvd load generator died during the cycles (see $LOG)"
stop_pid "$lp"; forget "$lp"
eval "$kvd_stop"

start_nginx_mcr ngx-q "$PORT_B"; ngx_stop=$STOP
quiesce ngx-q nginx-idle
"${GEN[@]}" wrk -t1 -c32 "-d${LOAD_MAX_S}s" "http://127.0.0.1:$PORT_B/" >>"$LOG" 2>&1 &
lp=$!; BG_PIDS+=("$lp")
sleep 0.5
kill -0 "$lp" 2>/dev/null || die "wrk did not start (see $LOG)"
quiesce ngx-q nginx-load
stop_pid "$lp"; forget "$lp"
eval "$ngx_stop"
fi

# --- 4. update time ------------------------------------------------------------
update_cycles() { # NAME SCENARIO FRESH ROUNDS UPDATES PORT PROG_A PROG_B ARGS...
  local name=$1 sc=$2 fresh=$3 rounds=$4 updates=$5 port=$6 a=$7 b=$8 summary
  shift 8
  # mcr-bench starts and stops the instance itself; listed here for the cleanup.
  MCR_NAMES+=("$name" "$name.next")
  summary=$("$BENCH" update --mcr "$MCR" --name "$name" --a "$a" --b "$b" --rounds "$rounds" --updates "$updates" \
    --port "$port" --gap-ms "$UPD_GAP_MS" --timeout-ms 10000 --max-seconds 120 --out "$RAW/update-$sc.tsv" \
    --fresh-state "$fresh" \
    -- "$@" 2>>"$LOG") || die "update cycles on $name failed (see $LOG)"
  forget_name "$name"; forget_name "$name.next"
  printf '%s\n' "$summary" >>"$LOG"
  log "  $sc: $summary"
}

if part update; then
log "update time: kvd $UPD_KVD_ROUNDS x $UPD_KVD_UPDATES, $UPD_NGX_DESC $UPD_NGX_ROUNDS x $UPD_NGX_UPDATES (rounds x updates; nothing pinned)"
# Not pinned, for the same reason as the quiescence runs: the CLI, both supervisors
# and both versions of the server all run during an update.
SRV=() GEN=()
update_cycles kvd-u kvd 0 "$UPD_KVD_ROUNDS" "$UPD_KVD_UPDATES" "$PORT_A" "$KVD" "$KVD2" --port "$PORT_A"
conf=$(nginx_prefix "$WORK/ngx-u" "$PORT_B")
# nginx with --fresh-state: mcr cannot trace nginx's heap yet.
update_cycles ngx-u nginx 1 "$UPD_NGX_ROUNDS" "$UPD_NGX_UPDATES" "$PORT_B" "$NGX_UA" "$NGX_UB" -p "$WORK/ngx-u" -c "$conf"
fi

# --- report ------------------------------------------------------------------
SETUP="loopback 127.0.0.1 only; load generator and servers share the machine's $NPROC CPUs"
if [ "$PIN" = 1 ]; then SETUP="$SETUP (throughput runs: servers and their mcr supervisor pinned to CPU 1, load generators to CPU 0; quiescence runs: nothing pinned)"; fi
SETUP="$SETUP. kvd: single-threaded epoll server (fixtures/kvd.c); mcr-bench, 1 thread, $KVD_CONNS connections x $KVD_DEPTH pipelined SET/GET, closed loop; baseline and mcr instance run side by side (same binary, each started fresh per round, ports swapped per round), load alternates between them in ${KVD_SLICE} s slices, ABBA order, $KVD_ROUNDS rounds x $KVD_PAIRS pairs. nginx 1.22.1 (scripts/nginx, master + 2 workers, static index.html, keep-alive): wrk ${WRK_ARGS[*]}, $NGX_ROUNDS rounds x $NGX_PAIRS ABBA pairs, 1 s warm-up each. Ratios are medians of per-pair ratios, spread = min–max. CPU per request = on-CPU time of the server's whole process tree (/proc schedstat; under mcr the supervisor is included) / requests served. Quiescence: $CYCLES cycles of \`mcr ctl quiesce --json\` + \`mcr ctl resume\`, ${GAP_MS} ms apart; under load = the same kvd / wrk load running meanwhile; elapsed_us is measured by the supervisor. Updates (idle servers, nothing pinned): rounds of a cold start (\`mcr run --detach\`, A or B alternately), back-and-forth \`mcr update --json\` between the two versions ${UPD_GAP_MS} ms apart, \`mcr stop\` (kvd $UPD_KVD_ROUNDS x $UPD_KVD_UPDATES, nginx $UPD_NGX_ROUNDS x $UPD_NGX_UPDATES); phases as \`mcr update\` reports them (quiesce = its quiesce request round trip; restart+replay = launch of the new version until every thread is parked; commit = retire the old version and take over; total also includes the drain and, for kvd, the state transfer, which bench/transfer.sh breaks down; nginx is updated with --fresh-state); original startup = the cold start from the server's exec (\`startup_from_exec_ms\` of \`mcr status\`: the supervisor's fork of the server to completed startup, the span restart+replay covers), the server's own \`startup_ms\` (from the runtime's constructor) and the wall time of the whole \`mcr run --detach\` of the same binaries. Total run time $(( $(date +%s) - T_START )) s."
{
  echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "setup=$SETUP"
} >>"$RAW/meta.txt"

if [ "$MODE" = full ] && [ -z "$ONLY" ]; then OUT=$ROOT/bench/results.md; else OUT=$ROOT/target/bench/results-$MODE${ONLY:+-$ONLY}.md; fi
"$BENCH" report --dir "$RAW" >"$RAW/results.md" || die "report failed"
# Keep the section bench/transfer.sh wrote between its markers.
KEEP=$(awk '$0=="<!-- bench/transfer.sh: begin -->"{k=1} k{print} $0=="<!-- bench/transfer.sh: end -->"{k=0}' "$OUT" 2>/dev/null || true)
{ cat "$RAW/results.md"; [ -z "$KEEP" ] || printf '\n%s\n' "$KEEP"; } >"$OUT"
cat "$RAW/results.md"
log "saved to ${OUT#"$ROOT"/}"
