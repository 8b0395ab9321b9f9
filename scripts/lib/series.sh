# shellcheck shell=bash
# What scripts/*/series.sh share: a server live-updated through its release series.
# Source it after setting ROOT (the repository) and SERIES_TAG (the prefix of messages).

say() { printf '[%s] %s\n' "$SERIES_TAG" "$*" >&2; }

# The release build of mcr, built when missing: sets MCR.
series_need_mcr() {
  command -v curl >/dev/null || { echo "$SERIES_TAG: needs curl (apt-get install curl)" >&2; exit 2; }
  MCR=$ROOT/target/release/mcr
  if [ ! -x "$MCR" ] || [ ! -f "$ROOT/target/release/libmcr.so" ]; then
    say "cargo build --release --workspace"
    (cd "$ROOT" && nice -n 5 cargo build --release --workspace -q) >&2
  fi
}

# A loopback port nothing listens on (bounded tries): sets PORT, or exits.
series_free_port() {
  local p
  PORT=
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; return; fi
  done
  say "no free port"
  exit 1
}

# KEY FILE: the first "KEY": number in a pretty-printed JSON file (1 decimal).
json_number() {
  sed -n "s/^ *\"$1\": \([0-9.]*\),\{0,1\}$/\1/p" "$2" | head -n 1 | awk '{ printf "%.1f", $1 }'
}

# The release series' options, --releases R0,R1,... and --keep-going: sets RELEASES and
# KEEP_GOING; anything else is a usage error (the calling script's `usage`).
series_release_options() {
  RELEASES= KEEP_GOING=0
  while [ $# -gt 0 ]; do
    case $1 in
      --releases) [[ ${2:-} =~ ^[0-9.]+(,[0-9.]+)+$ ]] || usage; RELEASES=$2; shift ;;
      --keep-going) KEEP_GOING=1 ;;
      -h | --help) usage ;;
      *) usage ;;
    esac
    shift
  done
}
