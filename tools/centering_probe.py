"""Probe: classify a never-seen set's utterances in a centred sentence space.

    .venv/bin/python tools/centering_probe.py [--json OUT]

Sentence embeddings of a small encoder share a common direction (anisotropy): every cosine between
two sentences is inflated by it, and the differences between confusable intents shrink. Here the
mean embedding of the shipped off-topic background sentences (what every set's scope is already
calibrated on) is subtracted from the utterances and from each intent's prototypes before the
centroid cosine that classifies. Only classification changes; scope, threshold, coverage and the
out-of-scope figures are as shipped.

Rule fixed before the first run (2026-11-30): over the sixteen never-seen sets of the tests, adopt
only if the in-scope sentences classified right (rejections count as wrong) rise in sum and no set
loses more than one. No other variant is tried.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import embedded_eval_set, intent_set_files  # noqa: E402

from model.checkpoint import load_checkpoint, resolve_ckpt  # noqa: E402
from model.semantic import embed_sentences, offtopic_sentences  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_checkpoint(resolve_ckpt("default"))
    centre = embed_sentences(model, tokenizer, offtopic_sentences()[0]).mean(axis=0)
    results: dict[str, dict[str, int]] = {}
    for name, (yaml, tsv) in intent_set_files().items():
        scored = embedded_eval_set(model, tokenizer, yaml, tsv)
        anchors, truth = scored.anchors, scored.truth
        row: dict[str, int] = {"in_scope_sentences": int(scored.known.sum())}
        for variant, shift in (("shipped", 0.0 * centre), ("centred", centre)):
            prototypes = anchors.prototypes - shift
            prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
            centroids = anchors.membership() @ prototypes
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
            best = ((scored.sentences - shift) @ centroids.T).argmax(axis=1)
            row[variant] = int(((best == truth) & scored.known & scored.scores.in_scope).sum())
        results[name] = row
        print(name, row)
    for variant in ("shipped", "centred"):
        print(
            f"{variant}: in-scope right {sum(r[variant] for r in results.values())} of "
            f"{sum(r['in_scope_sentences'] for r in results.values())}"
        )
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "sets": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
