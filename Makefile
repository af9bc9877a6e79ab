# gearstash: make setup | demo | test | bench | lint   (works from any directory with make -C/-f)

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := $(ROOT)/.venv
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint

setup:
	bash $(ROOT)/scripts/setup.sh

demo: setup
	cd $(ROOT) && $(VENV)/bin/gearstash demo

lint: setup
	cd $(ROOT) && $(VENV)/bin/ruff check .
	cd $(ROOT) && $(VENV)/bin/mypy

# ruff and mypy gate the tests: a lint failure stops make before pytest runs.
test: setup lint
	cd $(ROOT) && $(VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# Celery is installed for the store comparison only; it is no dependency of gearstash.
bench: setup
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check 'celery[redis,memcache,sqlalchemy]'
	cd $(ROOT) && $(VENV)/bin/python bench/run.py
	cd $(ROOT) && $(VENV)/bin/python bench/stores.py
