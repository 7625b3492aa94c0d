#!/usr/bin/env bash
# Idempotent: install Debian's chromium (for the Playwright end-to-end tests in tests/e2e).
# Playwright only drives it (executable_path=/usr/bin/chromium); no browser is ever downloaded.
# Works as root without sudo, or as a user with sudo; never prompts.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-browser: /usr/bin/chromium is missing; run as root or install 'chromium'" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
# fonts-liberation: readable text in screenshots; the rest comes with chromium's dependencies.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  chromium fonts-liberation
/usr/bin/chromium --version
