"""Benchmark metrics (percent), calibration (ECE, temperature scaling) and their figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15
# The fitted temperature is kept inside these bounds: a held-out set the model gets entirely right
# drives the NLL optimum toward T -> 0 (and one it gets entirely wrong toward T -> inf).
TEMPERATURE_BOUNDS = (0.01, 100.0)
# Fewer held-out samples than this cannot tell a temperature: on 4 sentences the fit gave 0.09 and
# doubled the ECE, on 2 it ran to the bound (100) and flattened every probability to chance.
MIN_CALIBRATION_SAMPLES = 10


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    ids = list(range(len(labels)))
    kw: dict[str, Any] = {"labels": ids, "zero_division": 0}
    per_class = f1_score(y_true, y_pred, average=None, **kw)
    return {
        "acc": 100.0 * float(accuracy_score(y_true, y_pred)),
        "f1_macro": 100.0 * float(f1_score(y_true, y_pred, average="macro", **kw)),
        "precision_macro": 100.0 * float(precision_score(y_true, y_pred, average="macro", **kw)),
        "recall_macro": 100.0 * float(recall_score(y_true, y_pred, average="macro", **kw)),
        "f1_weighted": 100.0 * float(f1_score(y_true, y_pred, average="weighted", **kw)),
        "precision_weighted": 100.0 * float(precision_score(y_true, y_pred, average="weighted", **kw)),
        "recall_weighted": 100.0 * float(recall_score(y_true, y_pred, average="weighted", **kw)),
        "n": len(y_true),
        "per_class": {label: 100.0 * float(f) for label, f in zip(labels, per_class)},
    }


def save_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    # Row-normalised so that rare intents are as readable as frequent ones; counts are printed.
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the true labels under `softmax(logits / temperature)`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(labels)]))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins over (0, 1] (bin b holds confidences in (b/n, (b+1)/n]): per bin
    the sample count, mean top-class confidence and accuracy (0 for an empty bin)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE as a fraction in [0, 1]: `sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|` over
    equal-width bins of the top-class confidence (Guo et al. 2017; 15 bins by default)."""
    n = len(labels)
    if n == 0:
        return 0.0
    return float(
        sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in calibration_bins(probs, labels, bins))
    )


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS, iterations: int = 100
) -> float:
    """The T > 0 that minimises the NLL of `softmax(logits / T)` on held-out (logits, labels).

    With `b = 1 / T` the NLL is `mean(logsumexp(b z) - b z_y)`, convex in `b` (its second
    derivative is the variance of z under the softmax), so its derivative `mean(E_p[z] - z_y)` is
    non-decreasing and a bisection on its sign (in log b, within `bounds` on T) finds the optimum.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if len(z) == 0:
        return 1.0
    true_logit = z[np.arange(len(z)), y]

    def slope(log_b: float) -> float:
        return float(np.mean((softmax(z * math.exp(log_b)) * z).sum(axis=-1) - true_logit))

    t_low, t_high = bounds
    lo, hi = math.log(1.0 / t_high), math.log(1.0 / t_low)
    if slope(lo) >= 0:
        return t_high
    if slope(hi) <= 0:
        return t_low
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return float(1.0 / math.exp(0.5 * (lo + hi)))


def choose_temperature(logits: np.ndarray, labels: np.ndarray, current: float) -> tuple[float, str | None]:
    """The fitted temperature, or `current` with the reason when the split cannot tell: on a split
    without a single error the NLL keeps falling as T -> 0, and a fit would make every later
    prediction certain (the live pipeline could then never abstain for low confidence)."""
    if len(labels) == 0:
        return current, "the split is empty"
    if len(labels) < MIN_CALIBRATION_SAMPLES:
        return (
            current,
            f"{len(labels)} samples are too few to fit a temperature on (at least {MIN_CALIBRATION_SAMPLES}); kept",
        )
    if bool((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).all()):
        return current, "no errors on the split to fit a temperature on; kept"
    fitted = fit_temperature(logits, labels)
    if not TEMPERATURE_BOUNDS[0] * 1.01 < fitted < TEMPERATURE_BOUNDS[1] / 1.01:
        return current, f"the fit ran to its bound ({fitted:.3g}): the split cannot tell; kept"
    return fitted, None


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE (percent, 15 bins) and NLL of `softmax(logits / temperature)`."""
    probs = softmax(logits, temperature)
    return {
        "ece": 100.0 * expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(logits, labels, temperature),
    }


def save_reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, path: Path, title: str, bins: int = ECE_BINS
) -> None:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and the
    share of samples per bin underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = calibration_bins(probs, labels, bins)
    n = max(1, len(labels))
    centres = [(b["low"] + b["high"]) / 2 for b in table]
    width = 1.0 / bins
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [b["count"] > 0 for b in table]
    top.bar(
        [c for c, f in zip(centres, filled) if f],
        [b["accuracy"] for b, f in zip(table, filled) if f],
        width=width * 0.95,
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        [c for c, f in zip(centres, filled) if f],
        [b["confidence"] - b["accuracy"] for b, f in zip(table, filled) if f],
        bottom=[b["accuracy"] for b, f in zip(table, filled) if f],
        width=width * 0.95,
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title, fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, [b["count"] / n for b in table], width=width * 0.95, color="grey")
    bottom.set_xlabel("confidence (top class)")
    bottom.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
