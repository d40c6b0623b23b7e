"""Probe: a floor under the threshold an intent set's examples give.

    .venv/bin/python tools/threshold_floor_probe.py [--sets a,b|PATH.yaml:PATH.tsv,...] [--json OUT]

A set with 8 or more examples rejects below the scope of its weakest example, each scored against
the rest (`model.semantic.example_threshold`). One odd example sets it low: museum 0.57 ("What is
this thing?"), gym 0.35, library 0.54, and there 25-61 % of the off-topic sentences get through.
The floor is the checkpoint's own learnt rule (`reject_below`, 0.80 for the starter: learnt on
MIntRec with intents held out as unknown), which a set without examples uses already:
threshold = max(weakest example, learnt rule). Classification is unchanged; only what is rejected.

Rule fixed before the first run (2026-11-30): over the thirteen never-seen sets of the tests (A),
adopt the floor only if the sets meeting both coverage >= 90 % and out-of-scope recall >= 80 % at
the threshold in use rise in number and the mean in-scope accuracy (rejections count as errors)
falls by at most 1 point; then on a batch written blind after this rule (cinema, garage, school;
B), scored once: the number meeting both does not fall and the mean in-scope accuracy falls by at
most 1 point.

Result: rejected (docs/results/zero_shot.md, update 5).

Second probe, a clamp, fixed before its run (2026-11-30): threshold = the weakest example's, moved
into [learnt rule - 0.1, learnt rule + 0.1] (the margin the lax-threshold warning uses): an odd
example no longer sets it far below the rule, nor a tight set of examples far above it (vet 0.91,
hotel room 0.94 kept 82-83 % of their in-scope sentences). Over the twenty-two never-seen sets
(`--sets all`), adopt only if the sets meeting both coverage >= 90 % and OOS recall >= 80 % at the
threshold in use rise in number and the mean in-scope accuracy falls by at most 0.5 points; then
on a seventh batch written blind after this rule (dental practice, charging station, ski resort),
scored once: the number meeting both does not fall and the mean in-scope accuracy falls by at
most 0.5 points.

Result (`docs/results/intent_sets/threshold_clamp_probe.json`): meeting both 8 -> 8 of 22 (helpdesk
and hotel room join, bank and post office leave), mean in-scope accuracy 79.53 -> 79.91, mean OOS
recall at the threshold in use 79.50 -> 81.27: **rejected** (the count does not rise); the seventh
batch is scored with the shipped method instead.
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

SETS = intent_set_files(NEVER_SEEN_SETS[:13])  # the sets the first rule names
CLAMP_MARGIN = 0.1  # model.semantic.LAX_THRESHOLD_MARGIN, the second rule's
RULES = ("shipped", "floored", "clamped")


def score(model: Any, tokenizer: Any, yaml: Path, tsv: Path) -> dict[str, Any]:
    scored = embedded_eval_set(model, tokenizer, yaml, tsv)
    anchors, scores, known = scored.anchors, scored.scores, scored.known
    right = (scores.probs.argmax(axis=1) == scored.truth) & known
    out: dict[str, Any] = {"shipped_threshold": anchors.reject_below, "floor": model.config.reject_below}
    learnt = model.config.reject_below
    for rule, threshold in (
        ("shipped", anchors.reject_below),
        ("floored", max(anchors.reject_below, learnt)),
        ("clamped", min(max(anchors.reject_below, learnt - CLAMP_MARGIN), learnt + CLAMP_MARGIN)),
    ):
        accepted = scores.scope >= threshold
        out[rule] = {
            "threshold": round(float(threshold), 4),
            "in_scope_acc": round(100 * float((right & accepted).sum() / known.sum()), 2),
            "coverage": round(100 * float(accepted[known].mean()), 2),
            "oos_recall": round(100 * float((~accepted[~known]).mean()), 2),
        }
        out[rule]["meets_both"] = out[rule]["coverage"] >= 90 and out[rule]["oos_recall"] >= 80
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sets",
        default=",".join(SETS),
        help="comma-separated set names, 'all' (every never-seen set), or PATH.yaml:PATH.tsv",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_checkpoint(resolve_ckpt("default"))
    results: dict[str, Any] = {}
    every = intent_set_files()
    sets = every if args.sets == "all" else chosen_sets(args.sets, every)
    for name, (yaml, tsv) in sets.items():
        results[name] = score(model, tokenizer, yaml, tsv)
        print(name, {rule: results[name][rule] for rule in RULES})
    for rule in RULES:
        rows = [r[rule] for r in results.values()]
        print(
            f"{rule}: meets both {sum(r['meets_both'] for r in rows)} of {len(rows)}; mean in-scope acc "
            f"{np.mean([r['in_scope_acc'] for r in rows]):.2f}, coverage {np.mean([r['coverage'] for r in rows]):.2f}, "
            f"OOS recall {np.mean([r['oos_recall'] for r in rows]):.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "sets": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
