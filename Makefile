# grpo-lambda — every target does its own set-up (see README).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.installed
# Where the CPU torch wheel lies on the CPU machines (used only if present).
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
TORCH_VERSION ?= 2.13.0
EXTRAS ?= cpu,dev

.PHONY: install test test-unit test-integration lint bench clean-venv

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. torch first (the CPU build), then the
# package with its extras; PyPI's torchvision/torchaudio are CUDA-linked and break `import vllm`
# beside the CPU torch, so they are removed.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) torch==$(TORCH_VERSION)
	$(PIP) install -q $(FIND_LINKS) -e ".[$(EXTRAS)]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import torch, grpo_lambda; print('torch', torch.__version__, '| grpo_lambda', grpo_lambda.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q -m "not integration" tests

test-integration: install
	$(PY) -m pytest -q -m integration tests

lint: install
	$(PY) -m ruff check grpo_lambda tests scripts
	$(PY) -m ruff format --check grpo_lambda tests scripts

bench: install
	$(PY) scripts/bench_trace.py

clean-venv:
	rm -rf $(VENV)
