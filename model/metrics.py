"""Benchmark metrics (percent) and the confusion-matrix figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
