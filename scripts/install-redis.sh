#!/usr/bin/env bash
# Idempotent: install Debian's redis-server for the cluster tests (tests/test_cluster.py start
# their own redis-server on a free loopback port, no persistence; the Debian service is not
# needed and is left as the package sets it up).
# A no-op when redis-server is on PATH. Works as root without sudo, or as a user with sudo;
# never prompts.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-redis: redis-server is missing; run as root or install the 'redis-server' package" >&2
    exit 1
  fi
fi

$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
redis-server --version
