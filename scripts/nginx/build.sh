#!/usr/bin/env bash
# Build nginx 1.22.1 from the Debian bookworm source package, with the first N
# patches of debian/patches/series applied, for mcr's integration tests.
#
# Usage:
#   scripts/nginx/build.sh [--patches N] [--out DIR] [--deb-version V]
#   scripts/nginx/build.sh --list-patches [--deb-version V]
#
#   --patches N     apply the first N patches of debian/patches/series, in
#                   order (default: all of them). Successive N give successive
#                   versions of the same program.
#   --out DIR       install prefix to build into (default: the cache, see below)
#   --deb-version V Debian source version to use. Default: $MCR_NGINX_DEBVER;
#                   else the newest source already downloaded to the cache
#                   (stable, no apt needed); else (or with MCR_NGINX_REFRESH=1)
#                   the newest 1.22.1-* that apt knows and can download (the
#                   mirror may lack the newest security upload's files).
#   --list-patches  print the patch series (one name a line) and exit
#
# The result is cached in
#   ${MCR_CACHE:-$HOME/.cache/mcr}/nginx/1.22.1-<debrev>-p<N>/   (an nginx prefix)
# and the binary is <that dir>/sbin/nginx. If a valid build is already there
# nothing is rebuilt. The last line of stdout is always the absolute path of
# the nginx binary; everything else (progress, compiler output) goes to stderr.
#
# The binary is built with debug info and frame pointers
# (-g -O2 -fno-omit-frame-pointer), dynamically linked, not stripped.
#
# Needs root (or passwordless apt) the first time: it enables deb-src for the
# Debian mirrors already configured (in a separate file,
# /etc/apt/sources.list.d/mcr-deb-src.sources), runs apt-get update only when
# needed, and installs the build dependencies that are missing.
set -euo pipefail

UPSTREAM=1.22.1
PKG=nginx
CC_OPT='-g -O2 -fno-omit-frame-pointer'
LD_OPT=${MCR_NGINX_LD_OPT:-}
# Modules beyond nginx's defaults. Chosen so that the Debian patches that
# touch C code (mp4 and mail CVE fixes, ...) end up in the binary. Needs only
# libpcre2-dev, zlib1g-dev and libssl-dev.
CONFIGURE_MODULES=(
  --with-threads
  --with-pcre-jit
  --with-http_ssl_module
  --with-http_v2_module
  --with-http_realip_module
  --with-http_stub_status_module
  --with-http_gzip_static_module
  --with-http_sub_module
  --with-http_mp4_module
  --with-http_dav_module
  --with-mail
  --with-mail_ssl_module
  --with-stream
  --with-stream_ssl_module
)
BUILD_DEPS=(build-essential dpkg-dev patch libpcre2-dev zlib1g-dev libssl-dev)
SRC_LIST=/etc/apt/sources.list.d/mcr-deb-src.sources
# mcr's nginx module (annotations: idle connections survive --fresh-state updates).
MCR_MODULE=$(cd "$(dirname "$0")/mcr-module" && pwd -P)
MCR_HEADER=$(cd "$(dirname "$0")/../../include" && pwd -P)/mcr.h
# Bump when the build recipe changes, so old cache entries are rebuilt; the module and
# the header it includes are part of the recipe.
RECIPE_REV="3-$(cat "$MCR_MODULE"/config "$MCR_MODULE"/*.c "$MCR_HEADER" | sha256sum | cut -c1-12)"

log() { printf '[mcr nginx] %s\n' "$*" >&2; }
die() { printf '[mcr nginx] error: %s\n' "$*" >&2; exit 1; }
trap 'log "error: command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; }

PATCHES=all
OUT=
LIST=0
DEBVER=${MCR_NGINX_DEBVER:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --patches) [ $# -ge 2 ] || die "--patches needs a value"; PATCHES=$2; shift 2 ;;
    --patches=*) PATCHES=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --deb-version) [ $# -ge 2 ] || die "--deb-version needs a value"; DEBVER=$2; shift 2 ;;
    --deb-version=*) DEBVER=${1#*=}; shift ;;
    --list-patches) LIST=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
case "$PATCHES" in
  all) ;;
  ''|*[!0-9]*) die "--patches wants a non-negative integer or 'all', got '$PATCHES'" ;;
  *) PATCHES=$((10#$PATCHES)) ;;
esac

CACHE_ROOT=${MCR_CACHE:-$HOME/.cache/mcr}/nginx
mkdir -p "$CACHE_ROOT"
CACHE_ROOT=$(cd "$CACHE_ROOT" && pwd -P)

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o APT::Get::Assume-Yes=true -q)
apt_get() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" "$@" >&2; }

APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" -eq 1 ] && return 0
  log "apt-get update"
  apt_get update
  APT_UPDATED=1
}

