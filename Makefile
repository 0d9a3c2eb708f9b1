# zarrgate: the two commands are `make demo` and `make test`.
# Both install what they need: a pinned Python venv (with the CMake >= 3.26 that the static
# HDF5/netCDF-C build needs) and the Rust build.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
export ZARRGATE_CORPUS ?= $(abspath ../shared/corpus)
# Fails on files of one crate that import each other in a loop (dependencies flow one way).
MODCYCLES ?= $(abspath ../shared/tools/modcycles.py)
# The static HDF5/netCDF-C builds find CMake here (.cargo/config.toml says the same for plain
# `cargo` runs); an absolute path keeps cargo's build cache valid when VENV moves.
export CMAKE := $(abspath $(VENV))/bin/cmake
export ZARRGATE_BIN ?= $(abspath $(or $(CARGO_TARGET_DIR),target))/debug/zarrgate
export ZARRGATE_SERVE_BIN ?= $(ZARRGATE_BIN)

.PHONY: all venv build oidc-provider test test-rust test-python demo bench fixtures clean

all: build

venv: $(VENV)/.installed

$(VENV)/.installed: python/requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r python/requirements.txt
	touch $@

build: venv
	$(CARGO) build --workspace --all-targets

# Formatting and lints first (rustup's default profile has both; a minimal toolchain without
# them says so and goes on to the tests).
# The OpenID Provider of the identity tests (tests/oidc: npm's oidc-provider, pinned by its lock).
OP_DIR := tests/oidc
$(OP_DIR)/node_modules/.installed: $(OP_DIR)/package-lock.json
	npm ci --prefix $(OP_DIR) --no-audit --no-fund --loglevel=error
	touch $@

oidc-provider: $(OP_DIR)/node_modules/.installed

test: build oidc-provider
	@if $(CARGO) fmt --version >/dev/null 2>&1; then $(CARGO) fmt --all -- --check; \
	else echo "rustfmt is not installed: formatting not checked"; fi
	@if $(CARGO) clippy --version >/dev/null 2>&1; then $(CARGO) clippy --workspace --all-targets -- -D warnings; \
	else echo "clippy is not installed: lints not checked"; fi
	python3 $(MODCYCLES) src gateway/src indexer/src cli/src
	$(CARGO) test --workspace
	$(PY) -m pytest tests/python -q -p no:cacheprovider --durations=30

# Index the bundled fixtures, serve them on 127.0.0.1:9000 as bucket "demo", print client
# snippets (Ctrl-C stops it).
demo: build
	$(ZARRGATE_BIN) demo --listen 127.0.0.1:9000

bench: build oidc-provider
	$(CARGO) build --release -p zarrgate
	$(CARGO) bench --bench index
	$(PY) benches/compare_kerchunk.py
	$(PY) benches/compare_gateway.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_ops.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_join.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_replicas.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_discovery.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_identity.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_remote.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate
	$(PY) benches/compare_remote_index.py --bin $(abspath $(or $(CARGO_TARGET_DIR),target))/release/zarrgate

fixtures: venv
	$(PY) fixtures/generate.py

clean:
	$(CARGO) clean
	rm -rf $(VENV)
