#!/usr/bin/env bash
# The soak of issue 12: many consecutive live updates under load, then proof that nothing
# was lost and nothing grew.
#
# Usage: scripts/soak.sh [--short] [--kvd N] [--poold N] [--connd N] [--sessions N] [--rate R]
#                        [--fill K]
#
#   kvd    N updates (default 1000) alternating kvd -> kvd-v2-layout -> kvd ... while
#          `mcr-bench kvd-soak` (crates/bench/src/soak.rs) writes and reads keys of its own
#          on 4 connections (SET+GET pairs, every reply checked, R requests/s, default
#          20000; 0: as fast as it can) and --sessions held connections (default 20) each
#          keep a key of their own (GET it, and HITS counts those GETs across layouts).
#   poold  N updates (default 100) poold <-> poold-v2-layout with --sessions sessions open,
#          each idle in a worker thread of its own (--threads sessions + 2).
#   connd  N updates (default 100) connd <-> connd-v2-layout with --sessions sessions open,
#          a process each (3 session variables).
#   --fill K kvd starts with K keys of its own besides the writer's (`mcr-bench fill`),
#          read back after the last update (`mcr-bench fill-check`): issue 13's "100
#          updates back and forth with 100 000 keys" is --kvd 100 --fill 100000.
#   --short  30 kvd + 20 poold + 20 connd updates (about a minute), the size CI can run.
#   N = 0 skips a server; an odd N is rounded up, so the first and last figures are taken
#   on the same build.
#
# Checks. Every update must commit (else its output is printed and the soak stops).
# After every update a fresh connection must get the new build's VERSION. Every 10
# updates (5 with --short) and after the last: every held connection must answer as
# itself (its key, its session id and command count, its PID, variables and count)
# and the writer must have had no failed request; at the end every key the writer got
# an OK for must read back its last acknowledged value. Any of these stops the soak.
# Growth. After update FIRST (10; 2 when there are fewer than 20) and after the last, the
# script takes: the server process(es)' memory, the VmRSS of the supervisor and the init
# (PID 1 of the version's namespace, the supervisor's parent); descriptors of each, and
# the server processes' memory mappings (/proc/PID/maps lines; also at every check, in
# trend.tsv); processes in the version's PID namespace and processes running the soak's
# copies of the binaries anywhere (an old version or a CLI left behind); files in the
# runtime dir and in /tmp.
# The server's memory is what it holds (mem_server_kb): its processes' private anonymous
# pages (RssAnon) plus the allocated pages (st_blocks) of every memfd they map, each
# memfd once however many mappings and processes map it (found through
# /proc/PID/map_files, which needs root or CAP_SYS_ADMIN: without it the figure is "-",
# not checked; as root, a memfd it cannot reach in 3 samples fails the check).
# mcr's heap lives in memfds, mapped shared or copy-on-write over the memfd, and after an
# update the new version maps the old version's memfds: VmRSS counts only the memfd pages
# a process touched, so after each update it measures what the requests touched since,
# not what the heap holds (kvd with 100 000 keys: VmRSS between 6.7 and 7.7 MB from one
# update to the next, the memfds flat). VmRSS (rss_server_kb) is kept in the tables, not
# checked. mem_server_kb and RssAnon apart may grow by max(5%, 256 KiB): a few
# pages of allocator and kernel noise on processes of 1-80 MB, while a leak of even
# 300 bytes per update exceeds it over 990 updates. The supervisor and the init are new
# processes at every update whose VmRSS moves by several hundred kB from one version to
# the next (which pages of the mcr binary and its thread arenas they touched): max(20%,
# 1 MiB). Counts must not grow at all; each is the least of 3 samples 100 ms apart, so
# a connection or a session process that is just closing is not taken for a leak.
# The first updates are a warm-up, not measured: poold's heap settles into one more
# adopted region (7 mappings: 101 -> 108) between its 5th and 10th update, then stays
# there (108 at updates 10, 20, 30 and 40).
# Memory and mappings are also sampled at every check (trend.tsv): the summary gives
# their range.
# After `mcr stop`, none of the soak's server or mcr processes may be left.
#
# The run takes place in a private mount namespace with a tmpfs on /tmp (as root; else
# /tmp is counted as it is, shared with whatever else runs, and only reported), so the
# /tmp count is exactly what the soak, mcr and the servers made. Prints a markdown
# summary; exits 0 when everything passed, 1 otherwise, 2 on a usage error. Raw data:
# target/soak/ (updates.tsv: every update's total_ms; measure.tsv, trend.tsv, soak.log).
# Environment: SOAK_NO_BUILD=1 (use target/release and target/fixtures as they are).
# Loopback only; every loop is bounded; stops every instance and removes its files.
set -Eeuo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ARGV=("$@")
usage() { echo "usage: scripts/soak.sh [--short] [--kvd N] [--poold N] [--connd N] [--sessions N] [--rate R] [--fill K]" >&2; exit 2; }
KVD_N=1000 POOLD_N=100 CONND_N=100 SESSIONS=20 RATE=20000 CHECK_EVERY=10 FILL=0
while [ $# -gt 0 ]; do
  case $1 in
    --short) KVD_N=30 POOLD_N=20 CONND_N=20 CHECK_EVERY=5 ;;
    --kvd | --poold | --connd | --sessions | --rate | --fill)
      [[ ${2:-} =~ ^[0-9]+$ ]] || usage
      case $1 in --kvd) KVD_N=$2 ;; --poold) POOLD_N=$2 ;; --connd) CONND_N=$2 ;; --sessions) SESSIONS=$2 ;; --rate) RATE=$2 ;; --fill) FILL=$2 ;; esac
      shift ;;
    -h | --help) sed -n '2,/^set -Eeuo/{/^set -Eeuo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) usage ;;
  esac
  shift
