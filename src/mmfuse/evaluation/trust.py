"""Fitting and judging the per-modality trust (models/trust.py) on processed splits.

The evaluate stage fits it (train embeddings and inputs, threshold on val) beside the
temperature, and measures how often it wrongly sets aside a clean test modality.
"""

from __future__ import annotations

import torch

from mmfuse.evaluation.predict import embeddings
from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.models.data import Split
from mmfuse.models.trust import Encoded, Trust, fit_trust


def encoded(model: MultimodalClassifier, split: Split, batch_size: int) -> Encoded:
    """A split's embeddings, presence and inputs: what the trust is fitted and judged on."""
    present = model.presence(split.tensors)
    inputs = {m: split.tensors[m] for m in model.spec.modalities}
    return Encoded(embeddings(model, split.tensors, present, batch_size), present, inputs)


def fit_on_splits(model: MultimodalClassifier, train: Split, val: Split, false_alarm: float, batch_size: int) -> Trust:
    """The trust of `model`'s modalities: class statistics from train, the threshold from val."""
    return fit_trust(
        tuple(model.spec.modalities),
        encoded(model, train, batch_size),
        train.tensors["label"],
        encoded(model, val, batch_size),
        false_alarm,
    )


def set_aside_rates(
    trust: Trust, emb: torch.Tensor, present: torch.Tensor, inputs: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Share of the present inputs judged untrusted: overall (`false_setaside_rate` on clean data) and per modality."""
    untrusted = present & ~trust.trusted(trust.scores(emb, present, inputs), present)
    rates = {"all": float(untrusted.sum()) / max(int(present.sum()), 1)}
    for i, m in enumerate(trust.modalities):
        rates[m] = float(untrusted[:, i].sum()) / max(int(present[:, i].sum()), 1)
    return {key: round(value, 6) for key, value in rates.items()}
