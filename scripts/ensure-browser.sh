#!/usr/bin/env bash
# Makes sure the dashboard's browser tests can run: Debian's `chromium` (installed with
# apt-get if missing, like ensure-postgres.sh installs PostgreSQL) and playwright-core
# from npm at the version pinned in tests/browser/package-lock.json, installed into
# tests/browser/node_modules (git-ignored). Playwright downloads no browser: the tests
# drive /usr/bin/chromium. Idempotent; prints what it did.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v chromium >/dev/null; then
    echo "browser: chromium not installed; installing from Debian packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
fi
echo "browser: $(chromium --version 2>/dev/null || echo 'chromium (version unknown)')"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "browser: node not installed; installing from Debian packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        nodejs npm >/dev/null
fi

lock=tests/browser/package-lock.json
stamp=tests/browser/node_modules/.installed-from-lock
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
    echo "browser: installing playwright-core from $lock"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --silent
    cp "$lock" "$stamp"
fi
echo "browser: playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
