#!/usr/bin/env bash
# Build OpenSSH's sshd 9.2p1 from the Debian 12 source package (Debian's patches
# applied), for mcr's tests.
#
# Usage:
#   scripts/sshd/build.sh [--deb-version V] [--out DIR]
#
#   --deb-version V  Debian source version to use (e.g. 1:9.2p1-2+deb12u7). Default:
#                    $MCR_SSHD_DEBVER; else the newest source already downloaded to the
#                    cache (stable, no apt needed); else (or with MCR_SSHD_REFRESH=1) the
#                    newest 1:9.2p1-* that apt knows and can download (the mirror lacks
#                    some versions' files).
#   --out DIR        install prefix to build into (default: the cache, see below)
#
# The result is cached in ${MCR_CACHE:-$HOME/.cache/mcr}/sshd/<debian version without
# epoch>/ and the binary is <that dir>/sbin/sshd. A valid cached build is reused without
# touching apt. The last line of stdout is always the absolute path of the binary;
# everything else (progress, compiler output) goes to stderr.
#
# Built with -g -O2 -fno-omit-frame-pointer, dynamically linked, not stripped, with the
# privilege-separation sandbox on (seccomp_filter), without PAM, Kerberos, SELinux,
# libwrap or systemd. The privilege-separation user is "nobody" (the machine needs no
# sshd user) and its chroot is <that dir>/var/empty (root's, 0755, as sshd demands).
# The rest is the caller's: sshd runs as root with its own config, host keys and port,
# e.g. `<dir>/sbin/sshd -D -e -f SCRATCH/sshd_config` (an absolute path: it re-executes
# itself per connection).
#
# Needs root (or passwordless apt) the first time: enables deb-src for the Debian
# mirrors already configured (/etc/apt/sources.list.d/mcr-deb-src.sources, the file
# scripts/nginx/build.sh writes), and installs autoconf, libssl-dev and zlib1g-dev when
# missing.
set -euo pipefail
TAG=sshd
# shellcheck source=../lib/build-common.sh
source "$(dirname "$0")/../lib/build-common.sh"

PKG=openssh
UPSTREAM_RE='1:9\.2p1-'
CC_OPT='-g -O2 -fno-omit-frame-pointer'
CONFIGURE_OPTS=(
  --with-sandbox=seccomp_filter
  --with-privsep-user=nobody
  --without-pam
  --without-selinux
  --without-kerberos5
  --without-libedit
  --without-zlib-version-check
  --disable-strip
  --with-libs=-lcrypt
)
BUILD_DEPS=(build-essential dpkg-dev autoconf libssl-dev zlib1g-dev libcrypt-dev)
RECIPE_REV=$(recipe_hash "$0")

OUT=
DEBVER=${MCR_SSHD_DEBVER:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --deb-version) [ $# -ge 2 ] || die "--deb-version needs a value"; DEBVER=$2; shift 2 ;;
    --deb-version=*) DEBVER=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done

cache_root sshd
src_dir() { printf '%s/src/%s' "$CACHE_ROOT" "${1#*:}"; }

# Sets DEBVER: as given; else the newest source already in the cache (unless
# MCR_SSHD_REFRESH=1); else the newest version apt can download.
resolve_version() {
  local d v
  [ -n "$DEBVER" ] && return 0
  if [ "${MCR_SSHD_REFRESH:-0}" != 1 ]; then
    DEBVER=$(for d in "$CACHE_ROOT"/src/*/; do
      if [ -f "$d/.complete" ] && [ -f "$d/version" ]; then cat "$d/version"; echo; fi
    done | sort -V | tail -n1)
    [ -n "$DEBVER" ] && return 0
  fi
  ensure_deb_src "$PKG" "$UPSTREAM_RE"
  for v in $(apt_source_versions "$PKG" "$UPSTREAM_RE"); do
    if fetch_source "$v"; then DEBVER=$v; return 0; fi
    log "source $PKG=$v cannot be had; trying an older one"
  done
  die "could not download any Debian source of $PKG 9.2p1 (apt knows: $(apt_source_versions "$PKG" "$UPSTREAM_RE" | tr '\n' ' '))"
}

fetch_source() { # VERSION
  local dir
  dir=$(src_dir "$1")
  [ -f "$dir/.complete" ] && return 0
  fetch_deb_source "$PKG" "$1" "$dir" || return 1
  printf '%s' "$1" >"$dir/version"
}

resolve_version
case "$DEBVER" in *:*) ;; *) DEBVER=1:$DEBVER ;; esac

if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  DEST=$(cd "$(dirname "$OUT")" && pwd -P)/$(basename "$OUT")
else
  DEST=$CACHE_ROOT/${DEBVER#*:}
fi
STAMP=("debver=$DEBVER" "recipe=$RECIPE_REV")
if [ -x "$DEST/sbin/sshd" ] && stamp_matches "$DEST" "${STAMP[@]}"; then
  log "cached: $DEST"
  printf '%s\n' "$DEST/sbin/sshd"
  exit 0
fi

if ! [ -f "$(src_dir "$DEBVER")/.complete" ]; then
  ensure_deb_src "$PKG" "$UPSTREAM_RE"
  fetch_source "$DEBVER" || die "apt-get source $PKG=$DEBVER failed"
fi
ensure_packages "${BUILD_DEPS[@]}"
begin_build "$DEST"
log "building sshd $DEBVER into $DEST"
cp -a "$(src_dir "$DEBVER")/tree" "$WORK/src"
cd "$WORK/src"
# Debian's patches change configure.ac: regenerate configure (openssh needs no automake).
autoconf >&2
autoheader >&2
# The paths compiled in are the final ones; only sshd is built and installed.
CFLAGS="$CC_OPT" ./configure \
  --prefix="$DEST" \
  --sysconfdir="$DEST/etc" \
  --with-pid-dir="$DEST/run" \
  --with-privsep-path="$DEST/var/empty" \
  "${CONFIGURE_OPTS[@]}" >&2
grep -q '^#define SANDBOX_SECCOMP_FILTER 1' config.h || die "configure did not choose the seccomp sandbox"
make -j"$(nproc)" sshd >&2
check_binary sshd

STAGED=$WORK/final
mkdir -p "$STAGED/sbin" "$STAGED/etc" "$STAGED/run" "$STAGED/var/empty"
chmod 0755 "$STAGED/var/empty"
cp sshd "$STAGED/sbin/sshd"
cp sshd_config "$STAGED/etc/sshd_config.example"
{
  echo "debver=$DEBVER"
  echo "recipe=$RECIPE_REV"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "seconds=$(($(date +%s) - BUILD_START))"
  echo "cc_opt=$CC_OPT"
  echo "configure=${CONFIGURE_OPTS[*]}"
} >"$STAGED/.mcr-build"
install_build "$STAGED" "$DEST"
printf '%s\n' "$DEST/sbin/sshd"
