#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with pysfu (Rust extension built by maturin).
# Usage: scripts/setup.sh [extra]   (extra = "test" installs the test dependencies too)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo (Rust) is required; install it with rustup" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip "maturin>=1.7,<2"
if [ -n "$extra" ]; then
  .venv/bin/maturin develop --release --extras "$extra" -q
else
  .venv/bin/maturin develop --release -q
fi