done
[ "$SESSIONS" -ge 1 ] && [ "$SESSIONS" -le 200 ] || { echo "--sessions must be 1..200" >&2; exit 2; }
even() { echo $(($1 + $1 % 2)); }
KVD_N=$(even "$KVD_N") POOLD_N=$(even "$POOLD_N") CONND_N=$(even "$CONND_N")

say() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Build (outside the namespace: cargo and make keep their own temporary files), then run
# the rest in a private mount namespace with a /tmp of its own.
if [ "${SOAK_IN_NS:-0}" != 1 ]; then
  if [ "${SOAK_NO_BUILD:-0}" != 1 ]; then
    say "cargo build --release --workspace; fixtures"
    nice -n 5 cargo build --release --workspace -q >&2 || { say "cargo build failed"; exit 1; }
    make -s -C fixtures OUT="$ROOT/target/fixtures" >&2 || { say "building the fixtures failed"; exit 1; }
  fi
  if [ "$(id -u)" = 0 ] && unshare --mount --propagation private true 2>/dev/null; then
    exec unshare --mount --propagation private env SOAK_IN_NS=1 "$0" "${ARGV[@]}"
  fi
  say "cannot make a private mount namespace (not root?): /tmp is shared, its count is only reported"
  PRIVATE_TMP=0
else
  mount -t tmpfs -o mode=1777,size=512m soak-tmp /tmp || { say "cannot mount a tmpfs on /tmp"; exit 1; }
  PRIVATE_TMP=1
fi

trap '' PIPE # a write to a connection the server closed must fail, not kill the soak
WORK=$(mktemp -d /tmp/mcr-soak.XXXXXX)
BIN=$WORK/bin
export MCR_RUNTIME_DIR=$WORK/run
mkdir -p "$MCR_RUNTIME_DIR" "$BIN"
for f in kvd kvd-v2-layout poold poold-v2-layout connd connd-v2-layout; do
  [ -x "target/fixtures/$f" ] || { say "target/fixtures/$f missing: run without SOAK_NO_BUILD"; exit 1; }
  cp "target/fixtures/$f" "$BIN/"
