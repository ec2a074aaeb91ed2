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
# The dashboard's browser tests: Debian's chromium and the pinned playwright-core.
scripts/ensure-browser.sh
# The video tests: Debian's ffmpeg (ffmpeg, ffprobe, libx264, aac).
scripts/ensure-ffmpeg.sh

log=""
edges=""
cleanup() {
    if [ -n "$log" ]; then rm -f "$log"; fi
    if [ -n "$edges" ]; then rm -rf "$edges"; fi
    scripts/test-services.sh stop || true
}
trap cleanup EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The SMTP and S3 servers of the mail and blob tests, on free loopback ports; `cleanup`
# stops them however this script ends.
echo "== test services"
scripts/test-services.sh start
set -a
# shellcheck source=/dev/null
. .test-services/env
set +a
echo "== cargo test"
log=$(mktemp)
# Every edge a run takes, in this process and the `waymark` processes tests spawn, is
# logged here for the transition coverage check below.
edges=$(mktemp -d)
export WAYMARK_EDGE_LOG="$edges"
status=0
cargo test --workspace --all-targets --locked --no-fail-fast -- "$@" 2>&1 | tee "$log" || status=$?
# cargo prints one result line per test binary; the last one may be a crate with no
# tests, so close with the totals over all of them.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "Summary: %d passed, %d failed\n", p, f }' "$log"
# Coverage means something only over the whole suite, and only if it passed: a filtered
# or failed run skips it.
if [ "$#" -eq 0 ] && [ "$status" -eq 0 ]; then
    echo "== transition coverage"
    if ! cargo test --locked --test integration coverage::transition_coverage -- --ignored --exact; then
        echo "Transition coverage: FAILED (the edges above were never taken)"
        status=1
    fi
fi
exit "$status"
