#!/usr/bin/env bash
# Install Debian packages without prompting (the install-*.sh scripts' one copy of this):
# as root directly, as a user through `sudo -n`; fails with a clear message otherwise.
# Usage: scripts/apt-install.sh WHO PACKAGE...   (WHO names the caller in error messages)
set -euo pipefail
who="$1"
shift
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "$who: missing; run as root or install the Debian package(s): $*" >&2
    exit 1
  fi
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
