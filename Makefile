# gearstash: make setup | demo | test | bench | lint   (works from any directory with make -C/-f)

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := $(ROOT)/.venv
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint fuzz

setup:
	bash $(ROOT)/scripts/setup.sh

demo: setup
	cd $(ROOT) && $(VENV)/bin/gearstash demo

lint: setup
	cd $(ROOT) && $(VENV)/bin/ruff check .
	cd $(ROOT) && $(VENV)/bin/mypy

# ruff and mypy gate the tests: a lint failure stops make before pytest runs. Every test runs:
# the suite starts its own gearmand, Redis, memcached, PostgreSQL and MariaDB on free loopback
# ports, and a missing one fails the run. To skip what is missing instead, ask for it:
#   GEARSTASH_ALLOW_SKIP=1 make test
test: setup lint
	cd $(ROOT) && $(VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# Celery is installed for the store comparison only; it is no dependency of gearstash.
bench: setup
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check 'celery[redis,memcache,sqlalchemy]'
	cd $(ROOT) && $(VENV)/bin/python bench/run.py
	cd $(ROOT) && $(VENV)/bin/python bench/stores.py

# Coverage-guided fuzzing (atheris/libFuzzer); not part of `make test`. See fuzz/README.md.
FUZZ_RUNS ?= 1000000
FUZZ_CORPUS ?= /tmp/gearstash-fuzz-corpus
fuzz: setup
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check atheris
	mkdir -p $(FUZZ_CORPUS)/protocol $(FUZZ_CORPUS)/jobref $(FUZZ_CORPUS)/record
	cd $(ROOT) && $(VENV)/bin/python fuzz/fuzz_protocol.py -runs=$(FUZZ_RUNS) -max_len=4096 -print_final_stats=1 $(FUZZ_CORPUS)/protocol fuzz/seeds/protocol
	cd $(ROOT) && $(VENV)/bin/python fuzz/fuzz_jobref.py -runs=300000 -print_final_stats=1 $(FUZZ_CORPUS)/jobref fuzz/seeds/jobref
	cd $(ROOT) && $(VENV)/bin/python fuzz/fuzz_record.py -runs=300000 -print_final_stats=1 $(FUZZ_CORPUS)/record fuzz/seeds/record