# --- deb-src -------------------------------------------------------------
# shellcheck source=../lib/deb-src.sh
source "$(dirname "$0")/../lib/deb-src.sh"

have_nginx_sources() {
  # (no grep -q: with pipefail an early exit would fail the pipe by SIGPIPE)
  apt-cache showsrc "$PKG" 2>/dev/null | grep -c "^Version: ${UPSTREAM}-" >/dev/null
}

ensure_deb_src() {
  local want
  want=$(deb_src_stanzas)
  if [ -n "$want" ]; then
    want="# Written by mcr scripts/nginx/build.sh: Debian source packages.
$want"
    if [ ! -f "$SRC_LIST" ] || [ "$(cat "$SRC_LIST")" != "$want" ]; then
      log "enabling deb-src in $SRC_LIST"
      printf '%s\n' "$want" | $SUDO tee "$SRC_LIST.tmp" >/dev/null
      $SUDO mv -f "$SRC_LIST.tmp" "$SRC_LIST"
      apt_update
    fi
  elif [ ! -f "$SRC_LIST" ] && ! have_nginx_sources; then
    die "found no Debian deb822 source in /etc/apt/sources.list.d to enable deb-src for"
  fi
  if ! have_nginx_sources; then
    apt_update
    have_nginx_sources || die "apt knows no source package $PKG=$UPSTREAM-*"
  fi
}

# --- packages ------------------------------------------------------------
# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"

# --- version -------------------------------------------------------------
newest_cached_version() {
  # newest Debian version that has a downloaded source in the cache
  local d
  for d in "$CACHE_ROOT"/src/"$UPSTREAM"-*/; do
    if [ -f "$d/.complete" ]; then basename "$d"; fi
  done | sort -V | tail -n1
}

apt_versions() { # Debian versions of $PKG $UPSTREAM that apt knows, newest first
  apt-cache showsrc "$PKG" 2>/dev/null \
    | sed -n "s/^Version: \(${UPSTREAM//./\\.}-.*\)/\1/p" | sort -uVr
}

# Sets DEBVER. Order: --deb-version / $MCR_NGINX_DEBVER; else the newest source
# already downloaded to the cache (stable across runs, no apt needed; set
# MCR_NGINX_REFRESH=1 to look again); else the newest version apt knows whose
# source can actually be downloaded (a mirror may lack the newest one).
resolve_version() {
  [ -n "$DEBVER" ] && return 0
  if [ "${MCR_NGINX_REFRESH:-0}" != 1 ]; then
    DEBVER=$(newest_cached_version)
    [ -n "$DEBVER" ] && return 0
  fi
  ensure_deb_src
  local v
  for v in $(apt_versions); do
    if try_fetch "$v"; then DEBVER=$v; return 0; fi
    log "source $PKG=$v cannot be had; trying an older one"
  done
  die "could not download any Debian source of $PKG $UPSTREAM (apt knows: $(apt_versions | tr '\n' ' '))"
}

