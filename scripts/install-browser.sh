#!/usr/bin/env bash
# Idempotent: install Debian's chromium (for the Playwright end-to-end tests in tests/e2e),
# and iproute2's `ss` (the resume e2e test aborts the server's end of a WebSocket with ss -K).
# Playwright only drives it (executable_path=/usr/bin/chromium); no browser is ever downloaded.
# Works as root without sudo, or as a user with sudo; never prompts.
set -euo pipefail

if [ -x /usr/bin/chromium ] && command -v ss >/dev/null 2>&1; then
  exit 0
fi

# fonts-liberation: readable text in screenshots; the rest comes with chromium's dependencies.
"$(dirname "$0")/apt-install.sh" install-browser chromium fonts-liberation iproute2
/usr/bin/chromium --version
