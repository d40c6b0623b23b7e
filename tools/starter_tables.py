"""The starter model card's tables: ablations, noise robustness, and real degradations.

    .venv/bin/python tools/starter_tables.py --data runs/corpus-data --mintrec data/mintrec \\
        --train-data runs/starter-data --starter runs/starter --out runs/starter-tables

Trains the three ablations of the paper (equal-weight fusion, no quality module, no consistency
loss) with the starter recipe, then scores every model on the held-out generated test split
(mixed degradations) and the full and equal-weight models under Gaussian feature noise of
sigma 0.3 / 0.5 / 0.7, plus per-degradation accuracy. Writes tables.md and tables.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "starter.yaml"
ABLATIONS = {
    "paper weights (softmax over audio, video)": ["--fusion-weights", "paper"],
    "equal-weight fusion": ["--fusion", "equal"],
    "no quality module": ["--no-quality"],
    "no consistency loss": ["--no-consistency"],
}


def dfmq(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stream.cli", *args], check=True)


def evaluate(ckpt: Path, data: Path, out: Path, noise: float = 0.0, split: str = "test") -> dict[str, Any]:
    dfmq(
        "eval",
        "--ckpt",
        str(ckpt),
        "--dataset",
        "mintrec",
        "--data",
        str(data),
        "--split",
        split,
        "--noise",
        str(noise),
        "--json",
        str(out),
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def calibration_table(starter: Path, corpus: Path, mintrec: Path, out: Path) -> dict[str, dict[str, float]]:
    """ECE of the full model with its fitted temperature and with none (a copy at T = 1)."""
    uncalibrated = out / "full-uncalibrated"
    shutil.rmtree(uncalibrated, ignore_errors=True)
    shutil.copytree(starter, uncalibrated)
    config = json.loads((uncalibrated / "config.json").read_text())
    temperature = float(config["model"].get("temperature", 1.0))
    config["model"]["temperature"] = 1.0
    (uncalibrated / "config.json").write_text(json.dumps(config, indent=2))
    table = {}
    for name, data, split in (("generated test split", corpus, "test"), ("MIntRec dev (text only)", mintrec, "dev")):
        before = evaluate(uncalibrated, data, out / f"uncalibrated-{split}.json", split=split)
        after = evaluate(starter, data, out / f"calibrated-{split}.json", split=split)
        table[name] = {"uncalibrated": before["ece"], "calibrated": after["ece"], "temperature": temperature}
    return table


def per_degradation(predictions: Path, corpus_data: Path, labels_csv: Path) -> dict[str, tuple[float, int]]:
    clip_of = dict(line.split("\t") for line in (corpus_data / "clips.tsv").read_text().splitlines()[1:])
    with labels_csv.open() as handle:
        degradation = {row["clip"]: row["degradation"] for row in csv.DictReader(handle)}
    hits: dict[str, list[int]] = defaultdict(list)
    for line in predictions.read_text().splitlines()[1:]:
        key, label, predicted, *_ = line.split("\t")
        kind = degradation[clip_of[key]]
        family = kind.split("_")[0] if kind.startswith("noise") else kind
        hits[family].append(int(label == predicted))
        hits["all"].append(int(label == predicted))
    return {k: (100.0 * sum(v) / len(v), len(v)) for k, v in sorted(hits.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/corpus-data"), help="extracted generated corpus")
    parser.add_argument("--labels", type=Path, default=Path("runs/corpus/labels.csv"), help="the corpus labels.csv")
    parser.add_argument("--mintrec", type=Path, default=Path("data/mintrec"), help="MIntRec text folder")
    parser.add_argument("--train-data", type=Path, default=Path("runs/starter-data"), help="merged training folder")
    parser.add_argument("--starter", type=Path, default=Path("runs/starter"), help="the full model's checkpoint")
    parser.add_argument("--out", type=Path, default=Path("runs/starter-tables"), help="folder for results")
    parser.add_argument("--skip-training", action="store_true", help="reuse ablation checkpoints already in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    models = {"full DFMQ-MC": args.starter}
    for name, flags in ABLATIONS.items():
        ckpt = args.out / "".join(c if c.isalnum() else "-" for c in name).strip("-")
        if not args.skip_training or not (ckpt / "config.json").is_file():
            dfmq(
                "train",
                "--dataset",
                "mintrec",
                "--data",
                str(args.train_data),
                "--out",
                str(ckpt),
                "--config",
                str(CONFIG),
                *flags,
            )
        models[name] = ckpt

    report: dict[str, Any] = {"ablation": {}, "noise": {}, "degradations": {}, "mintrec_dev": {}}
    for name, ckpt in models.items():
        tag = ckpt.name
        metrics = evaluate(ckpt, args.data, args.out / f"{tag}-test.json")
        report["ablation"][name] = {
            "acc": metrics["acc"],
            "f1_macro": metrics["f1_macro"],
            "mean_weights": metrics["mean_weights"],
        }
        report["degradations"][name] = per_degradation(args.out / f"{tag}-test.predictions.tsv", args.data, args.labels)
        report["mintrec_dev"][name] = evaluate(ckpt, args.mintrec, args.out / f"{tag}-mintrec-dev.json", split="dev")[
            "acc"
        ]
    for name in ("full DFMQ-MC", "paper weights (softmax over audio, video)", "equal-weight fusion"):
        ckpt = models[name]
        report["noise"][name] = {
            str(sigma): evaluate(ckpt, args.data, args.out / f"{ckpt.name}-noise{sigma}.json", noise=sigma)["acc"]
            for sigma in (0.0, 0.3, 0.5, 0.7)
        }
    report["calibration"] = calibration_table(args.starter, args.data, args.mintrec, args.out)
    (args.out / "tables.json").write_text(json.dumps(report, indent=2))

    full = report["ablation"]["full DFMQ-MC"]
    lines = ["| variant | acc | change | macro F1 | change | mean w_audio / w_video |", "|---|---|---|---|---|---|"]
    for name in [*ABLATIONS, "full DFMQ-MC"]:
        row = report["ablation"][name]
        w = row["mean_weights"]
        lines.append(
            f"| {name} | {row['acc']:.2f} | {row['acc'] - full['acc']:+.2f} | {row['f1_macro']:.2f} | "
            f"{row['f1_macro'] - full['f1_macro']:+.2f} | {w['audio']:.2f} / {w['video']:.2f} |"
        )
    lines += [
        "",
        "| Gaussian noise on audio and video features | " + " | ".join(report["noise"]) + " |",
        "|---|" + "---|" * len(report["noise"]),
    ]
    for sigma in ("0.0", "0.3", "0.5", "0.7"):
        lines.append(
            f"| sigma {sigma} | " + " | ".join(f"{report['noise'][m][sigma]:.2f}" for m in report["noise"]) + " |"
        )
    kinds = list(report["degradations"]["full DFMQ-MC"])
    lines += ["", "| accuracy by degradation (n) | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for kind in kinds:
        n = report["degradations"]["full DFMQ-MC"][kind][1]
        lines.append(
            f"| {kind} ({n}) | " + " | ".join(f"{report['degradations'][m][kind][0]:.1f}" for m in models) + " |"
        )
    lines += [
        "",
        "| MIntRec dev accuracy, text only | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
        "| acc | " + " | ".join(f"{report['mintrec_dev'][m]:.2f}" for m in models) + " |",
    ]
    lines += [
        "",
        "| expected calibration error (15 bins), full model | temperature 1 (uncalibrated) | fitted on dev |",
        "|---|---|---|",
    ]
    for split, row in report["calibration"].items():
        lines.append(
            f"| {split} | {row['uncalibrated']:.2f} % | {row['calibrated']:.2f} % (T = {row['temperature']:.3f}) |"
        )
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