# --- source --------------------------------------------------------------
# Downloads (once) the Debian source package $1 into $CACHE_ROOT/src/$1 and
# unpacks it there, unpatched, as tree/ (used read-only). Returns non-zero if
# it cannot be downloaded.
try_fetch() {
  local ver=$1 dir=$CACHE_ROOT/src/$1 tmp dsc
  [ -f "$dir/.complete" ] && return 0
  mkdir -p "$CACHE_ROOT/src"
  tmp=$(mktemp -d "$CACHE_ROOT/src/.dl.XXXXXX")
  log "downloading source $PKG=$ver"
  if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" source --download-only "$PKG=$ver" >&2); then
    rm -rf "$tmp"; return 1
  fi
  dsc=$(ls "$tmp"/*.dsc)
  log "unpacking $(basename "$dsc") (patches not applied)"
  if ! (cd "$tmp" && dpkg-source --skip-patches -x "$(basename "$dsc")" tree >&2); then
    rm -rf "$tmp"; die "dpkg-source -x $dsc failed"
  fi
  [ -f "$tmp/tree/debian/patches/series" ] || { rm -rf "$tmp"; die "$dsc has no debian/patches/series"; }
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv -T "$tmp" "$dir"
}

# Sets SRC_DIR to the unpacked source of $DEBVER, downloading it if needed.
fetch_source() {
  SRC_DIR=$CACHE_ROOT/src/$DEBVER
  [ -f "$SRC_DIR/.complete" ] && return 0
  ensure_deb_src
  try_fetch "$DEBVER" || die "apt-get source $PKG=$DEBVER failed"
}

# patch names, in order, with any options; one a line
series() {
  sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
    "$SRC_DIR/tree/debian/patches/series" | grep -v '^$' || true
}

# --- main ----------------------------------------------------------------
resolve_version

if [ "$LIST" -eq 1 ]; then
  fetch_source
  log "patch series of $PKG $DEBVER:"
  series | awk '{print $1}'
  exit 0
fi

# Fast path: a valid cached build, without touching apt or the source.
is_valid() { # DIR N
  local dir=$1 bin=$1/sbin/nginx
  [ -x "$bin" ] && [ -f "$dir/.mcr-build" ] || return 1
  grep -qx "debver=$DEBVER" "$dir/.mcr-build" || return 1
  grep -qx "patches=$2" "$dir/.mcr-build" || return 1
  grep -qx "recipe=$RECIPE_REV" "$dir/.mcr-build" || return 1
  grep -qxF "ld_opt=$LD_OPT" "$dir/.mcr-build" || return 1
  "$bin" -V >/dev/null 2>&1 || return 1
}

if [ "$PATCHES" != all ] && [ -z "$OUT" ]; then
  dir=$CACHE_ROOT/$DEBVER-p$PATCHES
  if is_valid "$dir" "$PATCHES"; then
    log "cached: $dir"
    printf '%s\n' "$dir/sbin/nginx"
    exit 0
  fi
fi

fetch_source
mapfile -t SERIES < <(series)
TOTAL=${#SERIES[@]}
[ "$PATCHES" = all ] && PATCHES=$TOTAL
[ "$PATCHES" -le "$TOTAL" ] || die "--patches $PATCHES but the series of $DEBVER has only $TOTAL patches"

if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  DEST=$(cd "$(dirname "$OUT")" && pwd -P)/$(basename "$OUT")
else
  DEST=$CACHE_ROOT/$DEBVER-p$PATCHES
fi
if is_valid "$DEST" "$PATCHES"; then
  log "cached: $DEST"
  printf '%s\n' "$DEST/sbin/nginx"
  exit 0
fi

ensure_packages "${BUILD_DEPS[@]}"

PARENT=$(dirname "$DEST")
WORK=$(mktemp -d "$PARENT/.build-$(basename "$DEST").XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

START=$(date +%s)
log "building $PKG $DEBVER with $PATCHES/$TOTAL patches into $DEST"
cp -a "$SRC_DIR/tree" "$WORK/src"
cd "$WORK/src"
i=0
for line in "${SERIES[@]:0:$PATCHES}"; do
  i=$((i + 1))
  read -r name opts <<<"$line"
  strip=-p1
  for o in $opts; do case "$o" in -p[0-9]*) strip=$o ;; esac; done
  log "patch $i/$PATCHES: $name"
  patch "$strip" --forward --batch --no-backup-if-mismatch -s -i "debian/patches/$name" >&2 \
    || die "patch $name did not apply"
done

# The prefix compiled in is the final one; the install is staged in $WORK.
LD_ARGS=()
[ -n "$LD_OPT" ] && LD_ARGS=(--with-ld-opt="$LD_OPT")
./configure \
  --prefix="$DEST" \
  --with-cc-opt="$CC_OPT" \
  "${LD_ARGS[@]}" \
  "${CONFIGURE_MODULES[@]}" \
  --add-module="$MCR_MODULE" >&2
make -j"$(nproc)" >&2
make install DESTDIR="$WORK/stage" >&2

STAGED=$WORK/stage$DEST
bin=$STAGED/sbin/nginx
# (grep -c, not grep -q: with pipefail, grep -q's early exit can kill the writer by SIGPIPE.)
file -L "$bin" 2>/dev/null | grep -c 'dynamically linked' >/dev/null \
  || readelf -l "$bin" | grep -c 'INTERP' >/dev/null || die "$bin is not dynamically linked"
readelf -S "$bin" | grep -c '\.debug_info' >/dev/null || die "$bin has no debug info"
"$bin" -V 2>&1 | grep -qF -- "$CC_OPT" || die "$bin -V does not show the cc opts"
mkdir -p "$STAGED/logs"

{
  echo "debver=$DEBVER"
  echo "patches=$PATCHES"
  echo "total=$TOTAL"
  echo "recipe=$RECIPE_REV"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "seconds=$(( $(date +%s) - START ))"
  echo "cc_opt=$CC_OPT"
  echo "ld_opt=$LD_OPT"
  echo "configure=${CONFIGURE_MODULES[*]}"
  i=0
  for line in "${SERIES[@]:0:$PATCHES}"; do i=$((i + 1)); echo "patch.$i=${line%% *}"; done
} >"$STAGED/.mcr-build"
mv -T "$STAGED" "$WORK/final"

# Atomic switch: the destination either holds a complete build or none.
if [ -e "$DEST" ] || [ -L "$DEST" ]; then
  mv -T "$DEST" "$WORK/old"
fi
mv -T "$WORK/final" "$DEST"
log "built in $(( $(date +%s) - START ))s: $DEST"
printf '%s\n' "$DEST/sbin/nginx"
