#!/usr/bin/env bash
# Build the Debian package of mcr: /usr/bin/mcr, /usr/lib/mcr/libmcr.so, /usr/include/mcr.h,
# man pages and bash/zsh/fish completions generated from mcr's clap definitions, and the
# systemd example unit (the layout: [package.metadata.deb] in crates/cli/Cargo.toml).
# Prints the .deb's path as its last line.
#
#   packaging/deb/build.sh            # target/debian/mcr_<version>-1_<arch>.deb
#   packaging/deb/build.sh --fast     # lighter compression (scripts/test.sh: 3 s, not 18)
set -euo pipefail
cd "$(dirname "$0")/../.."
packaging/deb/ensure-cargo-deb.sh
# The whole workspace: libmcr.so is another crate's (mcr-runtime) cdylib, which
# `cargo deb` would not build. A no-op when scripts/test.sh built it already.
cargo build --release --workspace --quiet
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
docs="$target_dir/release/mcr-docs"
rm -rf "$docs"
"$target_dir/release/mcr" generate-docs "$docs" >/dev/null
# Debian policy wants man pages gzipped; cargo-deb leaves files under target/release as
# they are (it compresses only those it does not count as built).
gzip -9n "$docs"/man/*.1
cargo deb -p mcr-cli --no-build --quiet "$@" | tail -n 1
