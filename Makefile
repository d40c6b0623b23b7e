# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on these machines' disk; a bare `torch` pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint typecheck pytest train-mintrec clean

$(BIN)/dfmq: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,audio]"
	touch $(BIN)/dfmq

install: $(BIN)/dfmq

demo: install
	$(BIN)/dfmq demo

lint: install
	$(BIN)/ruff check stream model engines tests tools
	$(BIN)/ruff format --check stream model engines tests tools

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The README's MIntRec text-only figure: train from scratch, then score dev.
train-mintrec: install
	$(BIN)/dfmq train --dataset mintrec --data data/mintrec --out runs/mintrec-text
	$(BIN)/dfmq eval --ckpt runs/mintrec-text --dataset mintrec --data data/mintrec --split dev --json runs/mintrec-text/dev.json

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
