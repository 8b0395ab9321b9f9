#!/usr/bin/env bash
# The state suite (issue 12's proof): every case of fixtures/stated.c puts one process or
# kernel state in place after startup, then a live update to the code-only stated-v2
# shows whether it SURVIVES, is LOST, or the update is REFUSED (rolled back, the old
# version serving with the state intact). Builds what it needs, runs
# crates/cli/tests/state_suite.rs and prints the table of outcomes; fails when an outcome
# differs from the table in that file.
#
#   scripts/state-suite.sh                 # every case (~40 s on 2 cores)
#   scripts/state-suite.sh pipe-data cwd   # only these cases
#   MCR_STATE_JOBS=2 scripts/state-suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
make -s -C fixtures OUT="$PWD/target/fixtures"
MCR_STATE_CASES="$(IFS=,; echo "$*")"
export MCR_STATE_CASES
# One test at a time, so the table is not interleaved with the other tests' output.
cargo test --release -p mcr-cli --test state_suite -- --nocapture --test-threads=1
