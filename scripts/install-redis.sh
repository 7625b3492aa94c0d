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

"$(dirname "$0")/apt-install.sh" install-redis redis-server
redis-server --version
