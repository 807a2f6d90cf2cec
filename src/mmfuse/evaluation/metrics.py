"""Classification metrics of one model's predictions: accuracy, macro-F1, per-class P/R, confusion.

scikit-learn computes them (no hand-rolled counting to get subtly wrong); every score is a
percentage rounded to 4 decimals so the metrics file is byte-stable and reads like the
accuracies of the train stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def _percent(value: float) -> float:
    return round(100.0 * float(value), 4)


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict[str, Any]:
    """{accuracy, macro_f1, count, per_class: {name: {precision, recall, f1, support}}, confusion}.

    Every class of `names` is scored even when absent from `labels`, so the tables of all
    models have the same rows; an undefined precision (never predicted) counts as 0.
    `confusion[i][j]` counts samples of class i predicted as j (rows: actual).
    """
    classes = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": _percent(np.mean(labels == predicted)) if len(labels) else 0.0,
        "macro_f1": _percent(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "count": int(len(labels)),
        "per_class": {
            name: {"precision": _percent(p), "recall": _percent(r), "f1": _percent(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def confusion_rows(labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """(actual, predicted) label names per sample, the input of DVC's confusion-matrix template."""
    return [(names[a], names[p]) for a, p in zip(labels.tolist(), predicted.tolist())]
