# Set-up and the two everyday commands. The virtual environment lives in $(VENV) (default .venv) and is
# (re)built whenever requirements.txt changes.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CONFIG ?= configs/mnist_skipvae.yaml

.PHONY: train test

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

train: $(VENV)/.installed  ## set up, then train Skip-VAE on MNIST (override CONFIG=...)
	$(PYTHON) main.py fit --config $(CONFIG)

test: $(VENV)/.installed  ## set up, then run the default (fast) test suite
	$(PYTHON) -m pytest
