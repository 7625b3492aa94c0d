# The two set-up commands of README.md: `make serve` and `make test`.
.PHONY: serve test setup setup-test test-rust test-python lint web e2e browser ffmpeg gstreamer redis fuzz fuzz-ci bench bench-native

serve: setup
	.venv/bin/pysfu serve $(ARGS)

test: setup-test lint browser ffmpeg gstreamer redis web test-rust fuzz-ci test-python

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test

test-rust:
	cargo test --release --manifest-path native/Cargo.toml
	cargo build --release -p pysfu-loadgen

# Bounded fuzzing of every cargo-fuzz target (fuzz/), FUZZ_SECONDS each; non-zero on a crash.
# `make test` runs the short variant (10 s per target) to keep .ci/run within its budget.
FUZZ_SECONDS ?= 45
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-ci:
	scripts/fuzz.sh 10

test-python:
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# Lint and types; any finding fails (and so fails `make test`, which runs this first):
# ruff, mypy (strict on pysfu/, settings in pyproject.toml), clippy on every crate. Needs the
# test extra (`make setup-test`, which `make test` runs before it).
lint:
	.venv/bin/ruff check pysfu tests bench
	.venv/bin/mypy
	cargo clippy --manifest-path native/Cargo.toml --all-targets -- -D warnings
	cargo clippy -p pysfu-loadgen --all-targets -- -D warnings
	cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

# Demo page: install the npm packages and rebuild pysfu/web/dist (also committed).
web:
	cd pysfu/web && npm ci --no-audit --no-fund && npm run build

# Browser tests only (needs /usr/bin/chromium: scripts/install-browser.sh).
e2e: setup-test browser web
	.venv/bin/python -m pytest tests/e2e $(PYTEST_ARGS)

# Debian's chromium for tests/e2e (apt; a no-op when /usr/bin/chromium exists).
browser:
	scripts/install-browser.sh

# Debian's ffmpeg + ffprobe for the plain transport tests (apt; a no-op when present).
ffmpeg:
	scripts/install-ffmpeg.sh

# Debian's GStreamer tools + good plugins for the GStreamer plain transport test (apt).
gstreamer:
	scripts/install-gstreamer.sh

# Debian's redis-server for the cluster tests (apt; a no-op when present).
redis:
	scripts/install-redis.sh

# Load benchmark: a real server process, one host (video + audio), N viewers over loopback;
# sweep of SRTP profiles × media workers (BENCH_WORKERS, default 1 and 2) × viewers; JSON in
# bench/results/, table on stdout. BENCH_ARGS e.g. "--viewers 10,100 --profiles gcm
# --duration 3"; then the engine's fan-out with 1 and 2 workers at one offered load.
BENCH_WORKERS ?= 1,2
bench: setup-test
	cargo build --release -p pysfu-loadgen
	.venv/bin/python bench/sfu_load.py --workers $(BENCH_WORKERS) $(BENCH_ARGS)
	for w in 1 2; do .venv/bin/python bench/engine_fanout.py --consumers 100 --rate 6000 --workers $$w; done

# criterion micro-benchmarks of the native core (SRTP, rewrite, fan-out).
bench-native:
	cargo bench --manifest-path native/Cargo.toml $(CRITERION_ARGS)
