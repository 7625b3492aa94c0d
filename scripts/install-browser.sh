#!/usr/bin/env bash
# Idempotent: install Debian's chromium (for the Playwright end-to-end tests in tests/e2e).
# Playwright only drives it (executable_path=/usr/bin/chromium); no browser is ever downloaded.
# Works as root without sudo, or as a user with sudo; never prompts.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi

# fonts-liberation: readable text in screenshots; the rest comes with chromium's dependencies.
"$(dirname "$0")/apt-install.sh" install-browser chromium fonts-liberation
/usr/bin/chromium --version
