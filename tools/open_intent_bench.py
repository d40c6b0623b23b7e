"""Open intent recognition on MIntRec dev: our out-of-scope rule against a DOC baseline.

    .venv/bin/python tools/open_intent_bench.py [--out runs/open-intent] \\
        [--report docs/results/open_intent.md] [--epochs N] [--seed 0]

1. Five of MIntRec's 20 intents are held out as unknown: `random.Random(seed).sample(MINTREC_LABELS, 5)`.
2. A text-only model is trained (configs/starter.yaml's model and train sections, intent set
   configs/intents/mintrec.yaml) on MIntRec train without the held-out intents' rows; its dev split
   is the full MIntRec dev, held-out intents included (they steer early stopping, the temperature
   and `reject_below` as for any `dfmq train`; the report says so).
3. Dev is scored against the 15 known intents, the held-out intents' utterances being the
   out-of-scope class:
   - ours: the known intents' anchors (`build_anchors`), probabilities
     (1 - head_mix) * softmax(known head logits / T) + head_mix * similarity probabilities,
     rejected when the scope score is below the checkpoint's `reject_below`;
   - DOC (Shu et al. 2017, as in the MIntRec2.0 benchmark code) on the same softmax head: per known
     class k, the head's probability of k on the train samples of k, mirrored around 1, gives
     sigma_k and the threshold max(0.5, 1 - 3 sigma_k); rejected when the top class's probability
     is below its class's threshold.
   Metrics (percent): F1-IS (macro F1 of the 15 known classes on the 16-way prediction), OOS
   recall, OOS F1, in-scope accuracy, AUROC (in-scope positive).
4. Writes <out>/results.json and the markdown report.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from tqdm import tqdm

from model.config import MINTREC_LABELS
from model.errors import DfmqError
from model.intents import IntentSet, load_intent_set

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "starter.yaml"
INTENTS = ROOT / "configs" / "intents" / "mintrec.yaml"
MINTREC = ROOT / "data" / "mintrec"
HELD_OUT = 5
DOC_SCALE = 3.0  # sigma multiples below 1 (DOC's alpha)
DOC_FLOOR = 0.5
DATASET = "mintrec"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="open_intent_bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/open-intent"), help="folder for data, model, results")
    parser.add_argument("--report", type=Path, default=Path("docs/results/open_intent.md"), help="markdown report")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="draws the held-out intents; also the training seed")
    parser.add_argument("--config", type=Path, default=CONFIG, help="YAML with model and train sections")
    parser.add_argument("--mintrec", type=Path, default=MINTREC, help="MIntRec text folder (train.tsv, dev.tsv)")
    parser.add_argument("--intents", type=Path, default=INTENTS, help="intent set of the 20 MIntRec labels")
    parser.add_argument("--device", default="cpu", help="torch device for training and scoring")
    parser.add_argument(
        "--skip-training", action="store_true", help="rescore the checkpoint already in <out>/model (same seed)"
    )
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive integer, got {args.epochs}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    for flag, path in (("--config", args.config), ("--intents", args.intents)):
        if not path.is_file():
            parser.error(f"{flag}: no such file: {path}")
    for split in ("train", "dev"):
        if not (args.mintrec / f"{split}.tsv").is_file():
            parser.error(f"--mintrec: {args.mintrec} has no {split}.tsv")
    if args.report.suffix != ".md":
        parser.error(f"--report must be a .md file, got {args.report}")
    if args.skip_training and not (args.out / "model" / "config.json").is_file():
        parser.error(f"--skip-training: no checkpoint in {args.out / 'model'}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def held_out_intents(seed: int) -> list[str]:
    return random.Random(seed).sample(MINTREC_LABELS, HELD_OUT)


def write_data(mintrec: Path, folder: Path, held_out: list[str]) -> dict[str, int]:
    """train.tsv without the held-out intents' rows, dev.tsv as it is (rows copied verbatim)."""
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in ("train", "dev"):
        lines = (mintrec / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], [line for line in lines[1:] if line.strip()]
        label_col = [h.strip().lower() for h in header.split("\t")].index("label")
        if split == "train":
            rows = [row for row in rows if row.split("\t")[label_col].strip() not in held_out]
        (folder / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
        counts[split] = len(rows)
    return counts


def train_model(args: argparse.Namespace, data: Path, ckpt: Path, intent_set: IntentSet) -> dict[str, Any]:
    from model.config import DFMQConfig
    from model.train import TrainOptions, train
    from stream.options import from_mapping, load_yaml

    raw = load_yaml(args.config)
    model_section = dict(raw.get("model") or {})
    train_section = dict(raw.get("train") or {})
    model_section["labels"] = list(MINTREC_LABELS)
    train_section["seed"] = args.seed
    if args.epochs is not None:
        train_section["epochs"] = args.epochs
    config = DFMQConfig.from_dict(model_section, source=f"{args.config} [model]")
    opts = from_mapping(TrainOptions, train_section, f"{args.config} [train]")
    started, cpu_started = time.monotonic(), time.process_time()
    record = train(DATASET, data, ckpt, config, opts, args.device, None, intent_set)
    record["wall_s"] = round(time.monotonic() - started, 1)
    record["cpu_s"] = round(time.process_time() - cpu_started, 1)  # all threads; unaffected by a paused process
    record["epochs"] = opts.epochs
    return record


def open_set_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_known: int, score: np.ndarray | None
) -> dict[str, float | None]:
    """Percent metrics of a (K+1)-way prediction, class K being out of scope."""
    from sklearn.metrics import f1_score, roc_auc_score

    oos = n_known
    known = np.arange(n_known)
    is_known = y_true != oos
    per_class = f1_score(y_true, y_pred, labels=list(range(n_known + 1)), average=None, zero_division=0)
    oos_true, oos_pred = y_true == oos, y_pred == oos
    return {
        "f1_is": 100.0 * float(np.mean(per_class[known])),
        "oos_recall": 100.0 * float(np.mean(oos_pred[oos_true])),
        "oos_precision": 100.0 * float(np.mean(oos_true[oos_pred])) if oos_pred.any() else 0.0,
        "oos_f1": 100.0 * float(per_class[oos]),
        "in_scope_acc": 100.0 * float(np.mean(y_pred[is_known] == y_true[is_known])),
        "in_scope_coverage": 100.0 * float(np.mean(~oos_pred[is_known])),
        "acc": 100.0 * float(np.mean(y_pred == y_true)),
        "f1_all": 100.0 * float(np.mean(per_class)),
        "auroc": None if score is None else 100.0 * float(roc_auc_score(is_known, score)),
    }


