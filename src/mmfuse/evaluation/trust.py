"""Fitting and judging the per-modality trust (models/trust.py) on processed splits.

The evaluate stage fits it (train embeddings, threshold on val) beside the temperature, and
measures how often it wrongly sets aside a clean test modality.
"""

from __future__ import annotations

import torch

from mmfuse.evaluation.predict import embeddings
from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.models.data import Split
from mmfuse.models.trust import Trust, fit_trust


def fit_on_splits(model: MultimodalClassifier, train: Split, val: Split, false_alarm: float, batch_size: int) -> Trust:
    """The trust of `model`'s modalities: class statistics from train, the threshold from val."""
    train_present, val_present = model.presence(train.tensors), model.presence(val.tensors)
    return fit_trust(
        tuple(model.spec.modalities),
        embeddings(model, train.tensors, train_present, batch_size),
        train_present,
        train.tensors["label"],
        embeddings(model, val.tensors, val_present, batch_size),
        val_present,
        false_alarm,
    )


def set_aside_rates(trust: Trust, emb: torch.Tensor, present: torch.Tensor) -> dict[str, float]:
    """Share of the present inputs judged untrusted: overall (`false_setaside_rate` on clean data) and per modality."""
    untrusted = present & ~trust.trusted(trust.scores(emb, present), present)
    rates = {"all": float(untrusted.sum()) / max(int(present.sum()), 1)}
    for i, m in enumerate(trust.modalities):
        rates[m] = float(untrusted[:, i].sum()) / max(int(present[:, i].sum()), 1)
    return {key: round(value, 6) for key, value in rates.items()}
