# Shared by the cached server builds (scripts/{vsftpd,httpd,sshd}/build.sh): logging, apt
# (packages, deb-src), the sources kept in ../shared/servers, and the cache's atomic
# install. Sourced, never run; the caller sets TAG (its log prefix) first.
#
# The pattern is scripts/nginx/build.sh's: a build lives in
# ${MCR_CACHE:-$HOME/.cache/mcr}/<server>/<key>/ with a .mcr-build stamp; a valid one is
# reused without touching apt; a new one is built in a scratch dir beside it and moved
# into place in one rename, so the cache holds a complete build or none.

log() { printf '[mcr %s] %s\n' "$TAG" "$*" >&2; }
die() { printf '[mcr %s] error: %s\n' "$TAG" "$*" >&2; exit 1; }
trap 'log "error: command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# The comment block at the top of the calling script (its usage).
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; }

COMMON_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/build-common.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)

# --- cache ---------------------------------------------------------------
# Sets CACHE_ROOT to the (created, absolute) cache folder of server $1.
cache_root() {
  CACHE_ROOT=${MCR_CACHE:-$HOME/.cache/mcr}/$1
  mkdir -p "$CACHE_ROOT"
  CACHE_ROOT=$(cd "$CACHE_ROOT" && pwd -P)
}

# A short hash of the files that make up a build recipe (this library included), so a
# changed recipe rebuilds instead of reusing an old cache entry.
recipe_hash() { cat "$COMMON_LIB" "$@" | sha256sum | cut -c1-12; }

# Whether DIR holds a finished build stamped with every KEY=VALUE given.
stamp_matches() { # DIR KEY=VALUE...
  local dir=$1 kv
  shift
  [ -f "$dir/.mcr-build" ] || return 1
  for kv in "$@"; do grep -qxF -- "$kv" "$dir/.mcr-build" || return 1; done
}

# Creates WORK, a scratch dir beside DEST ($1), removed on exit.
begin_build() {
  mkdir -p "$(dirname "$1")"
  WORK=$(mktemp -d "$(dirname "$1")/.build-$(basename "$1").XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  trap 'exit 130' INT TERM
  BUILD_START=$(date +%s)
}

# Moves the finished tree $1 to DEST ($2) in one rename (an old build is moved aside
# into WORK first, and removed with it).
install_build() {
  if [ -e "$2" ] || [ -L "$2" ]; then mv -T "$2" "$WORK/old"; fi
  mv -T "$1" "$2"
  log "built in $(($(date +%s) - BUILD_START))s: $2"
}

# mcr needs a dynamically linked binary with DWARF; frame pointers help its call stacks.
# (grep -c, not grep -q: with pipefail, grep -q's early exit can kill readelf by SIGPIPE
# and fail the pipe although it matched: a build said 'no debug info' once in two.)
check_binary() {
  readelf -l "$1" 2>/dev/null | grep -c INTERP >/dev/null || die "$1 is not dynamically linked"
  readelf -S "$1" | grep -c '\.debug_info' >/dev/null || die "$1 has no debug info"
}

# --- sources in ../shared/servers ----------------------------------------
# Sets SERVER_SRC to the folder of server $1 in the shared sources: $MCR_SERVERS_DIR/$1,
# else <repo>/../shared/servers/$1, else the same beside the main checkout of a git
# worktree (whose own parent has no shared/).
servers_dir() {
  local d common
  if [ -n "${MCR_SERVERS_DIR:-}" ]; then
    SERVER_SRC=$MCR_SERVERS_DIR/$1
    [ -d "$SERVER_SRC" ] || die "MCR_SERVERS_DIR=$MCR_SERVERS_DIR has no $1/"
    return 0
  fi
  for d in "$REPO_ROOT/../shared/servers/$1" \
    "$(common=$(git -C "$REPO_ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) \
        && printf '%s' "$(dirname "$common")/../shared/servers/$1")"; do
    if [ -n "$d" ] && [ -d "$d" ]; then SERVER_SRC=$(cd "$d" && pwd -P); return 0; fi
  done
  die "no sources of $1: expected $REPO_ROOT/../shared/servers/$1 (or set MCR_SERVERS_DIR)"
}

