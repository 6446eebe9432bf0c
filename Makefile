# One command each on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test servers lint bench fixtures clean

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv python3-pip; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Six platforms on 127.0.0.1 (the real WordPress, five emulators) and a folder,
# the same photos across units: sync them all, then status and the clusters
# that span units. Index and configuration in .damdup/demo/.
demo: $(STAMP) servers
	$(PY) -m tests.servers.demo --workdir .damdup/demo

# The real servers the tests run against (WordPress, PHP, MariaDB, PostgreSQL,
# chromium for the review page) from Debian's packages, Azurite from the npm
# registry, and the city's ResourceSpace and Linked Events from their source in
# ../shared/platforms/ when it is there (ResourceSpace's PHP extensions and
# ImageMagick, PostGIS from Debian; Linked Events' Python packages from PyPI into
# .damdup/linkedevents/): no-ops once they are there. The tests start them.
servers:
	tests/servers/install-debian.sh
	tests/servers/install-node.sh
	tests/servers/install-linkedevents.sh
	tests/servers/install-resourcespace.sh

test: $(STAMP) servers
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP) servers
	bench/install.sh $(VENV)
	$(PY) bench/largeset.py
	$(PY) bench/accuracy.py --set large
	$(PY) bench/verify.py
	$(PY) bench/hashing.py
	$(PY) bench/search.py
	$(PY) bench/sync.py

fixtures: $(STAMP)
	$(PY) fixtures/build.py

clean:
	rm -rf $(VENV) .damdup build *.egg-info
