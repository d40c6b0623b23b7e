"""`dfmq adapt` on every never-seen intent set of the tests: in-scope accuracy with and without it.

    .venv/bin/python tools/adapt_bench.py --json docs/results/intent_sets/adapt_bench.json [--sets a,b]

For each set: `dfmq adapt` (timed: what a user waits for), then the set's held-out `_eval.tsv`
scored as `dfmq eval --intents SET --tsv SET_eval.tsv [--adapted DIR]` does, side by side. The
per-set metric files of the adapted runs go beside the JSON (`adapt_bench/<set>.json`, with their
confusion matrices).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import chosen_sets, intent_set_files, write_report  # noqa: E402

from model.adapt import AdaptOptions, adapt, load_adaptation  # noqa: E402
from model.checkpoint import load_checkpoint, resolve_ckpt  # noqa: E402
from model.intents import load_intent_set  # noqa: E402
from model.openset import evaluate_intent_tsv  # noqa: E402
from model.semantic import build_anchors  # noqa: E402

KEPT = ("in_scope_acc", "closed_acc", "coverage", "oos_recall", "auroc", "oos_recall_at_90_coverage")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--sets", help="comma-separated never-seen set names or PATH.yaml:PATH.tsv pairs")
    parser.add_argument("--pairs", type=int, default=AdaptOptions().pairs_per_sentence)
    args = parser.parse_args()
    options = AdaptOptions(pairs_per_sentence=args.pairs)
    sets = intent_set_files() if args.sets is None else chosen_sets(args.sets, intent_set_files())
    model, tokenizer = load_checkpoint(resolve_ckpt("default"))
    outputs = args.json.with_suffix("")
    rows: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "options": dataclasses.asdict(options),
        "sets": rows,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (yaml, tsv) in sets.items():
            folder = Path(tmp) / name
            intent_set = load_intent_set(yaml)
            started = time.perf_counter()
            adapt(model, tokenizer, intent_set, folder, options, progress=False)
            seconds = time.perf_counter() - started
            row: dict[str, Any] = {"adapt_seconds": round(seconds, 1)}
            # What `dfmq eval --intents SET --tsv ... [--adapted DIR]` builds, on the model loaded once.
            adaptation = load_adaptation(folder, model, intent_set)
            for variant, adapted in (("shipped", None), ("adapted", adaptation)):
                anchors = build_anchors(model, tokenizer, intent_set, adaptation=adapted)
                out = outputs / f"{name}_{variant}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                metrics = evaluate_intent_tsv(model, tokenizer, anchors, intent_set, tsv, out)
                row[variant] = {key: metrics[key] for key in KEPT}
            rows[name] = row
            print(name, row, flush=True)
    shipped = [r["shipped"]["in_scope_acc"] for r in rows.values()]
    adapted_acc = [r["adapted"]["in_scope_acc"] for r in rows.values()]
    report["mean_in_scope_acc"] = {
        "shipped": round(sum(shipped) / len(shipped), 2),
        "adapted": round(sum(adapted_acc) / len(adapted_acc), 2),
    }
    report["sets_at_85"] = {
        "shipped": sum(a >= 85.0 for a in shipped),
        "adapted": sum(a >= 85.0 for a in adapted_acc),
        "of": len(rows),
    }
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
