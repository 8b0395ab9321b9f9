#!/usr/bin/env bash
# Build vsftpd from the release history kept in ../shared/servers/vsftpd (a base
# tarball and one diff per upstream release, applied in order), for mcr's tests.
#
# Usage:
#   scripts/vsftpd/build.sh [--release X.Y.Z] [--out DIR]
#   scripts/vsftpd/build.sh --list-releases
#
#   --release X.Y.Z  the upstream release to build (default: the last, 3.0.2)
#   --out DIR        folder to build into (default: the cache, see below)
#   --list-releases  print the releases of the chain (one a line, oldest first) and exit
#
# Sources: $MCR_SERVERS_DIR/vsftpd, else <repo>/../shared/servers/vsftpd (for a git
# worktree, the same beside its main checkout).
#
# The result is cached in ${MCR_CACHE:-$HOME/.cache/mcr}/vsftpd/<release>/ and the
# binary is <that dir>/sbin/vsftpd. A valid cached build is reused without rebuilding.
# The last line of stdout is always the absolute path of the binary; everything else
# (progress, compiler output) goes to stderr.
#
# Built with -g -O2 -fno-omit-frame-pointer, dynamically linked, not stripped (the
# Makefile's -Wl,-s is dropped), linked with -lcap -lcrypt and without PAM
# (VSF_BUILD_PAM undefined: local logins check /etc/shadow through libcrypt, so
# libpam0g-dev is not needed). Installs libcap-dev and libcrypt-dev when missing (as
# root, or with passwordless sudo).
#
# Running it (see crates/cli/tests/compat.rs): vsftpd 3.x's own seccomp_sandbox rejects
# system calls that Debian 12's libc makes (alarm, newfstatat), with or without mcr:
# run it with seccomp_sandbox=NO.
set -euo pipefail
TAG=vsftpd
# shellcheck source=../lib/build-common.sh
source "$(dirname "$0")/../lib/build-common.sh"

CC_OPT='-g -O2 -fno-omit-frame-pointer'
LIBS='-lcap -lcrypt'
BUILD_DEPS=(build-essential patch libcap-dev libcrypt-dev)
RECIPE_REV=$(recipe_hash "$0")

RELEASE=
OUT=
LIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --release) [ $# -ge 2 ] || die "--release needs a value"; RELEASE=$2; shift 2 ;;
    --release=*) RELEASE=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --list-releases) LIST=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done

servers_dir vsftpd
release_chain vsftpd
if [ "$LIST" -eq 1 ]; then printf '%s\n' "${RELEASES[@]}"; exit 0; fi
[ -n "$RELEASE" ] || RELEASE=${RELEASES[-1]}
printf '%s\n' "${RELEASES[@]}" | grep -cxF -- "$RELEASE" >/dev/null \
  || die "no release $RELEASE in $SERVER_SRC (it has: ${RELEASES[*]})"

cache_root vsftpd
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  DEST=$(cd "$(dirname "$OUT")" && pwd -P)/$(basename "$OUT")
else
  DEST=$CACHE_ROOT/$RELEASE
fi
STAMP=("release=$RELEASE" "recipe=$RECIPE_REV")
if [ -x "$DEST/sbin/vsftpd" ] && stamp_matches "$DEST" "${STAMP[@]}"; then
  log "cached: $DEST"
  printf '%s\n' "$DEST/sbin/vsftpd"
  exit 0
fi

ensure_packages "${BUILD_DEPS[@]}"
begin_build "$DEST"
log "building vsftpd $RELEASE into $DEST"
unpack_release "$WORK/src" "$RELEASE"
cd "$WORK/src"
# No PAM: the link then needs only libcrypt for local logins.
sed -i 's/^#define VSF_BUILD_PAM$/#undef VSF_BUILD_PAM/' builddefs.h
grep -qx '#undef VSF_BUILD_PAM' builddefs.h || die "builddefs.h has no VSF_BUILD_PAM to undefine"
# CFLAGS replaces the release's own (3.x adds -Werror, which a newer gcc trips over);
# LINK drops its -Wl,-s; LIBS replaces vsf_findlibs.sh, which looks for libcap outside
# Debian's multiarch folders.
make -j"$(nproc)" vsftpd CFLAGS="$CC_OPT" LINK= LIBS="$LIBS" >&2
check_binary vsftpd

STAGED=$WORK/final
mkdir -p "$STAGED/sbin" "$STAGED/etc"
cp vsftpd "$STAGED/sbin/vsftpd"
cp vsftpd.conf "$STAGED/etc/vsftpd.conf.example"
{
  echo "release=$RELEASE"
  echo "recipe=$RECIPE_REV"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "seconds=$(($(date +%s) - BUILD_START))"
  echo "cc_opt=$CC_OPT"
  echo "libs=$LIBS"
  echo "chain=$(releases_up_to "$RELEASE")"
} >"$STAGED/.mcr-build"
install_build "$STAGED" "$DEST"
printf '%s\n' "$DEST/sbin/vsftpd"
