#!/usr/bin/env bash
# The whole test suite: builds mcr (release, so libmcr.so sits beside the mcr binary),
# the C fixture servers and the cached nginx build, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# House rules first: a change that is not formatted or not lint-clean does not land.
cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --release --workspace
make -s -C fixtures OUT="$PWD/target/fixtures"
# The Debian package, once (crates/cli/tests/package.rs installs it into a scratch root).
MCR_DEB="$(packaging/deb/build.sh --fast | tail -n 1)"
export MCR_DEB
# The root file system in which crates/cli/tests/systemd.rs boots systemd (cached; the
# first build debootstraps it, about two minutes).
MCR_SYSTEMD_ROOTFS="$(scripts/systemd/rootfs.sh | tail -n 1)"
export MCR_SYSTEMD_ROOTFS
MCR_NGINX="$(scripts/nginx/build.sh | tail -n 1)"
export MCR_NGINX
# Successive Debian patch levels, for the updates "to the next patch" (1 -> 2), the
# short series' first, middle and last update of the N patches (0 -> 1, N/2 -> N/2+1,
# N-1 -> N) and the update that moves nginx's globals (19 -> 20, in deb12u9's series):
# crates/cli/tests/nginx_state.rs. Cached beside it, about a minute each.
NGINX_PATCHES=$(sed -n 's/^total=//p' "$(dirname "$(dirname "$MCR_NGINX")")/.mcr-build")
for n in 0 1 2 19 20 22 23 $((NGINX_PATCHES / 2)) $((NGINX_PATCHES / 2 + 1)) $((NGINX_PATCHES - 1)); do
  scripts/nginx/build.sh --patches "$n" >/dev/null
done
# The compatibility suite's servers (crates/cli/tests/compat.rs), cached beside nginx.
MCR_VSFTPD="$(scripts/vsftpd/build.sh | tail -n 1)"
# Earlier upstream releases beside it, for vsftpd updated with its state through its
# releases (compat.rs; about ten seconds each, cached).
for r in 2.2.0 2.2.1 2.3.5 3.0.0 3.0.1; do
  scripts/vsftpd/build.sh --release "$r" >/dev/null
done
MCR_HTTPD="$(scripts/httpd/build.sh | tail -n 1)"
MCR_SSHD="$(scripts/sshd/build.sh | tail -n 1)"
# The Debian update before it, for sshd updated with its state across a real patch.
MCR_SSHD_PREV="$(scripts/sshd/build.sh --deb-version 1:9.2p1-2+deb12u7 | tail -n 1)"
export MCR_VSFTPD MCR_HTTPD MCR_SSHD MCR_SSHD_PREV
cargo test --release --workspace -- --test-threads=2 "$@"
# Issue 12's soak, short: 30 kvd + 20 poold + 20 connd updates under load, nothing lost,
# nothing grown (~30 s; the full one is `scripts/soak.sh`, README "Soak").
SOAK_NO_BUILD=1 scripts/soak.sh --short > target/soak-short.md || { cat target/soak-short.md; exit 1; }
echo "soak --short: $(grep -E '^Result' target/soak-short.md)"
