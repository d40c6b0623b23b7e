"""Zero-shot scoring of intent sets the model has never seen: prototype-aggregation variants side by side.

    .venv/bin/python tools/zero_shot_bench.py [--ckpt default] [--json docs/results/zero_shot.json]

For each (intent set, held-out tsv) pair of SETS, the transcripts are embedded once by the frozen
sentence encoder (what `dfmq eval --intents` scores for a set the model was not trained on), then
every variant turns the cosines to the set's prototypes (each intent's description and examples)
into one similarity per intent:

- max: the highest cosine to any of the intent's prototypes (`model.semantic` before this bench);
- desc+ex: the mean of the description's cosine and the best example's cosine;
- centroid: the cosine to the normalised sum of the intent's unit-norm prototypes;
- lme: log-mean-exp of the cosines at the set's similarity temperature (between mean and max).

Each variant's similarity also drives the rejection: the scope (share of the off-topic background
sentences whose best similarity is lower) and the threshold from the set's examples, each example
scored by the same variant against the set without itself (the weakest of them sets it). With descriptions
only every variant is the same (one prototype per intent), and the threshold is the checkpoint's.

Prints one table (variants x sets, means) and writes the JSON when --json is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.checkpoint import load_checkpoint  # noqa: E402
from model.intents import Intent, IntentSet, load_intent_set  # noqa: E402
from model.openset import TextDecision, classify_texts, open_set_metrics, read_labelled_tsv  # noqa: E402
from model.semantic import (  # noqa: E402
    MIN_EXAMPLES,
    build_anchors,
    embed_sentences,
    offtopic_sentences,
    scope_of,
    text_outputs,
)

INTENTS = ROOT / "configs" / "intents"
EVAL = ROOT / "tests" / "data" / "intents"
SETS = {
    "kiosk": (INTENTS / "kiosk.yaml", EVAL / "kiosk_eval.tsv"),
    "lab": (INTENTS / "lab.yaml", EVAL / "lab_eval.tsv"),
    "home": (INTENTS / "home.yaml", EVAL / "home_eval.tsv"),
    "car": (EVAL / "car.yaml", EVAL / "car_eval.tsv"),  # written blind, after the scoring was chosen
}


class Prototypes:
    """A set's prototypes in the semantic space; `available` (N, P) masks prototypes per query row
    (leave-one-out scoring of the set's own examples)."""

    def __init__(self, vectors: np.ndarray, owner: np.ndarray, is_description: np.ndarray, n_intents: int) -> None:
        self.vectors = vectors
        self.owner = owner
        self.is_description = is_description
        self.onehot = (owner[:, None] == np.arange(n_intents)[None, :]).astype(np.float64)  # (P, K)


Variant = Callable[[np.ndarray, np.ndarray, Prototypes, float], np.ndarray]


def _masked(cos: np.ndarray, available: np.ndarray, fill: float) -> np.ndarray:
    return np.where(available, cos, fill)


def max_sim(cos: np.ndarray, available: np.ndarray, protos: Prototypes, temperature: float) -> np.ndarray:
    masked = _masked(cos, available, -np.inf)
    return np.stack([masked[:, protos.owner == k].max(axis=1) for k in range(protos.onehot.shape[1])], axis=1)


def desc_and_best_example(cos: np.ndarray, available: np.ndarray, protos: Prototypes, temperature: float) -> np.ndarray:
    out = np.empty((cos.shape[0], protos.onehot.shape[1]))
    for k in range(out.shape[1]):
        desc = cos[:, (protos.owner == k) & protos.is_description][:, 0]
        ex = (protos.owner == k) & ~protos.is_description
        masked = _masked(cos[:, ex], available[:, ex], -np.inf)
        best = masked.max(axis=1) if ex.any() else np.full(len(cos), -np.inf)
        out[:, k] = np.where(np.isfinite(best), 0.5 * (desc + best), desc)
    return out


def centroid(cos: np.ndarray, available: np.ndarray, protos: Prototypes, temperature: float) -> np.ndarray:
    # cos(q, sum_j p_j / |sum_j p_j|) = sum_j cos(q, p_j) / |sum_j p_j|, the norm from the Gram matrix
    # of the prototypes each row may use.
    gram = protos.vectors.astype(np.float64) @ protos.vectors.T.astype(np.float64)
    members = available[:, :, None] * protos.onehot[None, :, :]  # (N, P, K)
    numerator = np.einsum("np,npk->nk", cos, members)
    norm = np.sqrt(np.einsum("npk,pq,nqk->nk", members, gram, members))
    return numerator / norm


def log_mean_exp(cos: np.ndarray, available: np.ndarray, protos: Prototypes, temperature: float) -> np.ndarray:
    z = _masked(cos, available, -np.inf) / temperature
    top = z.max(axis=1, keepdims=True)
    weights = np.exp(z - top) @ protos.onehot  # (N, K)
    counts = available.astype(np.float64) @ protos.onehot
    return temperature * (np.log(weights / counts) + top)


VARIANTS: dict[str, Variant] = {
    "max": max_sim,
    "desc+ex": desc_and_best_example,
    "centroid": centroid,
    "lme": log_mean_exp,
}


def set_threshold(
    variant: Variant, protos: Prototypes, background: np.ndarray, temperature: float, fallback: float
) -> float:
    examples = ~protos.is_description
    if examples.sum() < MIN_EXAMPLES:
        return fallback
    cos = protos.vectors[examples] @ protos.vectors.T
    available = np.ones_like(cos, dtype=bool)
    available[np.arange(len(cos)), np.flatnonzero(examples)] = False  # not against itself
    best = variant(cos, available, protos, temperature).max(axis=1)
    return float(scope_of(background, best).min())  # the weakest example's, as model/semantic.py


def _metrics(
    truth: list[str], texts: list[str], names: tuple[str, ...], sims: np.ndarray, scope: np.ndarray, threshold: float
) -> dict[str, Any]:
    decisions = []
    for i, text in enumerate(texts):
        best = names[int(sims[i].argmax())]
        decisions.append(TextDecision(text, best if scope[i] >= threshold else None, best, 0.0, float(scope[i]), {}))
    return {**open_set_metrics(truth, decisions, names), "reject_below": round(threshold, 3)}


def score_set(model: Any, tokenizer: Any, intent_set: IntentSet, tsv: Path) -> dict[str, dict[str, Any]]:
    """Every (classify, scope) pair of VARIANTS on one set, and the shipped code path as a check."""
    cfg = model.config
    temperature = cfg.similarity_temperature
    truth, texts = read_labelled_tsv(tsv, intent_set)
    queries = text_outputs(model, tokenizer, texts)[2]
    background_embeddings = embed_sentences(model, tokenizer, offtopic_sentences()[0])
    out: dict[str, dict[str, Any]] = {}
    for mode, shown_set in (("descriptions", descriptions_only(intent_set)), ("examples", intent_set)):
        texts_p, owner, is_desc = [], [], []
        for k, intent in enumerate(shown_set.intents):
            for i, text in enumerate((intent.description, *intent.examples)):
                texts_p.append(text)
                owner.append(k)
                is_desc.append(i == 0)
        protos = Prototypes(
            embed_sentences(model, tokenizer, texts_p), np.array(owner), np.array(is_desc), len(intent_set)
        )
        sims, scopes, thresholds = {}, {}, {}
        for name, variant in VARIANTS.items():
            cos = queries @ protos.vectors.T
            sims[name] = variant(cos, np.ones_like(cos, dtype=bool), protos, temperature)
            cos_bg = background_embeddings @ protos.vectors.T
            background = np.sort(variant(cos_bg, np.ones_like(cos_bg, dtype=bool), protos, temperature).max(axis=1))
            thresholds[name] = set_threshold(variant, protos, background, temperature, cfg.reject_below)
            scopes[name] = scope_of(background, sims[name].max(axis=1))
        # One prototype per intent: every variant is the nearest prototype.
        pairs = [(c, f) for c in VARIANTS for f in VARIANTS] if mode == "examples" else [("max", "max")]
        for classify, fit in pairs:
            row = f"{mode}: classify {classify}, scope {fit}"
            out[row] = _metrics(truth, texts, intent_set.names, sims[classify], scopes[fit], thresholds[fit])
        anchors = build_anchors(model, tokenizer, shown_set)
        decisions = classify_texts(model, tokenizer, anchors, texts)
        out[f"{mode}: model/semantic.py"] = {
            **open_set_metrics(truth, decisions, intent_set.names),
            "reject_below": round(anchors.reject_below, 3),
        }
    return out


def descriptions_only(intent_set: IntentSet) -> IntentSet:
    return IntentSet(tuple(Intent(i.name, i.description) for i in intent_set.intents), intent_set.source)


def _cell(values: list[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in [*values, sum(values) / len(values)])


def tables(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: the two adoption criteria per set and their means, then the rule in use."""
    sets = list(results)
    rows = list(next(iter(results.values())))
    cols = " | ".join([*sets, "mean"])
    lines = [
        f"| scoring | in-scope acc: {cols} | OOS recall at 90 % coverage: {cols} |",
        "|---" * (2 * len(sets) + 3) + "|",
    ]
    for row in rows:
        acc = _cell([results[s][row]["in_scope_acc"] for s in sets])
        recall = _cell([results[s][row]["oos_recall_at_90_coverage"] for s in sets])
        lines.append(f"| {row} | {acc} | {recall} |")
    lines += [
        "",
        "Per set: closed-set accuracy / coverage / OOS recall (the threshold in use) / AUROC of the scope / threshold",
        "",
        "| scoring | " + " | ".join(sets) + " |",
        "|---" * (len(sets) + 1) + "|",
    ]
    for row in rows:
        cells = []
        for s in sets:
            m = results[s][row]
            cells.append(
                f"{m['closed_acc']:.1f} / {m['coverage']:.1f} / {m['oos_recall']:.1f} / {m['auroc']:.1f} / "
                f"{m['reject_below']:.2f}"
            )
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zero_shot_bench.py", description=__doc__)
    parser.add_argument("--ckpt", default="default", help="checkpoint directory or 'default' (the starter)")
    parser.add_argument("--json", type=Path, help="write every metric of every variant and set here")
    args = parser.parse_args(argv)
    from model.checkpoint import STARTER_DIR

    model, tokenizer = load_checkpoint(STARTER_DIR if args.ckpt == "default" else Path(args.ckpt))
    results = {name: score_set(model, tokenizer, load_intent_set(yaml), tsv) for name, (yaml, tsv) in SETS.items()}
    print(tables(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
