# Set-up and the everyday commands. The virtual environment lives in $(VENV) (default .venv) and is
# (re)built whenever the content of requirements.txt changes.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CONFIG ?= configs/mnist_skipvae.yaml
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQUIREMENTS_HASH)

.PHONY: train test test-fast data lint format

$(STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

train: $(STAMP)  ## set up, then train Skip-VAE on MNIST (override CONFIG=...)
	$(PYTHON) main.py fit --config $(CONFIG)

data: $(STAMP)  ## fetch every downloadable data file into $$SKIPVAE_DATA_DIR (default ./data), checksums checked
	$(PYTHON) -m datamodules.fetch

test: $(STAMP)  ## set up, then run the full test suite (what CI runs)
	$(PYTHON) -m pytest

test-fast: $(STAMP)  ## unit-level tests only, for the development loop (no data, no training runs, no subprocesses)
	$(PYTHON) -m pytest -m "not integration and not real_data"

lint: $(STAMP)  ## ruff lint and format check, mypy type check (what CI runs before the tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
