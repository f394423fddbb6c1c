# Set-up and the everyday commands. The virtual environment lives in $(VENV) (default .venv) and is
# (re)built whenever the content of requirements.txt changes.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CONFIG ?= configs/mnist_skipvae.yaml
PRESET ?= configs/presets/debug.yaml
RUN_CONFIGS = --config $(CONFIG) $(if $(PRESET),--config $(PRESET))
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQUIREMENTS_HASH)

.PHONY: run test test-fast data lint format

$(STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

run: $(STAMP)  ## set up, train CONFIG with PRESET (PRESET= for the paper's settings) and test its last checkpoint
	$(PYTHON) main.py fit $(RUN_CONFIGS)
	$(PYTHON) main.py test $(RUN_CONFIGS) --ckpt_path last
	@echo "curves, samples, latent views and HParams: $(VENV)/bin/tensorboard --logdir logs"

data: $(STAMP)  ## fetch every downloadable data file into $$SKIPVAE_DATA_DIR (default ./data), checksums checked
	$(PYTHON) -m datamodules.fetch

test: $(STAMP)  ## set up, fetch the data files the tests read, run the full test suite (what CI runs)
	$(PYTHON) -m datamodules.fetch --for-tests
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