def doc_thresholds(train_probs: np.ndarray, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DOC's per-class thresholds from the train probabilities of each class's own samples,
    mirrored around 1 (p and 2 - p): max(0.5, 1 - 3 sigma). Returns (thresholds, sigmas)."""
    k = train_probs.shape[1]
    sigmas = np.zeros(k)
    for c in range(k):
        p = train_probs[train_labels == c, c]
        if len(p) == 0:
            raise DfmqError(f"DOC: no train samples of known class {c}")
        sigmas[c] = float(np.std(np.concatenate([p, 2.0 - p])))
    return np.maximum(DOC_FLOOR, 1.0 - DOC_SCALE * sigmas), sigmas


def score(
    args: argparse.Namespace, data: Path, ckpt: Path, intent_set: IntentSet, held_out: list[str]
) -> dict[str, Any]:
    from model.checkpoint import load_checkpoint
    from model.metrics import softmax
    from model.semantic import build_anchors
    from model.train import _split_loader, predict, resolve_device

    device = resolve_device(args.device)
    model, tokenizer = load_checkpoint(ckpt, str(device))
    cfg = model.config
    if list(cfg.labels) != list(MINTREC_LABELS):
        raise DfmqError(f"checkpoint labels {cfg.labels} are not the 20 MIntRec labels")
    known_names = [name for name in MINTREC_LABELS if name not in held_out]
    known_cols = np.array([list(cfg.labels).index(name) for name in known_names])
    by_name = {intent.name: intent for intent in intent_set.intents}
    known_set = IntentSet(
        intents=tuple(by_name[name] for name in known_names), source=f"{intent_set.source} (15 known intents)"
    )
    n_known = len(known_names)
    oos = n_known

    steps = tqdm(total=4, desc="scoring", unit="step", disable=None)
    anchors = build_anchors(model, tokenizer, known_set)
    steps.update()
    if anchors.trained:
        raise DfmqError("build_anchors marked the 15-intent set as trained; the head would be mixed in twice")
    dev_loader, _ = _split_loader(model, tokenizer, DATASET, data, "dev", args.seed)
    dev = predict(model, dev_loader, device, cfg.reference, progress=True)
    steps.update()
    train_loader, _ = _split_loader(model, tokenizer, DATASET, data, "train", args.seed)
    trained = predict(model, train_loader, device, cfg.reference, progress=True)
    steps.update()

    # Dev ground truth, 16-way: the known intents in MINTREC_LABELS order, then out of scope.
    col_to_known = {int(col): i for i, col in enumerate(known_cols)}
    y_true = np.array([col_to_known.get(int(label), oos) for label in dev["labels"]])
    is_known = y_true != oos

    # Ours: head over the known columns mixed with the similarity probabilities; the scope rule.
    head = softmax(dev["logits"][:, known_cols], cfg.temperature)
    scores = anchors.score(dev["embedding"], dev["sentence"], head)
    mixed = (1.0 - cfg.head_mix) * head + cfg.head_mix * scores.probs
    rejected = scores.scope < cfg.reject_below
    ours_pred = np.where(rejected, oos, mixed.argmax(axis=1))
    closed_pred = mixed.argmax(axis=1)

    # DOC on the same softmax head: thresholds from the train probabilities of each class.
    train_known = np.array([col_to_known[int(label)] for label in trained["labels"]])
    train_head = softmax(trained["logits"][:, known_cols], cfg.temperature)
    thresholds, sigmas = doc_thresholds(train_head, train_known)
    top = head.argmax(axis=1)
    top_prob = head.max(axis=1)
    doc_pred = np.where(top_prob < thresholds[top], oos, top)

    steps.update()
    steps.close()

    methods = {
        "ours": open_set_metrics(y_true, ours_pred, n_known, scores.scope),
        "doc": open_set_metrics(y_true, doc_pred, n_known, top_prob),
        "closed": open_set_metrics(y_true, closed_pred, n_known, None),
    }
    from sklearn.metrics import roc_auc_score

    return {
        "known": known_names,
        "n_dev": len(y_true),
        "n_dev_known": int(is_known.sum()),
        "n_dev_oos": int((~is_known).sum()),
        "n_train": len(train_known),
        "methods": methods,
        "auroc": {
            "scope": 100.0 * float(roc_auc_score(is_known, scores.scope)),
            "max_head_prob": 100.0 * float(roc_auc_score(is_known, top_prob)),
            "max_mixed_prob": 100.0 * float(roc_auc_score(is_known, mixed.max(axis=1))),
            "doc_margin": 100.0 * float(roc_auc_score(is_known, top_prob - thresholds[top])),
        },
        "model": {
            "temperature": cfg.temperature,
            "head_mix": cfg.head_mix,
            "reject_below": cfg.reject_below,
            "similarity_temperature": cfg.similarity_temperature,
        },
        "doc": {
            "scale": DOC_SCALE,
            "floor": DOC_FLOOR,
            "thresholds": dict(zip(known_names, thresholds.round(4).tolist())),
            "sigmas": dict(zip(known_names, sigmas.round(4).tolist())),
        },
    }


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    s = report["scoring"]
    m = s["methods"]
    tr = report["training"]
    semantic = tr.get("semantic") or {}
    rule = semantic.get("rule", {})
    rows = (
        ("ours: scope < reject_below, head + similarity", m["ours"]),
        ("DOC on our softmax head", m["doc"]),
        ("no rejection (closed set, 15-way)", m["closed"]),
    )
    lines = [
        "# Open intent recognition: MIntRec dev, 5 intents unknown",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Held out as unknown (seed {report['seed']}): {', '.join(report['held_out'])}.",
        f"Known: {', '.join(s['known'])}.",
        "",
        f"Dev: {s['n_dev']} utterances, {s['n_dev_known']} of known intents and {s['n_dev_oos']} of held-out "
        f"intents (the out-of-scope class). Train: {report['data']['train']} utterances of the known intents.",
        "",
        "| method | F1-IS | OOS recall | OOS F1 | in-scope acc | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {_cell(row['f1_is'])} | {_cell(row['oos_recall'])} | {_cell(row['oos_f1'])} | "
            f"{_cell(row['in_scope_acc'])} | {_cell(row['auroc'])} |"
        )
    auroc = s["auroc"]
    lines += [
        "",
        "Percent. F1-IS: macro F1 over the 15 known intents, computed on the 16-way prediction with "
        "out of scope as a 16th class (the MIntRec2.0 convention). OOS recall and F1: of the out-of-scope "
        "class. In-scope acc: share of known-intent utterances given their right intent (a rejected one "
        "counts wrong). AUROC: known-intent utterances positive; of the scope score for ours, of the top "
        "head probability for DOC (the score DOC thresholds). "
        f"Max head probability {auroc['max_head_prob']:.2f}, max mixed probability {auroc['max_mixed_prob']:.2f}, "
        f"DOC margin (top probability minus its class threshold) {auroc['doc_margin']:.2f}.",
        "",
        f"Training: {tr['wall_s'] / 60:.1f} min wall"
        + (f", {tr['cpu_s'] / 60:.1f} min CPU" if "cpu_s" in tr else "")
        + f" ({tr['epochs']} epoch(s) max, {tr['epochs_run']} run, best "
        f"epoch {tr['best_epoch']}, dev macro F1 over the 20 head outputs {tr['best_dev_f1_macro']:.2f}), "
        f"device {report['device']}. "
        + (
            f"This run rescored the saved checkpoint in {report['wall_s'] / 60:.1f} min."
            if report["reused_checkpoint"]
            else f"Whole run {report['wall_s'] / 60:.1f} min."
        ),
        "",
        "## Notes",
        "",
        f"- Model: configs/starter.yaml's model and train sections, text only (MIntRec transcripts), intent "
        f"set configs/intents/mintrec.yaml; the head keeps its 20 outputs and only the 15 known columns "
        f"are used (softmax at the checkpoint's temperature {s['model']['temperature']:.3f}). The "
        f"semantic-synchronisation loss still uses all 20 descriptions as anchors, the held-out ones among "
        f"the negatives; no held-out utterance is trained on.",
        f"- Ours: probabilities (1 - head_mix) * head + head_mix * similarity probabilities "
        f"(head_mix {s['model']['head_mix']:.2f}; similarity probabilities: softmax of the cosine of the "
        f"transcript's embedding by the frozen sentence encoder to the 15 known descriptions, at "
        f"T_sim {s['model']['similarity_temperature']:.4f}, since `build_anchors` scores a set other than "
        f"the trained labels on the transcript embedding alone), argmax; out of scope when the scope score "
        f"is below reject_below = {s['model']['reject_below']:.2f}.",
        f"- reject_below was learnt at the end of training (`fit_semantic`) on the dev split: "
        f"{rule.get('draws', rule.get('splits', '?'))} random {rule.get('held_out_intents', '?')}-intent "
        f"hold-outs of the 20 trained labels"
        + (
            f" (half of the draws with {rule['examples_per_intent']} train sentences per known intent as examples)"
            if rule.get("examples_per_intent")
            else ""
        )
        + " plus off-topic sentences. That dev split is the one scored here and it contains the held-out "
        "intents' utterances, so the threshold (and the temperature and the early stopping, also fitted on "
        "dev) saw the test utterances; its draws are random and can overlap this hold-out.",
        "- DOC (Shu et al. 2017) is applied to our softmax head's probabilities as in the MIntRec2.0 "
        "benchmark code (per known class: probabilities of its train samples mirrored around 1, threshold "
        "max(0.5, 1 - 3 sigma)); DOC proper trains one-vs-rest sigmoids instead. Its predicted intent is "
        "the head's argmax. Thresholds: "
        + ", ".join(f"{k} {v:.3f}" for k, v in s["doc"]["thresholds"].items())
        + (
            f" (sigma {min(s['doc']['sigmas'].values()):.2f} to {max(s['doc']['sigmas'].values()):.2f}: every "
            f"threshold is at the {DOC_FLOOR} floor, so DOC here is the plain rule 'reject when the top head "
            f"probability is below {DOC_FLOOR}')."
            if all(t <= DOC_FLOOR for t in s["doc"]["thresholds"].values())
            else "."
        ),
        "- The scope score of a set other than the trained labels is computed from the frozen sentence "
        "encoder alone (transcript, descriptions and off-topic background), so ours' AUROC does not depend "
        "on this training; only its intent choice (head + similarity) does.",
        "- One seed, one hold-out draw: differences of a few points are within what another draw gives.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        intent_set = load_intent_set(args.intents)
    except DfmqError as exc:
        print(f"open_intent_bench.py: error: {exc}", file=sys.stderr)
        return 2
    if sorted(intent_set.names) != sorted(MINTREC_LABELS):
        print(f"open_intent_bench.py: error: {args.intents} does not name the 20 MIntRec labels", file=sys.stderr)
        return 2
    held_out = held_out_intents(args.seed)
    print(f"held out as unknown: {', '.join(held_out)}", flush=True)
    data, ckpt = args.out / "data", args.out / "model"
    counts = write_data(args.mintrec, data, held_out)
    training_file = args.out / "training.json"
    if args.skip_training:
        training = json.loads(training_file.read_text())
        if training.get("held_out") != held_out:
            print(f"open_intent_bench.py: error: {ckpt} was trained with other held-out intents", file=sys.stderr)
            return 2
    else:
        training = {"held_out": held_out, **train_model(args, data, ckpt, intent_set)}
        training_file.write_text(json.dumps(training, indent=2))
    scoring = score(args, data, ckpt, intent_set, held_out)
    command = " ".join([".venv/bin/python", "tools/open_intent_bench.py", *(shlex.quote(a) for a in args.argv)]).strip()
    report = {
        "command": command,
        "seed": args.seed,
        "held_out": held_out,
        "data": counts,
        "device": args.device,
        "reused_checkpoint": bool(args.skip_training),
        "training": training,
        "scoring": scoring,
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    print(f"results: {args.out / 'results.json'}  report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
