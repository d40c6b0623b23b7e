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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import NEVER_SEEN_SETS, chosen_sets, embedded_eval_set, intent_set_files  # noqa: E402

from model.checkpoint import load_checkpoint, resolve_ckpt  # noqa: E402
from model.semantic import embed_sentences  # noqa: E402

SETS = intent_set_files(NEVER_SEEN_SETS[:10])  # the sets the rule above names
VARIANTS = {"shipped": None, "name": "{name}.", "templated": "I want to {lower}."}


def score(model: Any, tokenizer: Any, yaml: Path, tsv: Path) -> dict[str, dict[str, float]]:
    scored = embedded_eval_set(model, tokenizer, yaml, tsv)
    anchors, known = scored.anchors, scored.known
    sums = anchors.membership() @ anchors.prototypes
    out: dict[str, dict[str, float]] = {}
    for variant, template in VARIANTS.items():
        centroids = sums.copy()
        if template is not None:
            names = [template.format(name=n, lower=n.lower()) for n in anchors.names]
            centroids = centroids + embed_sentences(model, tokenizer, names)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        best = (scored.sentences @ centroids.T).argmax(axis=1)
        right = (best == scored.truth) & known
        out[variant] = {
            "in_scope_right": int((right & scored.scores.in_scope).sum()),
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
    for name, (yaml, tsv) in chosen_sets(args.sets, SETS).items():
        row = results[name] = score(model, tokenizer, yaml, tsv)
        print(
            name,
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
