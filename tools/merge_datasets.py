"""Merge MIntRec-layout folders (tsv splits, feature pickles, quality statistics) into one.

    .venv/bin/python tools/merge_datasets.py --out runs/starter-data data/mintrec runs/corpus-data

Used to train the starter model on the MIntRec text and the generated corpus together. Sample keys
must be unique across the inputs; folders with features must agree on their features.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

from model.data import FEATURE_OPTIONS_FILE, QUALITY_STATS_FILE

PICKLES = ("audio_feats.pkl", "video_feats.pkl", QUALITY_STATS_FILE)


def merge(inputs: list[Path], out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in ("train", "dev", "test"):
        header, rows = None, []
        for folder in inputs:
            path = folder / f"{split}.tsv"
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            if header is not None and lines[0] != header:
                raise SystemExit(f"{path}: header {lines[0]!r} differs from {header!r}")
            header = lines[0]
            rows += [line for line in lines[1:] if line.strip()]
        if header is not None:
            (out / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
            counts[split] = len(rows)
    for name in PICKLES:
        merged: dict[str, Any] = {}
        for folder in inputs:
            if (folder / name).is_file():
                with (folder / name).open("rb") as handle:
                    part = pickle.load(handle)
                clash = set(part) & set(merged)
                if clash:
                    raise SystemExit(f"{folder / name}: keys also in another input, e.g. {sorted(clash)[:3]}")
                merged.update(part)
        if merged:
            with (out / name).open("wb") as handle:
                pickle.dump(merged, handle)
    options = [
        json.loads((f / FEATURE_OPTIONS_FILE).read_text()) for f in inputs if (f / FEATURE_OPTIONS_FILE).is_file()
    ]
    if options:
        if any(o != options[0] for o in options):
            raise SystemExit("inputs were extracted with different feature options")
        (out / FEATURE_OPTIONS_FILE).write_text(json.dumps(options[0], indent=2))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="dataset folders to merge")
    parser.add_argument("--out", required=True, type=Path, help="merged folder to write")
    args = parser.parse_args()
    counts = merge(args.inputs, args.out)
    print(f"merged {len(args.inputs)} folders into {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
