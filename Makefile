# Trinity developer entry points.  On a fresh machine:  make demo   /   make test
#
# NOTE: on a CPU machine torch==2.13.0 is installed *before* the project: that pin is
# the CPU wheel kept on local disk.  Any other torch requirement (the project's own
# `torch>=2.4` included) would make pip download a multi-GB CUDA build.  On a machine
# with an NVIDIA driver (nvidia-smi present) pip resolves torch normally (a CUDA build).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.trinity-installed
RAY_STAMP := $(VENV)/.trinity-ray-installed
PYTEST_ARGS ?=

# `make demo`: the whole stack end to end (`trinity demo`): pool + one EMULATED prefill and
# one EMULATED decode engine + the PD gateway on loopback, a real corpus (10k docstring
# passages, MiniLM embeddings cached in ~/.cache/trinity), a mixed RAG / cache / decode-time
# retrieval workload, the report, and a clean stop.  Pass options with DEMO_ARGS="--rate 8".
DEMO_ARGS ?=
# `make demo-index`: the index benchmark on the real (embedded) corpus, sized so that a first
# run -- which embeds the passages on the CPU and caches them in ~/.cache/trinity -- takes
# a few minutes.  `make bench` is the full-size run (200k vectors, nlist 1024, nprobe 32).
INDEX_DEMO_ARGS ?= --data real --num-vectors 50000 --nlist 256 --nprobe 16 --num-queries 512 --max-seconds 5
BENCH_ARGS ?=

.PHONY: venv venv-ray test demo demo-index bench bench-synthetic clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 or python3 not found" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA driver found: letting pip pick a CUDA build of torch"; \
	else \
		echo "CPU machine: installing the local CPU wheel torch==2.13.0 first"; \
		$(BIN)/python -m pip install torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

# The tests also cover the Ray Serve deployment (tests/ray_serve): `make test` adds the optional
# `ray` extra; `make venv` / `make demo` (the default install) stay without it.
venv-ray: $(RAY_STAMP)

$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[test,ray]'
	touch $(RAY_STAMP)

test: venv-ray
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: venv
	$(BIN)/trinity demo $(DEMO_ARGS)

demo-index: venv
	$(BIN)/trinity bench index $(INDEX_DEMO_ARGS)

bench: venv
	$(BIN)/trinity bench index $(BENCH_ARGS)

bench-synthetic: venv
	$(BIN)/trinity bench index --data synthetic $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
