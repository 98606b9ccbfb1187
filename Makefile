# Set-up and entry points. `make demo` and `make test` work on a fresh clone: they create .venv,
# install torch *first*, pinned (a bare `torch` requirement lets the package's dependencies pull whatever
# build the index offers, multi-GB with CUDA), then the package with its dev extras.
# TORCH_INDEX picks the wheel index of torch alone: empty uses pip's configured index; on a CPU-only
# machine `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` avoids the CUDA build, and on a GPU
# machine `TORCH_INDEX=https://download.pytorch.org/whl/cu128` (or your CUDA version) gets a CUDA one.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0
TORCH_INDEX ?=
TORCH_FLAGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
export OVERTRAIN_HOME ?= $(CURDIR)/.overtrain

.PHONY: install demo test lint test-slow bench fault-injection clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_FLAGS) $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/overtrain demo

# one process per core, one BLAS/OpenMP thread each: the suite's tensors are tiny, so two workers with one
# thread each run it in about half the time of one worker with two threads (measured: 126 s vs 234 s on 2 cores)
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# the slow tests include the Ray executor's: Ray (~240 MB) is installed for them only, not for `make test`
RAY_STAMP := $(VENV)/.ray-stamp
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check 'ray>=2.9'
	touch $(RAY_STAMP)

test-slow: $(STAMP) $(RAY_STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python bench/pretrain_throughput.py

fault-injection: $(STAMP)
	$(BIN)/python bench/fault_injection.py

clean:
	rm -rf $(VENV) .overtrain .pytest_cache build src/*.egg-info
