# make demo: set up, get Fashion-MNIST, train uniform and mgda-ub for 3 epochs, compare.
# make test: set up and run the test suite (lint and the import contracts included).
# make mutate MODULE=mtlcli/dense.py: mutation testing of one module against its tests (mutmut; minutes, not in make test).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MTL := $(VENV)/bin/mtl
STAMP := $(VENV)/.installed
DEMO_OUT := results/demo
DEBIAN_FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint setup fashion-mnist clean mutate

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. torch comes from the local wheel cache where there is one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's dataset-fashion-mnist when apt is there and we are root; otherwise `mtl prepare` downloads.
fashion-mnist:
	@if [ ! -f $(DEBIAN_FASHION) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "apt-get could not install dataset-fashion-mnist; mtl prepare will download the files"; \
	fi

demo: $(STAMP) fashion-mnist
	$(MTL) prepare multifashion
	rm -rf $(DEMO_OUT)
	$(MTL) train recipes/multifashion.yaml --method uniform --epochs 3 --out $(DEMO_OUT)
	$(MTL) train recipes/multifashion.yaml --method mgda-ub --epochs 3 --out $(DEMO_OUT)
	$(MTL) compare $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# Two workers (pytest-xdist), a test file each at a time: module fixtures (the torchrun launches) run once.
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# Prints the surviving mutants and the score; JOBS=N workers (default: every core); the module's tests: tools/mutate.py.
mutate: $(STAMP)
	@test -n "$(MODULE)" || { echo "usage: make mutate MODULE=mtlcli/<module>.py [JOBS=N]"; exit 2; }
	$(PY) tools/mutate.py $(MODULE)

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .mutmut mutants
