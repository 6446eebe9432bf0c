# One command each on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DB ?= .damdup/demo.sqlite

.PHONY: demo test lint bench fixtures clean

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv python3-pip; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	@mkdir -p $(dir $(DEMO_DB))
	rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	$(VENV)/bin/damdup scan fixtures/photos --db $(DEMO_DB) --unit fixtures
	$(VENV)/bin/damdup clusters --db $(DEMO_DB)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	bench/install.sh $(VENV)
	$(PY) bench/accuracy.py
	$(PY) bench/verify.py
	$(PY) bench/hashing.py
	$(PY) bench/search.py

fixtures: $(STAMP)
	$(PY) fixtures/build.py

clean:
	rm -rf $(VENV) .damdup build *.egg-info