done
cp target/release/mcr target/release/libmcr.so target/release/mcr-bench "$BIN/"
MCR=$BIN/mcr BENCH=$BIN/mcr-bench
RAW=$ROOT/target/soak
rm -rf "$RAW"
mkdir -p "$RAW"
LOG=$RAW/soak.log
: >"$LOG"
: >"$RAW/updates.tsv"
printf 'kind\tupdate\tmem_server_kb\tanon_server_kb\trss_server_kb\trss_supervisor_kb\trss_init_kb\tmaps_server\n' >"$RAW/trend.tsv"
printf 'kind\tpoint\tupdate\tmem_server_kb\tanon_server_kb\trss_server_kb\trss_supervisor_kb\trss_init_kb\tfds_server\tmaps_server\tfds_supervisor\tfds_init\tprocs_namespace\tprocs_soak\tfiles_runtime\tfiles_tmp\tlog_bytes\n' >"$RAW/measure.tsv"
NAMES=() WRITER=
cleanup() {
  trap - ERR
  set +e
  local n p
  [ -n "$WRITER" ] && kill -TERM "$WRITER" 2>/dev/null
  for n in "${NAMES[@]}"; do timeout 30 "$MCR" stop "$n" --timeout 3 >>"$LOG" 2>&1; done
  # Whatever still runs one of the soak's binaries was started by this soak.
  for p in $(soak_pids); do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
ERR_SAID=0
trap '[ "$ERR_SAID" = 1 ] || say "error: line $LINENO: $BASH_COMMAND failed"; ERR_SAID=1' ERR
trap 'say interrupted; exit 130' INT TERM HUP
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then GIT="$GIT+dirty"; fi
T0=$(date +%s)

# Stops the soak: prints what failed, the table so far, and exits 1.
abort() {
  say "FAILED: $*"
  FAILED="$*"
  if [ -n "$CUR_KIND" ]; then
    SERVER_ROWS+=("$CUR_KIND|stopped at update $CUR_U of $CUR_N|$((SECONDS - CUR_T0))|$HELD_CHECKS|$(tail -n 1 "$WORK/writer.out" 2>/dev/null || true)")
    CUR_KIND=
  fi
  summary
  exit 1
}

# --- processes, descriptors, files ---------------------------------------------
# The host PIDs of every process running one of the soak's binaries but mcr-bench.
soak_pids() {
  find /proc -mindepth 2 -maxdepth 2 -name exe -lname "$BIN/*" ! -lname "$BIN/mcr-bench" 2>/dev/null |
    sed 's|^/proc/\([0-9]*\)/exe$|\1|;t;d' || true # processes come and go while find reads /proc
}
descendants() {
  local p
  for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$p"
    descendants "$p"
  done
}
fd_count() { # PIDS...: descriptors of them all
  local p n=0 c
  for p; do
    c=$({ find /proc/"$p"/fd -mindepth 1 -maxdepth 1 2>/dev/null || true; } | wc -l)
    n=$((n + c))
  done
  echo "$n"
}
mem_kb() { # FIELD PIDS...: the sum of a /proc/PID/status field (kB) over them
  local f=$1 p n=0 c
  shift
  for p; do
    c=$(awk -v f="$f:" '$1==f{print $2}' /proc/"$p"/status 2>/dev/null || true)
    n=$((n + ${c:-0}))
  done
  echo "$n"
}
least_of_3() { # CMD...: the least of 3 samples 100 ms apart
  local a b c
  a=$("$@")
  sleep 0.1
  b=$("$@")
  sleep 0.1
  c=$("$@")
  printf '%s\n' "$a" "$b" "$c" | sort -n | head -n 1
}
in_namespace() { readlink /proc/[0-9]*/ns/pid 2>/dev/null | grep -cxF "$1" || true; }
soak_count() { soak_pids | wc -l; }
tmp_files() { { find /tmp -mindepth 1 \( -path "$WORK" -prune \) -o -print 2>/dev/null || true; } | wc -l; }
run_files() { { find "$MCR_RUNTIME_DIR" -mindepth 1 2>/dev/null || true; } | wc -l; }
server_fds() { fd_count $(descendants "$1"); }
map_count() { # PIDS...: memory mappings of them all
  local p n=0 c
  for p; do
    c=$(wc -l </proc/"$p"/maps 2>/dev/null || echo 0)
    n=$((n + c))
  done
  echo "$n"
}
server_maps() { map_count $(descendants "$1"); }
# The heap's pages: a server's heap lives in memfds (mapped shared, or copy-on-write over
# the memfd; after an update the new version maps the old version's memfds too), whose
# pages VmRSS counts only once the process touched them, so VmRSS moves with what the
# writer touched since the update. What the heap holds is each memfd's allocated size.
memfd_kb() { # PIDS...: kB allocated by the memfds they map (st_blocks), each memfd once
  local p try links kb
  # Each link is tried, so a memfd is measured if any one of its mappings can be reached;
  # a mapping that changed between reading maps and stat (the heap grows with mremap)
  # leaves its memfd out, and the whole sample is taken again (3 times at most).
  for ((try = 0; try < 3; try++)); do
    ((try == 0)) || sleep 0.1
    links=$(for p; do awk -v d="/proc/$p/map_files/" '$6 ~ /^\/memfd:/ {print d $1, $5}' /proc/"$p"/maps 2>/dev/null || true; done)
    [ -n "$links" ] || { echo 0; return; }
    # want INODE: every memfd mapped; got INODE DEV:INODE BLOCKS BLOCKSIZE: what stat reached.
    if kb=$({ awk '{print "want", $2}' <<<"$links"; awk '{print $1}' <<<"$links" | xargs stat -L -c 'got %i %d:%i %b %B' 2>/dev/null || true; } |
      awk '$1 == "want" { want[$2] = 1; next }
        { have[$2] = 1 }
        !($3 in seen) { seen[$3] = 1; kb += $4 * $5 / 1024 }
        END { for (i in want) if (!(i in have)) exit 1; printf "%d\n", kb }'); then
      echo "$kb"
      return
    fi
  done
  echo - # /proc/PID/map_files needs root (CAP_SYS_ADMIN), or the mappings kept changing
}
# What the server's memory holds: its private anonymous pages (RssAnon) and its heap
# memfds' pages; "-" when the memfds could not be measured.
server_mem() { # SUPERVISOR_PID
  local pids m
  pids=$(descendants "$1")
  # shellcheck disable=SC2086 # word splitting of PID lists is meant
  m=$(memfd_kb $pids)
  # shellcheck disable=SC2086
  if [ "$m" = - ]; then echo -; else echo $(($(mem_kb RssAnon $pids) + m)); fi
}

# The host PIDs of instance NAME's supervisor and init (its parent) in SUP and INIT.
version_pids() { # NAME U
  SUP=$("$BENCH" supervisor-pid --mcr "$MCR" --name "$1") || abort "mcr status $1 failed after update $2"
  INIT=$(awk '/^PPid:/{print $2}' /proc/"$SUP"/status)
}

# trend KIND U NAME: memory at every check (trend.tsv), to see a slow growth's shape.
trend() {
  version_pids "$3" "$2"
  # shellcheck disable=SC2046 # word splitting of PID lists is meant
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(server_mem "$SUP")" \
    "$(mem_kb RssAnon $(descendants "$SUP"))" "$(mem_kb VmRSS $(descendants "$SUP"))" \
    "$(mem_kb VmRSS "$SUP")" "$(mem_kb VmRSS "$INIT")" "$(server_maps "$SUP")" >>"$RAW/trend.tsv"
}

# measure KIND POINT UPDATE NAME: one row of measure.tsv.
measure() {
  local kind=$1 point=$2 u=$3 name=$4 sup init ns
  version_pids "$name" "$u"
  sup=$SUP init=$INIT
  ns=$(readlink /proc/"$init"/ns/pid)
  [ "$(readlink /proc/"$sup"/ns/pid)" = "$ns" ] || abort "$kind: the supervisor ($sup) is not in its parent's ($init) PID namespace"
  # shellcheck disable=SC2046 # word splitting of PID lists is meant
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$point" "$u" \
    "$(server_mem "$sup")" "$(mem_kb RssAnon $(descendants "$sup"))" "$(mem_kb VmRSS $(descendants "$sup"))" \
    "$(mem_kb VmRSS "$sup")" "$(mem_kb VmRSS "$init")" \
    "$(least_of_3 server_fds "$sup")" "$(least_of_3 server_maps "$sup")" "$(least_of_3 fd_count "$sup")" "$(least_of_3 fd_count "$init")" \
    "$(least_of_3 in_namespace "$ns")" "$(least_of_3 soak_count)" \
    "$(least_of_3 run_files)" "$(least_of_3 tmp_files)" "$(stat -c %s "$MCR_RUNTIME_DIR/$name.log")" >>"$RAW/measure.tsv"
}

# --- clients (bash /dev/tcp, loopback) -------------------------------------------
# ask FD LINE: send LINE, read one reply line into REPLY (10 s at most).
ask() {
  REPLY=
  printf '%s\n' "$2" >&"$1" 2>/dev/null || return 1
  IFS= read -r -t 10 REPLY <&"$1" || return 1
  REPLY=${REPLY%$'\r'}
}
connect() { # PORT: a new connection, its descriptor in CONN
  CONN=
  { exec {CONN}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null
}

# After an update: a fresh connection gets the new build's version.
fresh_check() { # KIND PORT VERSION U
  local fd
  connect "$2" || abort "$1: no new connection after update $4"
  fd=$CONN
  ask "$fd" VERSION || abort "$1: a new connection after update $4: no reply to VERSION"
  [ "$REPLY" = "VERSION $1 $3" ] || abort "$1: a new connection after update $4: '$REPLY', wanted 'VERSION $1 $3'"
  ask "$fd" QUIT && [ "$REPLY" = BYE ] || abort "$1: a new connection after update $4: QUIT replied '$REPLY'"
  exec {fd}>&-
}

HELD=() IDENT=() SENT=()
open_held() { # KIND PORT
  local kind=$1 i r
  HELD=() IDENT=() SENT=()
  for ((i = 0; i < SESSIONS; i++)); do
    connect "$2" || abort "$kind: cannot open held connection $i"
    HELD[i]=$CONN
    case $kind in
      kvd)
        IDENT[i]="held-$i-$RANDOM$RANDOM"
        ask "${HELD[i]}" "SET h:$i ${IDENT[i]}" && [ "$REPLY" = OK ] || abort "kvd: held connection $i: SET replied '$REPLY'"
        SENT[i]=0 ;; # GETs of h:i so far (HITS must count them)
      poold)
        ask "${HELD[i]}" SESSION || abort "poold: session $i: no reply to SESSION"
        [[ $REPLY =~ ^SESSION\ id=([0-9]+)\ cmds=1$ ]] || abort "poold: session $i: SESSION replied '$REPLY'"
        IDENT[i]=${BASH_REMATCH[1]} SENT[i]=1 ;;
      connd)
        ask "${HELD[i]}" PID && [[ $REPLY =~ ^PID\ [0-9]+$ ]] || abort "connd: session $i: PID replied '$REPLY'"
        IDENT[i]=$REPLY
        for r in colour shape size; do
          ask "${HELD[i]}" "SET $r:$i $r-of-session-$i" && [ "$REPLY" = OK ] || abort "connd: session $i: SET replied '$REPLY'"
        done
        SENT[i]=4 ;;
    esac
  done
}

