"""Classification metrics of one model's predictions: accuracy, macro-F1, per-class P/R, confusion.

scikit-learn computes them (no hand-rolled counting to get subtly wrong); every score is a
percentage rounded to 4 decimals so the metrics file is byte-stable and reads like the
accuracies of the train stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from mmfuse.evaluation.predict import FUSED, accuracy
from mmfuse.modality import MODALITIES


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


def speaker_results(
    speakers: np.ndarray, labels: torch.Tensor, logits: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Per speaker: each model's accuracy, the best dedicated single-modality model, and whether the
    fusion model falls below it (the case the speaker-held-out split exists to reveal)."""
    results: dict[str, Any] = {}
    for speaker in sorted(set(speakers.tolist()) - {""}):
        selected = torch.from_numpy(speakers == speaker)
        scores = {
            name: accuracy(logits[name], labels, rows[name] & selected)
            for name in logits
            if bool((rows[name] & selected).any())
        }
        singles = {m: scores[m] for m in MODALITIES if m in scores}
        best = max(singles, key=singles.__getitem__)
        results[speaker] = {
            "count": int(selected.sum()),
            "accuracy": scores,
            "best_single": best,
            "fusion_worse": scores[FUSED] < singles[best],
        }
    return results
