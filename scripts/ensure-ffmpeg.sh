#!/usr/bin/env bash
# Makes sure the video tests can run: Debian's `ffmpeg` package (ffmpeg and ffprobe,
# with libx264 and the native AAC encoder), installed with apt-get if missing, like
# ensure-browser.sh installs chromium. Idempotent; prints what it found.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "ffmpeg: not installed; installing from Debian packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        ffmpeg >/dev/null
fi
echo "ffmpeg: $(ffmpeg -hide_banner -version | head -1)"
# The renditions need H.264 and AAC encoders; say so plainly if this build lacks them.
encoders=$(ffmpeg -hide_banner -encoders 2>/dev/null)
for encoder in libx264 aac; do
    if ! grep -q " $encoder " <<<"$encoders"; then
        echo "ffmpeg: this ffmpeg has no $encoder encoder; install Debian's ffmpeg package" >&2
        exit 1
    fi
done
