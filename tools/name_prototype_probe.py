"""Probe: does an intent's name, embedded as one more prototype of its centroid, classify better?

    .venv/bin/python tools/name_prototype_probe.py [--sets a,b] [--json OUT]

Sets written for short, telling names ("Order food", "Change order", "Order status") whose intents
the description and three examples leave confusable. Only the classification of a set the model was
not trained on changes (the centroid of description + examples, + the name); the scope and the
threshold stay as shipped, so coverage and out-of-scope figures do not move.

Rule fixed before the first run (2026-11-30): over the ten never-seen sets of the tests (kiosk,
lab, home, car, restaurant, clinic, museum, bank, airport, helpdesk), adopt `name` only if the
in-scope sentences classified right (rejections count as wrong) rise in sum and no set loses more
than one; then confirm once on a batch written blind after the rule (pharmacy, gym, library):
adopt only if their sum does not fall. `templated` ("I want to <name>.") is reported, not
adoptable: choosing between two variants after seeing both would be tuning on these sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import NEVER_SEEN_SETS, intent_set_files  # noqa: E402

from model.checkpoint import load_checkpoint, resolve_ckpt  # noqa: E402
from model.intents import load_intent_set  # noqa: E402
from model.openset import OOS_LABEL, read_labelled_tsv  # noqa: E402
from model.semantic import build_anchors, embed_sentences  # noqa: E402

SETS = intent_set_files(NEVER_SEEN_SETS[:10])  # the sets the rule above names
VARIANTS = {"shipped": None, "name": "{name}.", "templated": "I want to {lower}."}


def score(model, tokenizer, yaml: Path, tsv: Path) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    intent_set = load_intent_set(yaml)
    anchors = build_anchors(model, tokenizer, intent_set)
    labels, texts = read_labelled_tsv(tsv, intent_set)
    sentences = embed_sentences(model, tokenizer, texts)
    in_scope = anchors.score(sentences, sentences).in_scope
    truth = np.array([anchors.names.index(label) if label != OOS_LABEL else -1 for label in labels])
    known = truth >= 0
    sums = (anchors.owner[None, :] == np.arange(len(anchors.names))[:, None]).astype(np.float32) @ anchors.prototypes
    out: dict[str, dict[str, float]] = {}
    for variant, template in VARIANTS.items():
        centroids = sums.copy()
        if template is not None:
            names = [template.format(name=n, lower=n.lower()) for n in anchors.names]
            centroids = centroids + embed_sentences(model, tokenizer, names)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        best = (sentences @ centroids.T).argmax(axis=1)
        right = (best == truth) & known
        out[variant] = {
            "in_scope_right": int((right & in_scope).sum()),
            "closed_set_right": int(right.sum()),
            "in_scope_sentences": int(known.sum()),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated names of SETS, or PATH.yaml:PATH.tsv")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_checkpoint(resolve_ckpt("default"))
    results = {}
    for item in args.sets.split(","):
        yaml, tsv = SETS[item] if item in SETS else tuple(Path(p) for p in item.split(":"))
        results[Path(yaml).stem] = score(model, tokenizer, Path(yaml), Path(tsv))
        row = results[Path(yaml).stem]
        print(
            Path(yaml).stem,
            {v: (r["in_scope_right"], r["closed_set_right"], r["in_scope_sentences"]) for v, r in row.items()},
        )
    for variant in VARIANTS:
        total = sum(r[variant]["in_scope_right"] for r in results.values())
        n = sum(r[variant]["in_scope_sentences"] for r in results.values())
        print(f"{variant}: in-scope right {total} of {n} ({100 * total / n:.2f} %)")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "sets": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
