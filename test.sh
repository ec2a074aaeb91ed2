#!/usr/bin/env bash
# The one test command: starts what the tests need, then checks formatting, lints and
# runs the whole workspace's suite (PostgreSQL and SQLite). `.ci/run` calls exactly this.
#
#   ./test.sh                 everything
#   ./test.sh some_test_name  extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")"

# Builds are cached outside the checkout, so fresh clones on the same machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/waymark/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/ensure-postgres.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets --locked -- "$@"
