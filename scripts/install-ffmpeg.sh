#!/usr/bin/env bash
# Idempotent: install Debian's ffmpeg (ffmpeg + ffprobe) for the plain-transport tests
# (tests/test_plain_ffmpeg.py: RTP in from ffmpeg, RTP out of a room recorded by ffmpeg).
# A no-op when both are on PATH. Works as root without sudo, or as a user with sudo; never prompts.
set -euo pipefail

if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
  exit 0
fi

"$(dirname "$0")/apt-install.sh" install-ffmpeg ffmpeg
ffmpeg -hide_banner -version | sed -n 1p  # sed reads it all: head would close the pipe (SIGPIPE under pipefail)
