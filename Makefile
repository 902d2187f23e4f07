# Two commands on a fresh machine with only Python:  `make demo`  and  `make test`.
VENV  ?= .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.pleura-installed
DEMO  ?= demo

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	@touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded synthetic default: simulate a dataset with a gallery.
demo: $(STAMP)
	$(BIN)/pleura simulate --out $(DEMO) --n 60 --frames 4 --gallery --overwrite

## The test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_train_seg.py
	$(BIN)/python benchmarks/bench_reproduce.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
