# streams — set-up, demo and tests. Every target installs what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian packages the build and the tests need: libclang for RocksDB's bindgen, a C/C++
# toolchain and zlib for librdkafka and RocksDB, kcat for the interop test, docker-compose
# to check docker-compose.yml (it parses without a Docker engine), chromium for the test that
# loads the web server's topology page in a real browser, python3-venv for the venvs (PyPI)
# of the tests' Python clients and Faust and of the benchmark's peers (Faust, Quix Streams).
APT_PACKAGES := libclang-dev clang g++ make pkg-config zlib1g-dev kcat docker-compose chromium python3-venv

CARGO ?= cargo

.PHONY: help deps build demo test publish-check bench lint fmt clean

help:
	@echo "make demo   the seed's hit counter on the embedded broker (no Kafka needed)"
	@echo "make test   every test, then make publish-check (docs, cargo publish --dry-run)"
	@echo "make bench  benchmarks: broker ceiling vs agents, the peers (Faust, Quix Streams), an idle worker, restore, memory; broker-free engine"
	@echo "make lint   cargo fmt --check and cargo clippy"

deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing packages:$$missing"; echo "run: sudo apt-get install -y --no-install-recommends$$missing"; exit 1; \
	  fi; \
	fi

build: deps
	$(CARGO) build --workspace --all-targets

demo: deps
	$(CARGO) build --examples
	./scripts/demo.sh

test: build
	$(CARGO) test --workspace --no-fail-fast
	docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid"
	$(MAKE) --no-print-directory publish-check

# The published crates: their docs build without a warning, and `cargo publish --dry-run`
# packages and builds them as crates.io would (the first run compiles RocksDB and librdkafka
# once more, unoptimised, as a dependent's first build does; later runs reuse them).
publish-check:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p streams-core -p streams-macros --no-deps --all-features
	$(CARGO) publish --dry-run --allow-dirty -p streams-macros -p streams-core

# Benchmarks print figures; nothing is asserted. They use the dev profile, whose crates are
# optimised (see Cargo.toml), so RocksDB and librdkafka are not compiled a second time.
# Benchmarks are release builds, as users run them (the first one compiles RocksDB and
# librdkafka optimised, ~11 minutes on 2 cores; tests keep using the dev profile).
bench: deps
	$(CARGO) build --release --examples
	$${CARGO_TARGET_DIR:-target}/release/examples/bench $(BENCH_ARGS)
	$(CARGO) bench -p streams-tests --bench engine

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
