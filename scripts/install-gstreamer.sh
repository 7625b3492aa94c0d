#!/usr/bin/env bash
# Idempotent: install Debian's GStreamer command line tools and good plugins (vp8enc,
# rtpvp8pay, udpsink) for the plain-transport test that sends VP8 with gst-launch-1.0
# (tests/test_plain_gstreamer.py). A no-op when gst-launch-1.0 and those elements are there.
# Works as root without sudo, or as a user with sudo; never prompts.
set -euo pipefail

if command -v gst-launch-1.0 >/dev/null 2>&1 && gst-inspect-1.0 rtpvp8pay >/dev/null 2>&1 \
   && gst-inspect-1.0 vp8enc >/dev/null 2>&1; then
  exit 0
fi

"$(dirname "$0")/apt-install.sh" install-gstreamer gstreamer1.0-tools gstreamer1.0-plugins-base \
  gstreamer1.0-plugins-good
gst-launch-1.0 --version | sed -n 1p  # sed reads it all: head would close the pipe (SIGPIPE under pipefail)
