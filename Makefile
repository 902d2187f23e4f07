# Two commands on a fresh machine with only Python:  `make demo`  and  `make test`.
VENV  ?= .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.pleura-installed
DEMO  ?= demo

.PHONY: setup demo gallery test test-fast wheel-check lint bench pocus docs clean

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	@touch $(STAMP)

setup: $(STAMP)

## The main job: the seed paper end to end on the embedded simulator (the 10-minute CPU budget).
demo: $(STAMP)
	$(BIN)/pleura reproduce --quick --out $(DEMO)

## A simulated dataset with its gallery (docs/gallery.png comes from this).
gallery: $(STAMP)
	$(BIN)/pleura simulate --out gallery --n 60 --frames 4 --gallery --overwrite

## The test suite (what CI runs), slow tests included.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## The test suite without the tests marked slow (under 2 minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## Build the wheel, install it outside the checkout, run --version, simulate and predict with it (CI runs this).
wheel-check: $(STAMP)
	bash scripts/wheel_check.sh

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_train_seg.py
	$(BIN)/python benchmarks/bench_reproduce.py
	$(BIN)/python benchmarks/bench_infer.py
	$(BIN)/python benchmarks/bench_infer.py --size 128 --widths 4 8 --out benchmarks/results/infer128.json
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_predict.py --model pleura/models/pretrained/pocus-dense-w8-128.safetensors --out benchmarks/results/predict_w8.json
	$(BIN)/python benchmarks/bench_import.py

## The real-data study on ../shared/data/pocus (about an hour on the 2-core CPU).
pocus: $(STAMP)
	$(BIN)/pleura experiment pocus --data ../shared/data/pocus --out runs/pocus

## API pages generated from the docstrings with pdoc into docs/api/ (not committed; open docs/api/index.html).
## Every module is named: pdoc follows only the submodules that a package's __all__ lists.
API_MODULES = $(shell find pleura -name '*.py' ! -name __main__.py ! -path '*/__pycache__/*' | sort)
docs: $(STAMP)
	rm -rf docs/api
	$(BIN)/python -W "ignore:The module specification:UserWarning" -m pdoc -d google -o docs/api $(API_MODULES)

clean:
	rm -rf $(DEMO) gallery .pytest_cache .ruff_cache