# Every held connection answers as itself; else PROBLEM says which did not, and how.
check_held() { # KIND U
  local kind=$1 u=$2 i fd r want
  PROBLEM=
  for ((i = 0; i < SESSIONS; i++)); do
    fd=${HELD[i]}
    case $kind in
      kvd)
        ask "$fd" "GET h:$i" && [ "$REPLY" = "VALUE ${IDENT[i]}" ] ||
          PROBLEM="kvd: held connection $i after update $u: GET h:$i replied '$REPLY', wanted 'VALUE ${IDENT[i]}'"
        [ -n "$PROBLEM" ] && return 1
        SENT[i]=$((SENT[i] + 1))
        ask "$fd" "HITS h:$i" && [ "$REPLY" = "HITS ${SENT[i]}" ] ||
          PROBLEM="kvd: held connection $i after update $u: HITS h:$i replied '$REPLY', wanted 'HITS ${SENT[i]}'" ;;
      poold)
        SENT[i]=$((SENT[i] + 1))
        want="SESSION id=${IDENT[i]} cmds=${SENT[i]}"
        ask "$fd" SESSION && [ "$REPLY" = "$want" ] || PROBLEM="poold: session $i after update $u: '$REPLY', wanted '$want'" ;;
      connd)
        for r in colour shape size; do
          ask "$fd" "GET $r:$i" && [ "$REPLY" = "VALUE $r-of-session-$i" ] ||
            { PROBLEM="connd: session $i after update $u: GET $r:$i replied '$REPLY'" && return 1; }
        done
        ask "$fd" PID && [ "$REPLY" = "${IDENT[i]}" ] ||
          { PROBLEM="connd: session $i after update $u: '$REPLY', '${IDENT[i]}' before the updates" && return 1; }
        SENT[i]=$((SENT[i] + 5))
        ask "$fd" STATS && [ "$REPLY" = "STATS sessions=${SENT[i]}" ] ||
          PROBLEM="connd: session $i after update $u: STATS replied '$REPLY', wanted 'STATS sessions=${SENT[i]}'" ;;
    esac
    [ -z "$PROBLEM" ] || return 1
  done
  HELD_CHECKS=$((HELD_CHECKS + 1))
}
close_held() {
  local fd
  for fd in "${HELD[@]}"; do exec {fd}>&-; done
  HELD=()
}