# The release chain of the shared sources of a server: its base tarball PREFIX-X.tar.gz
# and diffs X-to-Y.diff.gz, Y-to-Z.diff.gz... Sets BASE_TARBALL, BASE_RELEASE and
# RELEASES (every release, in order, the base first).
release_chain() { # PREFIX (tarball name before the version)
  local tarballs next
  tarballs=("$SERVER_SRC/$1"-*.tar.gz)
  [ -f "${tarballs[0]}" ] || die "no $1-*.tar.gz in $SERVER_SRC"
  [ ${#tarballs[@]} -eq 1 ] || die "more than one base tarball in $SERVER_SRC: ${tarballs[*]}"
  BASE_TARBALL=${tarballs[0]}
  BASE_RELEASE=$(basename "$BASE_TARBALL" .tar.gz)
  BASE_RELEASE=${BASE_RELEASE#"$1"-}
  RELEASES=("$BASE_RELEASE")
  while :; do
    next=("$SERVER_SRC/${RELEASES[-1]}"-to-*.diff.gz)
    [ -f "${next[0]}" ] || break
    [ ${#next[@]} -eq 1 ] || die "two diffs start from ${RELEASES[-1]}: ${next[*]}"
    next=$(basename "${next[0]}" .diff.gz)
    RELEASES+=("${next#*-to-}")
    [ ${#RELEASES[@]} -le 100 ] || die "the diffs in $SERVER_SRC form a loop"
  done
}

# The releases of the chain from the base to $1, space-separated.
releases_up_to() {
  local r out=
  for r in "${RELEASES[@]}"; do
    out+="${out:+ }$r"
    [ "$r" = "$1" ] && break
  done
  printf '%s' "$out"
}

# Unpacks the base tarball into $1 (its single top folder becomes $1) and applies the
# diffs up to release $2, in order.
unpack_release() { # DIR RELEASE
  local dir=$1 want=$2 i tmp
  tmp=$(mktemp -d "$(dirname "$dir")/.unpack.XXXXXX")
  tar -xzf "$BASE_TARBALL" -C "$tmp"
  mv -T "$tmp"/* "$dir"
  rmdir "$tmp"
  for ((i = 1; i < ${#RELEASES[@]}; i++)); do
    [ "${RELEASES[i - 1]}" = "$want" ] && return 0
    log "diff ${RELEASES[i - 1]} -> ${RELEASES[i]}"
    gzip -dc "$SERVER_SRC/${RELEASES[i - 1]}-to-${RELEASES[i]}.diff.gz" \
      | (cd "$dir" && patch -p1 --forward --batch --no-backup-if-mismatch -s) >&2 \
      || die "the diff ${RELEASES[i - 1]}-to-${RELEASES[i]} did not apply"
  done
  [ "${RELEASES[-1]}" = "$want" ] || die "release $want is not in the chain: ${RELEASES[*]}"
}

# --- apt -----------------------------------------------------------------
SUDO=
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o APT::Get::Assume-Yes=true -q)
apt_get() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" "$@" >&2; }

APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" -eq 1 ] && return 0
  log "apt-get update"
  apt_get update
  APT_UPDATED=1
}

# shellcheck source=packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

# --- deb-src -------------------------------------------------------------
# The same file scripts/nginx/build.sh writes: the two scripts agree on its stanzas (its
# comment line may differ; only the stanzas are compared).
SRC_LIST=/etc/apt/sources.list.d/mcr-deb-src.sources

# shellcheck source=deb-src.sh
source "$(dirname "${BASH_SOURCE[0]}")/deb-src.sh"

# Whether apt knows source package $1 with a version matching the grep pattern $2.
have_source() { # PKG VERSION_RE
  # (no grep -q: with pipefail an early exit would fail the pipe by SIGPIPE)
  apt-cache showsrc "$1" 2>/dev/null | grep -c "^Version: $2" >/dev/null
}

ensure_deb_src() { # PKG VERSION_RE
  local want
  want=$(deb_src_stanzas)
  if [ -n "$want" ]; then
    if [ ! -f "$SRC_LIST" ] || [ "$(grep -v '^#' "$SRC_LIST")" != "$want" ]; then
      log "enabling deb-src in $SRC_LIST"
      printf '# Written by mcr scripts/*/build.sh: Debian source packages.\n%s\n' "$want" \
        | $SUDO tee "$SRC_LIST.tmp" >/dev/null
      $SUDO mv -f "$SRC_LIST.tmp" "$SRC_LIST"
      apt_update
    fi
  elif [ ! -f "$SRC_LIST" ] && ! have_source "$1" "$2"; then
    die "found no Debian deb822 source in /etc/apt/sources.list.d to enable deb-src for"
  fi
  if ! have_source "$1" "$2"; then
    apt_update
    have_source "$1" "$2" || die "apt knows no source package $1 with a version $2"
  fi
}

# Debian versions of source package $1 whose version matches the grep pattern $2 (an
# anchored prefix such as '1:9\.2p1-'), newest first.
apt_source_versions() { # PKG VERSION_RE
  apt-cache showsrc "$1" 2>/dev/null | sed -n "s/^Version: \($2.*\)/\1/p" | sort -uVr
}

# Downloads source package $1=$2 (once) into DIR ($3) and unpacks it there as tree/,
# Debian's patches applied unless $4 is --skip-patches. Returns non-zero when apt cannot
# download it (a mirror may lack the newest security upload's files).
fetch_deb_source() { # PKG VERSION DIR [--skip-patches]
  local pkg=$1 ver=$2 dir=$3 tmp dsc
  [ -f "$dir/.complete" ] && return 0
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "$(dirname "$dir")/.dl.XXXXXX")
  log "downloading source $pkg=$ver"
  if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" source --download-only "$pkg=$ver" >&2); then
    rm -rf "$tmp"
    return 1
  fi
  dsc=$(ls "$tmp"/*.dsc)
  log "unpacking $(basename "$dsc")"
  if ! (cd "$tmp" && dpkg-source ${4:+"$4"} -x "$(basename "$dsc")" tree >&2); then
    rm -rf "$tmp"
    die "dpkg-source -x $dsc failed"
  fi
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv -T "$tmp" "$dir"
}
