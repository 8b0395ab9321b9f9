#!/usr/bin/env bash
# Build Apache httpd from the release history kept in ../shared/servers/httpd (a base
# tree and one diff per upstream release, applied in order), for mcr's tests.
#
# Usage:
#   scripts/httpd/build.sh [--release 2.4.N] [--mpm event|prefork] [--out DIR]
#   scripts/httpd/build.sh --list-releases
#
#   --release 2.4.N  the upstream release to build (default: the last, 2.4.62)
#   --mpm M          the MPM compiled in (default: event)
#   --out DIR        install prefix to build into (default: the cache, see below)
#   --list-releases  print the releases of the chain (one a line, oldest first) and exit
#
# Sources: $MCR_SERVERS_DIR/httpd, else <repo>/../shared/servers/httpd (for a git
# worktree, the same beside its main checkout). They are a git tree, not a release
# tarball: the build runs buildconf against Debian's libapr1-dev/libaprutil1-dev.
#
# The result is cached in ${MCR_CACHE:-$HOME/.cache/mcr}/httpd/<release>-<mpm>/ (an
# httpd prefix) and the binary is <that dir>/bin/httpd. A valid cached build is reused
# without rebuilding. The last line of stdout is always the absolute path of the binary;
# everything else (progress, compiler output) goes to stderr.
#
# Built with -g -O2 -fno-omit-frame-pointer, dynamically linked, not stripped, with a
# small set of modules compiled in and no loadable ones: enough to serve files (GET,
# keep-alive), echo a request body (POST to a location with "SetHandler reflector"),
# and drop root privileges for the children (User/Group). Installs autoconf, libtool,
# libapr1-dev, libaprutil1-dev and libpcre2-dev when missing (as root, or with
# passwordless sudo).
set -euo pipefail
TAG=httpd
# shellcheck source=../lib/build-common.sh
source "$(dirname "$0")/../lib/build-common.sh"

CC_OPT='-g -O2 -fno-omit-frame-pointer'
STATIC_MODULES='unixd authz_core mime dir log_config reflector'
APR=/usr/share/apr-1.0
BUILD_DEPS=(build-essential patch autoconf libtool libapr1-dev libaprutil1-dev libpcre2-dev)
RECIPE_REV=$(recipe_hash "$0")

RELEASE=
MPM=event
OUT=
LIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --release) [ $# -ge 2 ] || die "--release needs a value"; RELEASE=$2; shift 2 ;;
    --release=*) RELEASE=${1#*=}; shift ;;
    --mpm) [ $# -ge 2 ] || die "--mpm needs a value"; MPM=$2; shift 2 ;;
    --mpm=*) MPM=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --list-releases) LIST=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
case "$MPM" in event | prefork) ;; *) die "--mpm wants event or prefork, got '$MPM'" ;; esac

servers_dir httpd
release_chain httpd
if [ "$LIST" -eq 1 ]; then printf '%s\n' "${RELEASES[@]}"; exit 0; fi
[ -n "$RELEASE" ] || RELEASE=${RELEASES[-1]}
printf '%s\n' "${RELEASES[@]}" | grep -qxF -- "$RELEASE" \
  || die "no release $RELEASE in $SERVER_SRC (it has: ${RELEASES[*]})"

cache_root httpd
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  DEST=$(cd "$(dirname "$OUT")" && pwd -P)/$(basename "$OUT")
else
  DEST=$CACHE_ROOT/$RELEASE-$MPM
fi
STAMP=("release=$RELEASE" "mpm=$MPM" "recipe=$RECIPE_REV")
if [ -x "$DEST/bin/httpd" ] && stamp_matches "$DEST" "${STAMP[@]}"; then
  log "cached: $DEST"
  printf '%s\n' "$DEST/bin/httpd"
  exit 0
fi

ensure_packages "${BUILD_DEPS[@]}"
begin_build "$DEST"
log "building httpd $RELEASE ($MPM MPM) into $DEST"
unpack_release "$WORK/src" "$RELEASE"
cd "$WORK/src"
./buildconf --with-apr="$APR" --with-apr-util="$APR" >&2
# buildconf copies apr's, which are too old to know every machine.
cp /usr/share/misc/config.guess /usr/share/misc/config.sub build/
# Every release is compiled for the same prefix, Apache's default, as an operator's
# successive builds are (the install goes to $DEST, through a staging folder): httpd
# keeps paths under its prefix in string literals (the suexec binary's), and an update
# could not find the old release's in the new one if each had its own. The tests give
# httpd a ServerRoot and every path it uses, so nothing is read from that prefix.
COMPILED_PREFIX=/usr/local/apache2
CFLAGS="$CC_OPT" ./configure \
  --prefix="$COMPILED_PREFIX" \
  --with-mpm="$MPM" \
  --enable-modules=none \
  --enable-mods-static="$STATIC_MODULES" \
  --with-apr="$(command -v apr-1-config)" \
  --with-apr-util="$(command -v apu-1-config)" >&2
make -j"$(nproc)" >&2
make install DESTDIR="$WORK/stage" >&2

STAGED=$WORK/stage$COMPILED_PREFIX
check_binary "$STAGED/bin/httpd"
compiled=$("$STAGED/bin/httpd" -l)
for m in $STATIC_MODULES; do
  printf '%s\n' "$compiled" | grep -qx "  mod_$m.c" || die "httpd -l does not list mod_$m.c: $compiled"
done
printf '%s\n' "$compiled" | grep -qx "  $MPM.c" || die "httpd -l does not list the $MPM MPM: $compiled"
{
  echo "release=$RELEASE"
  echo "mpm=$MPM"
  echo "recipe=$RECIPE_REV"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "seconds=$(($(date +%s) - BUILD_START))"
  echo "cc_opt=$CC_OPT"
  echo "modules=$STATIC_MODULES"
  echo "chain=$(releases_up_to "$RELEASE")"
} >"$STAGED/.mcr-build"
mv -T "$STAGED" "$WORK/final"
install_build "$WORK/final" "$DEST"
printf '%s\n' "$DEST/bin/httpd"