# --- the writer (kvd) -------------------------------------------------------------
writer_field() { # NAME: a figure of the writer's progress file
  { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" "$WORK/progress" 2>/dev/null || true; } | head -n 1 # none in the first second
}
check_writer() { # U
  kill -0 "$WRITER" 2>/dev/null || abort "kvd: the writer ended before update $1: $(cat "$WORK/writer.err")"
  local f
  f=$(writer_field failed)
  [ "${f:-0}" = 0 ] || abort "kvd: $f failed requests by update $1: $(head -n 5 "$WORK/writer.err")"
}
stop_writer() {
  local i
  : >"$WORK/stop"
  # The writer ends its batches (30 s I/O timeout at most) and reads every key back.
  for ((i = 0; i < 1200; i++)); do
    kill -0 "$WRITER" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$WRITER" 2>/dev/null && abort "kvd: the writer did not end within 120 s of being told to stop"
  WRITER_RC=0
  wait "$WRITER" || WRITER_RC=$?
  WRITER=
  cat "$WORK/writer.err" >>"$LOG"
}

# --- one server ---------------------------------------------------------------------
update() { # KIND NAME U TO ARGS...: 1 when it did not commit (its output printed)
  local kind=$1 name=$2 u=$3 to=$4 total
  rc=0
  shift 4
  timeout -k 5 60 "$MCR" update "$name" --json --timeout 10000 -- "$to" "$@" >"$WORK/update.out" 2>"$WORK/update.err" || rc=$?
  if [ "$rc" != 0 ] || ! grep -q '"committed": true' "$WORK/update.out"; then
    {
      echo "--- mcr update $name -- ${to##*/} (update $u, exit $rc): stdout"
      cat "$WORK/update.out"
      echo "--- stderr"
      cat "$WORK/update.err"
      echo "--- instance log (last 20 lines)"
      tail -n 20 "$MCR_RUNTIME_DIR/$name.log" 2>/dev/null
    } | tee -a "$LOG" >&2
    return 1
  fi
  total=$(sed -n 's/^ *"total_ms": \([0-9.]*\).*/\1/p' "$WORK/update.out" | head -n 1)
  printf '%s\t%s\t%s\t%s\n' "$kind" "$u" "${to##*/}" "${total:--}" >>"$RAW/updates.tsv"
}

# After an update that did not commit: does the old version serve as before? (AFTER_FAILED)
postmortem() { # KIND PORT OLD_VERSION
  local kind=$1 fd served=no held writer=
  if connect "$2"; then
    fd=$CONN
    ask "$fd" VERSION && [ "$REPLY" = "VERSION $kind $3" ] && served=yes
    exec {fd}>&-
  fi
  if check_held "$kind" after; then held="all $SESSIONS answer as before"; else held="$PROBLEM"; fi
  if [ "$kind" = kvd ] && [ -n "$WRITER" ]; then
    stop_writer
    writer="; writer: $(tail -n 1 "$WORK/writer.out" 2>/dev/null || true)"
  fi
  AFTER_FAILED="After the update that did not commit: the old version (VERSION $kind $3) answers a new connection: $served; held connections: $held$writer."
  say "$AFTER_FAILED"
}

run_server() { # KIND N
  local kind=$1 n=$2 name=soak-$1 port a b first u to ver args
  [ "$n" -gt 0 ] || return 0
  port=$("$BENCH" free-port)
  a=$BIN/$kind b=$BIN/$kind-v2-layout
  args=(--port "$port")
  [ "$kind" = poold ] && args+=(--threads $((SESSIONS + 2)))
  first=10
  [ "$n" -lt 20 ] && first=2
  NAMES+=("$name")
  HELD_CHECKS=0
  "$MCR" run --detach --name "$name" -- "$a" "${args[@]}" >>"$LOG" 2>&1 || abort "$kind: mcr run failed: $(tail -n 3 "$LOG")"
  "$BENCH" wait-port --port "$port" || abort "$kind: nothing listens on $port"
  if [ "$kind" = kvd ] && [ "$FILL" -gt 0 ]; then
    "$BENCH" fill --port "$port" --keys "$FILL" || abort "kvd: filling $FILL keys failed"
  fi
  open_held "$kind" "$port"
  if [ "$kind" = kvd ]; then
    rm -f "$WORK/stop" "$WORK/progress"
    "$BENCH" kvd-soak --port "$port" --stop-file "$WORK/stop" --rate "$RATE" --max-seconds 7200 \
      --progress "$WORK/progress" >"$WORK/writer.out" 2>"$WORK/writer.err" &
    WRITER=$!
  fi
  say "$kind (127.0.0.1:$port): $n updates ${a##*/} <-> ${b##*/}, $SESSIONS held $([ "$kind" = kvd ] && echo "connections + writer at $RATE req/s" || echo sessions)"
  local t0=$SECONDS
  CUR_KIND=$kind CUR_N=$n CUR_T0=$t0
  for ((u = 1; u <= n; u++)); do
    CUR_U=$u
    if ((u % 2)); then to=$b ver=2; else to=$a ver=1; fi
    update "$kind" "$name" "$u" "$to" "${args[@]}" || {
      postmortem "$kind" "$port" $((3 - ver))
      abort "$kind: update $u (to ${to##*/}) did not commit (exit $rc)"
    }
    fresh_check "$kind" "$port" "$ver" "$u"
    # A measurement comes after a check, so every version measured ran the same requests.
    if ((u % CHECK_EVERY == 0 || u == n || u == first)); then
      check_held "$kind" "$u" || abort "$PROBLEM"
      [ "$kind" = kvd ] && check_writer "$u"
      trend "$kind" "$u" "$name"
    fi
    if ((u == first)); then measure "$kind" first "$u" "$name"; fi
    if ((u == n)); then measure "$kind" last "$u" "$name"; fi
    if ((u % 100 == 0)); then say "$kind: $u updates"; fi
  done
  local secs=$((SECONDS - t0)) wline=
  if [ "$kind" = kvd ]; then
    stop_writer
    wline=$(tail -n 1 "$WORK/writer.out")
    [[ $wline == requests=* ]] || abort "kvd: the writer printed no result (exit $WRITER_RC): $(tail -n 5 "$WORK/writer.err")"
    [ "$WRITER_RC" = 0 ] || abort "kvd: writer: $wline; $(grep -v '^$' "$WORK/writer.err" | head -n 5)"
  fi
  check_held "$kind" end || abort "$PROBLEM"
  if [ "$kind" = kvd ] && [ "$FILL" -gt 0 ]; then
    "$BENCH" fill-check --port "$port" --keys "$FILL" || abort "kvd: a key of the $FILL filled ones was lost"
    say "kvd: all $FILL filled keys read back"
  fi
  close_held
  timeout 60 "$MCR" stop "$name" --timeout 5 >>"$LOG" 2>&1 || abort "$kind: mcr stop failed"
  local left i
  for ((i = 0; i < 100; i++)); do
    left=$(soak_count)
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  [ "$left" = 0 ] || abort "$kind: $left processes of the soak still run 10 s after mcr stop: $(soak_pids | tr '\n' ' ')"
  SERVER_ROWS+=("$kind|$n|$secs|$HELD_CHECKS|$wline")
  CUR_KIND=
  say "$kind: done in $secs s"
}

# --- summary -------------------------------------------------------------------------
SERVER_ROWS=() FAILED= AFTER_FAILED= CUR_KIND= CUR_U=0 CUR_N=0 CUR_T0=0
summary() {
  local verdict=PASS
  {
    echo "### Soak: $(date -u +%Y-%m-%dT%H:%MZ), commit $GIT, \`scripts/soak.sh${ARGV[*]:+ ${ARGV[*]}}\`"
    echo
    echo "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(($(date +%s) - T0)) s in all; /tmp $([ "$PRIVATE_TMP" = 1 ] && echo "private (tmpfs)" || echo "shared: its count is not checked")."
    echo
    echo "| server | updates, all committed | update ms: median / p99 / max | took | held connections answering at every check | failed requests | lost keys |"
    echo "|---|---|---|---|---|---|---|"
    local r kind n secs checks w stats req failed lost stale keys held
    for r in "${SERVER_ROWS[@]}"; do
      IFS='|' read -r kind n secs checks w <<<"$r"
      stats=$(awk -F'\t' -v k="$kind" '$1==k && $4!="-"{print $4}' "$RAW/updates.tsv" | sort -n |
        awk '{v[NR]=$1} END{if(NR==0){print "-";exit} i=int(NR*0.99+0.999); if(i<1)i=1; printf "%.0f / %.0f / %.0f", v[int((NR+1)/2)], v[i], v[NR]}')
      held="$SESSIONS of $SESSIONS ($checks checks)" failed=0 lost=-
      [[ $n == stopped* ]] && held="$checks checks passed" failed=-
      if [[ $w == requests=* ]]; then
        req=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$w") failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$w")
        lost=$(sed -n 's/.*lost=\([0-9]*\).*/\1/p' <<<"$w") stale=$(sed -n 's/.*stale=\([0-9]*\).*/\1/p' <<<"$w")
        keys=$(sed -n 's/.*keys=\([0-9]*\).*/\1/p' <<<"$w")
        failed="$failed of $req (writer)" lost="$((lost + stale)) of $keys (writer)"
      elif [ "$kind" = kvd ]; then
        failed=- lost=-
      fi
      echo "| $kind | $n | $stats | $secs s | $held | $failed | $lost |"
    done
    echo
    echo "Growth, after the first measured update against the last (same build): the server's memory may grow by max(5%, 256 KiB), both what it holds (mem_server_kb: RssAnon plus the allocated pages of every memfd its processes map, each memfd once; the heap lives in memfds) and RssAnon alone; the supervisor's and init's (new processes at every update, whose RSS moves by several hundred kB from one version to the next) by max(20%, 1 MiB), the server's mappings by one heap region (7: a region of an earlier version stays mapped while a block in it lives, such as a key not written since that version, so the count moves by a region from one update to the next; a leak keeps climbing), other counts not at all. The server's VmRSS (rss_server_kb) is shown, not checked: it counts only the memfd pages its processes touched since the update, not what the heap holds."
    echo
    echo "| server | figure | first | last | growth | allowed | | at every check: min-max |"
    echo "|---|---|---|---|---|---|---|---|"
  } >"$RAW/summary.md"
  if ! awk -F'\t' -v private="$PRIVATE_TMP" -v root="$([ "$(id -u)" = 0 ] && echo 1 || echo 0)" '
    FNR==NR && FNR==1 { for (i = 3; i <= NF; i++) tcol[$i] = i; next }
    FNR==NR {
      for (c in tcol) {
        v = $(tcol[c])
        if (v == "-") continue
        if (!(($1, c) in lo) || v < lo[$1, c]) lo[$1, c] = v
        if (!(($1, c) in hi) || v > hi[$1, c]) hi[$1, c] = v
      }
      next
    }
    FNR==1 { for (i = 4; i <= NF; i++) name[i] = $i; nf = NF; next }
    $2=="first" { for (i = 4; i <= NF; i++) first[$1, i] = $i; at[$1] = $3; order[++n] = $1 }
    $2=="last" {
      for (i = 4; i <= nf; i++) {
        f = first[$1, i]; l = $i; g = l - f
        # mem_server_kb (RssAnon + the heap memfds pages) and anon_server_kb are checked;
        # rss_server_kb (VmRSS: the memfd pages touched since the update) is only shown.
        if (name[i] ~ /^(mem|anon)_server/) { allowed = f * 0.05; if (allowed < 256) allowed = 256; unit = " kB" }
        else if (name[i] ~ /^rss_/) { allowed = f * 0.2; if (allowed < 1024) allowed = 1024; unit = " kB" }
        else if (name[i] == "maps_server") { allowed = 7; unit = "" }
        else { allowed = 0; unit = "" }
        checked = name[i] != "log_bytes" && name[i] != "rss_server_kb" && !(name[i] == "files_tmp" && private != 1)
        measured = f != "-" && l != "-"
        if (!measured) { g = "-"; unit = ""; ok = !checked ? "(not checked)" : root ? "NOT MEASURED" : "(not measured: needs root)"; if (ok == "NOT MEASURED") bad = 1; checked = 0 }
        else { g = sprintf("%+d", g); ok = !checked ? "(not checked)" : (g + 0 <= allowed ? "ok" : "GREW") }
        if (ok == "GREW") bad = 1
        range = (($1, name[i]) in lo) ? lo[$1, name[i]] "-" hi[$1, name[i]] unit : "-"
        printf "| %s | %s | %s%s (update %s) | %s%s (update %s) | %s | %s | %s | %s |\n", $1, name[i], f, unit, at[$1], l, unit, $3, g, checked ? int(allowed) : "-", ok, range
      }
    }
    END { exit bad }' "$RAW/trend.tsv" "$RAW/measure.tsv" >>"$RAW/summary.md"; then
    FAILED=${FAILED:-growth beyond the tolerance, or a figure not measured (GREW or NOT MEASURED above)}
  fi
  [ -n "$FAILED" ] && verdict="FAIL: $FAILED"
  { echo; echo "Result: $verdict"; } >>"$RAW/summary.md"
  if [ -n "$AFTER_FAILED" ]; then { echo; echo "$AFTER_FAILED"; } >>"$RAW/summary.md"; fi
  cat "$RAW/summary.md"
}

say "work dir $WORK, raw data ${RAW#"$ROOT"/}; kvd $KVD_N, poold $POOLD_N, connd $CONND_N updates; $SESSIONS sessions"
run_server kvd "$KVD_N"
run_server poold "$POOLD_N"
run_server connd "$CONND_N"
summary
if [ -n "$FAILED" ]; then exit 1; fi
