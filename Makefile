# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
# pip warns about every missing local mirror folder on these machines; keep real errors visible.
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: help run test lint layers typecheck pytest pytest-fast bench-quality clean-var system-run system-test

help:
	@echo "make run    set up, start the platform and the demo collection, print the URL and login"
	@echo "make test   set up and run ruff, the import layers, mypy and the whole pytest suite"

$(STAMP): pyproject.toml
	@echo "Installing into $(VENV) (torch 2.14.1 comes from local disk: about 2 minutes the first time)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --progress-bar off --upgrade pip 2> >(grep -v "$(PIP_NOISE)" >&2)
	$(PY) -m pip install -q --progress-bar off -e '.[dev]' 2> >(grep -v "$(PIP_NOISE)" >&2)
	touch $(STAMP)

# Debian packages: the Fashion-MNIST demo and benchmark data, and chromium for the browser tests.
apt_install = if [ "$$(id -u)" = 0 ]; then \
	echo "apt-get install $(1)"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null 2>&1 || \
	{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null; }; \
	else echo "missing Debian package $(1): run 'sudo apt-get install $(1)'" >&2; exit 1; fi

system-run:
	@test -f $(FASHION_MNIST) || { $(call apt_install,dataset-fashion-mnist); }

system-test: system-run
	@test -x $(CHROMIUM) || { $(call apt_install,chromium); }

run: $(STAMP) system-run
	$(PY) manage.py runstack

test: $(STAMP) system-test lint layers typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# import-linter contracts in pyproject.toml: apps import only the layers below them.
layers: $(STAMP)
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

pytest: $(STAMP)
	$(VENV)/bin/pytest

# The edit-test loop: everything but real workers and servers, browsers and long training runs.
pytest-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow and not e2e and not integration"
