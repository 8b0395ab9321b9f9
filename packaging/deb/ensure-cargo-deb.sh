#!/usr/bin/env bash
# Install cargo-deb (builds the Debian package, packaging/deb/build.sh) unless it is
# already installed. Called by .ci/run on a fresh machine and by build.sh.
set -euo pipefail
if cargo deb --version >/dev/null 2>&1; then
    exit 0
fi
echo "installing cargo-deb (cargo install cargo-deb --locked)" >&2
cargo install cargo-deb --locked --quiet
