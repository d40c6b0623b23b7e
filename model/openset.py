"""Text-only intent decisions over an intent set: `dfmq classify` and `dfmq eval --intents --tsv`."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.dfmq import DFMQMC
from model.errors import ConfigError, DataError
from model.intents import IntentSet
from model.metrics import save_confusion_matrix
from model.semantic import IntentAnchors, binary_f1, text_outputs

OOS_LABEL = "OOS"  # the tsv label of an off-topic sentence
OOS_SHOWN = "out of scope"


@dataclass(frozen=True)
class TextDecision:
    text: str
    intent: str | None  # None: out of scope
    best: str  # the best intent of the set, whether in scope or not
    probability: float  # of the best intent
    scope: float
    probs: dict[str, float]


def classify_texts(model: DFMQMC, tokenizer: Any, anchors: IntentAnchors, texts: Sequence[str]) -> list[TextDecision]:
    head_probs, embeddings, sentences = text_outputs(model, tokenizer, texts)
    scores = anchors.score_transcripts(texts, embeddings, sentences, head_probs)
    out = []
    for i, text in enumerate(texts):
        best = int(scores.probs[i].argmax())
        out.append(
            TextDecision(
                text=text,
                intent=anchors.names[best] if scores.in_scope[i] else None,
                best=anchors.names[best],
                probability=float(scores.probs[i, best]),
                scope=float(scores.scope[i]),
                probs={name: float(p) for name, p in zip(anchors.names, scores.probs[i])},
            )
        )
    return out


def read_labelled_tsv(path: Path, intent_set: IntentSet) -> tuple[list[str], list[str]]:
    """(labels, texts) of a `label<TAB>text` file; every label an intent of the set or OOS."""
    path = Path(path)
    if not path.is_file():
        raise DataError("tsv file is missing", path=path, expected="a file with header label<TAB>text")
    names = set(intent_set.names)
    labels, texts = [], []
    # utf-8-sig: spreadsheet programs start their UTF-8 exports with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            raise DataError("file is empty", path=path, line=1, expected="a header label<TAB>text", got="nothing")
        if [h.strip().lower() for h in header[:2]] != ["label", "text"]:
            raise DataError("bad header", path=path, line=1, expected="label<TAB>text", got=repr(header))
        for line, row in enumerate(rows, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 2 or not row[1].strip():
                raise DataError("bad row", path=path, line=line, expected="label<TAB>text", got=repr(row))
            label = row[0].strip()
            if label != OOS_LABEL and label not in names:
                raise DataError(
                    "label is not in the intent set",
                    path=path,
                    line=line,
                    expected=f"one of {sorted(names)} or {OOS_LABEL}",
                    got=repr(label),
                )
            labels.append(label)
            texts.append(row[1].strip())
    if not labels:
        raise DataError("file has no rows", path=path, expected="at least one labelled sentence")
    return labels, texts


def auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when one class is absent."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def open_set_metrics(truth: Sequence[str], decisions: Sequence[TextDecision], names: Sequence[str]) -> dict[str, Any]:
    """Percentages: in-scope accuracy (rejections count as errors), closed-set accuracy (the best
    intent of in-scope sentences, no rejection), coverage (in-scope sentences accepted), OOS recall
    and F1, F1-IS (macro F1 of the set's intents on the (K+1)-way decision), AUROC of the scope score
    (in-scope positive), and OOS recall at the threshold that keeps 90 % coverage."""
    truth_arr = np.array(truth, dtype=object)
    pred = np.array([d.intent if d.intent is not None else OOS_LABEL for d in decisions], dtype=object)
    in_scope = truth_arr != OOS_LABEL
    accepted = pred != OOS_LABEL
    f1_per_intent = [binary_f1(truth_arr == name, pred == name) for name in names if np.any(truth_arr == name)]
    scope = np.array([d.scope for d in decisions])
    area = auroc(in_scope, scope)
    best = np.array([d.best for d in decisions], dtype=object)
    recall_at_90 = None
    if in_scope.any() and (~in_scope).any():
        threshold = np.quantile(scope[in_scope], 0.10, method="lower")  # 90 % of in-scope at or above
        recall_at_90 = float((scope[~in_scope] < threshold).mean())

    def pct(value: float | None) -> float | None:
        return None if value is None or not np.isfinite(value) else round(100.0 * value, 2)

    return {
        "n": len(truth_arr),
        "n_in_scope": int(in_scope.sum()),
        "n_oos": int((~in_scope).sum()),
        "in_scope_acc": pct(float(np.mean(pred[in_scope] == truth_arr[in_scope])) if in_scope.any() else None),
        "closed_acc": pct(float(np.mean(best[in_scope] == truth_arr[in_scope])) if in_scope.any() else None),
        "coverage": pct(float(accepted[in_scope].mean()) if in_scope.any() else None),
        "oos_recall": pct(float((~accepted[~in_scope]).mean()) if (~in_scope).any() else None),
        "f1_is": pct(float(np.mean(f1_per_intent)) if f1_per_intent else None),
        "f1_oos": pct(binary_f1(~in_scope, ~accepted) if (~in_scope).any() else None),
        "auroc": pct(area),
        "oos_recall_at_90_coverage": pct(recall_at_90),
    }


def evaluate_intent_tsv(
    model: DFMQMC,
    tokenizer: Any,
    anchors: IntentAnchors,
    intent_set: IntentSet,
    tsv: Path,
    json_out: Path,
) -> dict[str, Any]:
    """Score a labelled tsv against an intent set; JSON, per-sentence tsv and confusion PNG."""
    truth, texts = read_labelled_tsv(tsv, intent_set)
    decisions = classify_texts(model, tokenizer, anchors, texts)
    metrics = open_set_metrics(truth, decisions, anchors.names)
    metrics.update(
        {
            "intents": intent_set.source,
            "tsv": str(tsv),
            "reject_below": anchors.reject_below,
            "reject_below_from": anchors.reject_below_source,
            "examples_per_intent": round(sum(len(i.examples) for i in intent_set.intents) / len(intent_set), 2),
        }
    )
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    rows = ["label\tpredicted\tprobability\tscope\ttext"]
    for label, d in zip(truth, decisions):
        rows.append(f"{label}\t{d.intent or OOS_LABEL}\t{d.probability:.4f}\t{d.scope:.3f}\t{d.text}")
    json_out.with_suffix(".predictions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    shown = [*anchors.names, OOS_SHOWN]
    index = {name: i for i, name in enumerate(anchors.names)} | {OOS_LABEL: len(anchors.names)}
    y_true = np.array([index[label] for label in truth])
    y_pred = np.array([index[d.intent] if d.intent is not None else len(anchors.names) for d in decisions])
    png = json_out.with_suffix(".png")
    title = (
        f"{Path(intent_set.source).name}: in-scope acc {metrics['in_scope_acc']}, "
        f"OOS recall {metrics['oos_recall']}, AUROC {metrics['auroc']}"
    )
    save_confusion_matrix(y_true, y_pred, shown, png, title)
    metrics["confusion_png"] = str(png)
    json_out.write_text(json.dumps(metrics, indent=2))
    return metrics


def load_intent_scoring(
    ckpt_dir: Path,
    intents: Path | None = None,
    reject_below: float | None = None,
    descriptions_only: bool = False,
    device: str = "cpu",
    sentence_encoder: Path | None = None,
    adapted: Path | None = None,
) -> tuple[DFMQMC, Any, IntentSet, IntentAnchors]:
    """A checkpoint and an intent set (default: the checkpoint's own) placed in its semantic space,
    or in the space of the user's `sentence_encoder` folder for a set the model was not trained on;
    `adapted`: a folder `dfmq adapt` wrote for the set (`model.adapt`)."""
    from model.adapt import load_adaptation
    from model.checkpoint import checkpoint_intent_set, load_checkpoint
    from model.intents import Intent, load_intent_set
    from model.semantic import SentenceEncoder, build_anchors

    if reject_below is not None and not 0.0 <= reject_below <= 1.0:
        raise ConfigError("--reject-below", "a fraction in [0, 1]", reject_below)
    # A bad encoder folder fails before the checkpoint is loaded.
    encoder = None if sentence_encoder is None else SentenceEncoder(sentence_encoder, device)
    model, tokenizer = load_checkpoint(ckpt_dir, device)
    intent_set = (
        load_intent_set(intents) if intents is not None else checkpoint_intent_set(ckpt_dir, model.config.labels)
    )
    if descriptions_only:
        bare = tuple(Intent(i.name, i.description) for i in intent_set.intents)
        intent_set = IntentSet(bare, intent_set.source, intent_set.reject_below)
    if adapted is not None and descriptions_only:
        raise ConfigError(
            "--adapted", "no --descriptions-only with it (it was adapted to the examples too)", str(adapted)
        )
    adaptation = None if adapted is None else load_adaptation(adapted, model, intent_set, device)
    anchors = build_anchors(model, tokenizer, intent_set, reject_below, encoder, adaptation)
    return model, tokenizer, intent_set, anchors
