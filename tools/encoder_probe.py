"""Zero-shot scoring of the never-seen intent sets with another sentence encoder in place of the
shipped all-MiniLM-L6-v2: the question is whether a bigger encoder is worth shipping.

    .venv/bin/python tools/encoder_probe.py --encoder FOLDER [--encoder FOLDER ...] [--json OUT]

FOLDER: a sentence-transformers model folder (config.json, tokenizer, weights), read as
`--sentence-encoder` reads it (`model.semantic.SentenceEncoder`); `minilm` is the shipped one. Each
set is scored exactly as `dfmq eval --intents` scores a set the model was not trained on (`model/semantic.py`: centroid
classification, description-and-best-example fit less the pull of other domains' requests,
continuous scope, the weakest example's threshold; every set here has 24 examples), only
the embeddings differ. Not part of the product: the encoders it compares are not dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zero_shot_bench import SETS  # noqa: E402

from model.checkpoint import STARTER_DIR, default_text_encoder_folder, load_checkpoint  # noqa: E402
from model.intents import load_intent_set  # noqa: E402
from model.openset import TextDecision, open_set_metrics, read_labelled_tsv  # noqa: E402
from model.semantic import SentenceEncoder, build_anchors  # noqa: E402

KEYS = ("closed_acc", "in_scope_acc", "coverage", "oos_recall", "auroc", "oos_recall_at_90_coverage")


def score(
    model: Any, tokenizer: Any, embed: Callable[[Sequence[str]], np.ndarray], yaml: Path, tsv: Path
) -> dict[str, float]:
    intent_set = load_intent_set(yaml)
    anchors = build_anchors(model, tokenizer, intent_set, encoder=embed)
    labels, sentences = read_labelled_tsv(tsv, intent_set)
    started = time.perf_counter()
    embeddings = embed(sentences)
    ms_per_sentence = 1000 * (time.perf_counter() - started) / len(sentences)
    scores = anchors.score(embeddings, embeddings)
    decisions = [
        TextDecision(
            text=text,
            intent=intent_set.names[int(best)] if accepted else None,
            best=intent_set.names[int(best)],
            probability=float(probs.max()),
            scope=float(scope),
            probs={},
        )
        for text, best, accepted, probs, scope in zip(
            sentences, scores.probs.argmax(axis=1), scores.in_scope, scores.probs, scores.scope, strict=True
        )
    ]
    metrics = open_set_metrics(labels, decisions, intent_set.names)
    figures = {key: metrics[key] for key in KEYS}
    return {**figures, "threshold": anchors.reject_below, "ms_per_sentence": ms_per_sentence}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="encoder_probe.py", description=__doc__)
    parser.add_argument("--encoder", action="append", required=True, help="model folder, or 'minilm'")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model, tokenizer = load_checkpoint(STARTER_DIR)  # its settings; the encoder under test embeds
    results: dict[str, dict[str, dict[str, float]]] = {}
    for folder in args.encoder:
        embed = SentenceEncoder(default_text_encoder_folder() if folder == "minilm" else Path(folder))
        name = "minilm" if folder == "minilm" else Path(folder).name
        results[name] = {set_name: score(model, tokenizer, embed, yaml, tsv) for set_name, (yaml, tsv) in SETS.items()}
        for set_name, row in results[name].items():
            print(name, set_name, " ".join(f"{key} {value:.2f}" for key, value in row.items()), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
