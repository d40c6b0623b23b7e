# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on these machines' disk; a bare `torch` pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint typecheck pytest train-mintrec starter starter-tables clean

$(BIN)/dfmq: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,audio,asr-base]"
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

# The shipped starter model, from scratch: corpus, features, merged data, training, copy into the
# package (model/starter), then the model card's tables.
starter: install
	$(BIN)/dfmq synth --out runs/corpus --per-intent 40 --seed 0 --text-source data/mintrec/train.tsv
	$(BIN)/dfmq extract --clips runs/corpus/clips --labels runs/corpus/labels.csv --out runs/corpus-data
	$(BIN)/python tools/merge_datasets.py --out runs/starter-data data/mintrec runs/corpus-data
	$(BIN)/dfmq train --dataset mintrec --data runs/starter-data --out runs/starter --config configs/starter.yaml
	rm -rf model/starter && mkdir -p model/starter
	cp -r runs/starter/config.json runs/starter/weights.pt runs/starter/text_encoder runs/starter/intents.yaml model/starter/

starter-tables: install
	$(BIN)/python tools/starter_tables.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
