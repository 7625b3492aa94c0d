# The two set-up commands of README.md: `make serve` and `make test`.
.PHONY: serve test setup setup-test test-rust test-python lint

serve: setup
	.venv/bin/pysfu serve $(ARGS)

test: setup-test test-rust test-python

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test

test-rust:
	cargo test --release --manifest-path native/Cargo.toml

test-python:
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check pysfu tests bench
	cargo clippy --manifest-path native/Cargo.toml --all-targets -- -D warnings
