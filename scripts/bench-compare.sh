#!/usr/bin/env bash
# Compares the engine benchmark's ratio (Waymark / raw-SQL ceiling) of another revision
# with this tree's, alternating the two in one sitting so both see the same machine.
#
#   scripts/bench-compare.sh <rev> [rounds]     WAYMARK_BENCH_RUNS (default 1000) per K
#
# The other revision is built in a temporary worktree with its own target directory
# under $HOME/.cache/waymark (kept, so a second comparison is fast).
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: scripts/bench-compare.sh <rev> [rounds]}"
rounds="${2:-3}"
export WAYMARK_BENCH_RUNS="${WAYMARK_BENCH_RUNS:-1000}"
sha=$(git rev-parse --short "$rev")
other="$(mktemp -d)/waymark-$sha"
git worktree add --detach "$other" "$sha" >/dev/null
trap 'git worktree remove --force "$other" >/dev/null 2>&1 || true' EXIT
here_target="${CARGO_TARGET_DIR:-$HOME/.cache/waymark/target}-bench"
other_target="$HOME/.cache/waymark/target-bench-$sha"
echo "building $sha and this tree (release)…"
(cd "$other" && CARGO_TARGET_DIR="$other_target" cargo bench --bench engine --no-run -q)
CARGO_TARGET_DIR="$here_target" cargo bench --bench engine --no-run -q
for round in $(seq "$rounds"); do
    for side in "$sha:$other:$other_target" "tree:.:$here_target"; do
        IFS=: read -r name dir target <<<"$side"
        printf '%-8s round %s: ' "$name" "$round"
        (cd "$dir" && CARGO_TARGET_DIR="$target" cargo bench --bench engine 2>/dev/null) |
            awk '/^ratio/ { printf "%s %s  ", $2, $NF } /^ceiling/ && /tps =/ { printf "(%s pgbench %s)  ", $2, $NF } END { print "" }'
    done
done
