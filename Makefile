# The CI steps, one target each. `make check` runs what .ci/test runs; `make quick` is the
# inner loop (no slow tests, about 3 minutes on 2 cores).
PY ?= .venv/bin/python
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: setup build lint fmt rust-test simd-test stubtest mypy docs test quick check bench

setup:            ## create .venv with every dependency and build the extension (release)
	bash .ci/setup

build:            ## rebuild the Rust extension into the editable install
	$(PY) -m pip install --quiet -c .ci/constraints.txt -e '.[test,all]'

lint:             ## ruff, rustfmt and clippy (warnings are errors)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	cargo fmt --check
	cargo clippy --quiet --all-targets --no-default-features -- -D warnings
	cargo clippy --quiet --all-targets -- -D warnings

fmt:              ## format Python and Rust sources in place
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
	cargo fmt

rust-test:        ## the Rust core's tests, without Python, at each SIMD level of this CPU
	for level in $$(PY=$(PY) bash .ci/simd-levels); do \
		echo "GEOFAST_SIMD=$$level"; GEOFAST_SIMD=$$level cargo test --no-default-features --quiet || exit 1; \
	done

simd-test:        ## tests/kernels (not slow) at each SIMD level below this CPU's best (`test` runs the best)
	levels="$$(PY=$(PY) bash .ci/simd-levels)"; best="$$(echo "$$levels" | tail -n 1)"; \
	for level in $$levels; do \
		if [ "$$level" != "$$best" ]; then \
			echo "GEOFAST_SIMD=$$level"; GEOFAST_SIMD=$$level $(PY) -m pytest -q -m "not slow" tests/kernels || exit 1; \
		fi; \
	done

stubtest:         ## the hand-written _geofast.pyi against the built extension
	$(PY) -m mypy.stubtest geofast._geofast

mypy:
	$(PY) -m mypy

docs:             ## the documentation site into site/ (offline; warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

test:             ## the whole pytest suite
	$(PY) -m pytest -q

quick:            ## the inner loop: everything but the slow tests
	$(PY) -m pytest -q -m "not slow"

check: lint rust-test stubtest mypy docs simd-test test   ## what CI runs after set-up (.ci/test)

bench:            ## every benchmark against its anchor (about 15 minutes)
	$(PY) -m geofast bench --threads 2
