#!/usr/bin/env bash
# Build (once) the Debian root file system that scripts/systemd/unit-test.sh boots with
# systemd-nspawn: a minimal Debian 12 with systemd as its init, and the libraries the
# cached nginx builds link against. Prints the tarball's path as its last line.
#
#   scripts/systemd/rootfs.sh            # cached: ${MCR_CACHE:-~/.cache/mcr}/systemd/
#
# The tarball's name carries a hash of the package list and of this script, so a changed
# recipe builds a new one instead of reusing the old. The first build runs debootstrap
# against the Debian mirror this machine's apt uses (about two minutes); later calls
# print the cached path at once. Installs systemd-container (systemd-nspawn), debootstrap
# and zstd when missing (root or passwordless apt needed then).
set -euo pipefail
TAG=systemd
# shellcheck source=../lib/build-common.sh
. "$(dirname "$0")/../lib/build-common.sh"
# shellcheck source=../lib/packages.sh
. "$(dirname "$0")/../lib/packages.sh"

SUITE=bookworm
# systemd as PID 1 (systemd-sysv), dbus for logind; procps for pgrep in the checks; the
# rest are nginx's libraries (the cached builds are dynamically linked, see ldd).
PACKAGES=(systemd systemd-sysv dbus procps libpcre2-8-0 zlib1g libssl3 libcrypt1)

[ $# -eq 0 ] || { usage; exit 2; }
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
APT_OPTS=(-y -q)
apt_get() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" "$@" >&2; }
apt_update() { log "apt-get update"; apt_get update; }

cache_root systemd
KEY=$(printf '%s\n' "$SUITE" "${PACKAGES[@]}" | cat - "$0" | sha256sum | cut -c1-12)
TARBALL=$CACHE_ROOT/rootfs-$SUITE-$KEY.tar.zst
if [ -f "$TARBALL" ]; then
  printf '%s\n' "$TARBALL"
  exit 0
fi

ensure_packages systemd-container debootstrap zstd

# The Debian mirror this machine's apt already uses (deb822 sources first, then the
# one-line format); the only network this machine may have is its package mirrors.
mirror() {
  local uri
  uri=$(grep -hs -A3 '^Types:.*\bdeb\b' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' | head -n 1)
  [ -n "$uri" ] || uri=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\2/p' \
    /etc/apt/sources.list 2>/dev/null | head -n 1)
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}
MIRROR=$(mirror)

begin_build "$TARBALL"
log "debootstrap $SUITE from $MIRROR (${PACKAGES[*]}); once, cached in $TARBALL"
include=$(IFS=,; printf '%s' "${PACKAGES[*]}")
debootstrap --variant=minbase --include="$include" "$SUITE" "$WORK/root" "$MIRROR" >&2 \
  || die "debootstrap failed (its log: $WORK/root/debootstrap/debootstrap.log)"
# systemd-nspawn gives the container a machine ID; an empty file lets systemd take it.
: >"$WORK/root/etc/machine-id"
printf 'mcr-systemd-test\n' >"$WORK/root/etc/hostname"
# Nothing to log in on: the container is driven from the host (nsenter).
ln -sf /dev/null "$WORK/root/etc/systemd/system/console-getty.service"
rm -rf "$WORK/root/var/cache/apt/archives/"*.deb "$WORK/root/var/lib/apt/lists/"*_Packages
tar --numeric-owner --xattrs -C "$WORK/root" -cf - . | zstd -q -T0 -o "$WORK/rootfs.tar.zst"
mv -f "$WORK/rootfs.tar.zst" "$TARBALL"
log "built in $(($(date +%s) - BUILD_START))s: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
printf '%s\n' "$TARBALL"
