# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo bench postgres-server clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot]'
	touch $@

# PostgreSQL server binaries (initdb, pg_ctl) for the real-server tests: Debian's postgresql package.
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "PostgreSQL server binaries missing: sudo apt-get install postgresql" >&2; exit 1; fi; }

test: $(VENV)/.installed postgres-server
	$(PY) -m pytest

demo: $(VENV)/.installed
	$(VENV)/bin/smtlock stress --jobs 32 --records 4 --mode raw --mode locked

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
