#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and lets the tests' user
# (postgres, no password from loopback) create databases. Installs it from Debian's
# packages if missing. Idempotent; prints what it did.
set -euo pipefail

host=127.0.0.1
port=5432

ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }
can_create() { psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user' 2>/dev/null | grep -q t; }

if command -v pg_isready >/dev/null && ready && can_create; then
    echo "postgres: ready on $host:$port"
    exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null; then
    echo "postgres: not installed; installing from Debian packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
hba=$(as_root pg_conftool "$version" main show hba_file | sed -E "s/.*= *'?([^']*)'?/\1/")
# Loopback connections need no password: the tests create and drop their own databases.
if as_root grep -Eq '^host\s+all\s+all\s+(127\.0\.0\.1/32|::1/128)\s+(scram-sha-256|md5)' "$hba"; then
    echo "postgres: trusting loopback connections in $hba"
    as_root sed -ri 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)(scram-sha-256|md5)/\1trust/' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
fi

if ! ready; then
    echo "postgres: starting cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || [ $? = 2 ]
fi
for _ in $(seq 1 60); do
    ready && break
    sleep 0.5
done
ready || { echo "postgres: did not become ready on $host:$port" >&2; exit 1; }
can_create || { echo "postgres: user postgres cannot create databases on $host:$port" >&2; exit 1; }
echo "postgres: ready on $host:$port"
