"""Fitting and judging the per-modality trust (models/trust.py) on processed splits.

The evaluate stage fits it (train embeddings and inputs, threshold on val, the reliability
gate on val with one modality of each sample corrupted by a seen noise family) beside the
temperature, and measures how often it wrongly sets aside a clean test modality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.evaluation.corruption import RawSplit, one_corrupted, split_rows
from mmfuse.evaluation.predict import FUSED, accuracy, embeddings
from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.models.data import Split, load_split
from mmfuse.models.trust import METHODS, Encoded, Trust, fit_gate, fit_trust, subset_log_probs
from mmfuse.params.evaluate import EvaluateParams
from mmfuse.preprocess.state import PreprocessState


def encoded(model: MultimodalClassifier, tensors: dict[str, torch.Tensor], batch_size: int) -> Encoded:
    """A split's embeddings, presence and inputs: what the trust is fitted and judged on."""
    present = model.presence(tensors)
    inputs = {m: tensors[m] for m in model.spec.modalities}
    return Encoded(embeddings(model, tensors, present, batch_size), present, inputs)


def labelled_features(
    model: MultimodalClassifier, split: Split, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`Encoded.labelled` of a whole split, encoded a batch at a time: the train split is read
    once and never held whole (it is most of the data), only its trust features are."""
    modalities = tuple(model.spec.modalities)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in modalities}
    for batch in split.in_order(batch_size):
        for m, part in encoded(model, batch, batch_size).labelled(modalities, batch["label"]).items():
            parts[m].append(part)
    return {m: tuple(np.concatenate(column) for column in zip(*chunks)) for m, chunks in parts.items()}


def fit_on_splits(
    model: MultimodalClassifier,
    train: Split,
    val: Split,
    val_corrupted: list[dict[str, torch.Tensor]],
    temperature: float,
    false_alarm: float,
    method: str,
    batch_size: int,
) -> Trust:
    """The trust of `model`'s modalities, served by `method`: class statistics from train, the
    threshold from clean val, the gate from clean val plus `val_corrupted` (val with one
    modality of each sample corrupted: `corruption.one_corrupted`)."""
    clean = encoded(model, val.tensors, batch_size)
    trust = fit_trust(
        tuple(model.spec.modalities),
        labelled_features(model, train, batch_size),
        clean,
        false_alarm,
    )
    parts = []
    for e in [clean, *(encoded(model, tensors, batch_size) for tensors in val_corrupted)]:
        log_probs, aux = subset_log_probs(model, e.embeddings, temperature)
        parts.append((trust.assess(e.embeddings, e.present, e.inputs, aux), log_probs))
    clean_features = parts[0][0].features.numpy().copy()
    clean_features[~parts[0][0].present.numpy()] = np.nan
    gate = fit_gate(
        torch.cat([a.features for a, _ in parts]),
        torch.cat([a.present for a, _ in parts]),
        torch.cat([lp for _, lp in parts]),
        torch.cat([val.tensors["label"], *(tensors["label"] for tensors in val_corrupted)]),
        np.nanmedian(clean_features, axis=0),
        torch.cat([a.evidence for a, _ in parts]),
    )
    return dataclasses.replace(trust, gate=gate, method=method)


COPIES = 4  # corrupted copies of val the gate is fitted on, beside the clean one


def fit_served_trust(
    model: MultimodalClassifier,
    processed: Path,
    val: Split,
    raw_manifest: Path,
    state: PreprocessState,
    temperature: float,
    params: EvaluateParams,
) -> Trust:
    """The trust the evaluate stage ships with the candidate: fitted on the processed train split
    and `val` (as loaded for calibration), its gate also on val's raw media (from `raw_manifest`)
    corrupted by seen families."""
    rows = split_rows(raw_manifest, val.sample_ids)
    raw = RawSplit.load(rows, Path(raw_manifest).parent, val.tensors["mask"], state)
    return fit_on_splits(
        model,
        load_split(Path(processed), "train"),
        val,
        [one_corrupted(raw, val.tensors, state, params.robustness, params.seed, copy) for copy in range(COPIES)],
        temperature,
        params.trust.false_alarm,
        params.trust.method,
        params.batch_size,
    )


def set_aside_rates(model: MultimodalClassifier, trust: Trust, encoded: Encoded) -> dict[str, float]:
    """Share of the present inputs the trust's method sets aside: overall (`false_setaside_rate` on
    clean data) and per modality."""
    present = encoded.present
    with torch.no_grad():
        aux = model.fuse(encoded.embeddings, present)[1]
    untrusted = present & ~trust.assess(encoded.embeddings, present, encoded.inputs, aux).used(trust.method)
    rates = {"all": float(untrusted.sum()) / max(int(present.sum()), 1)}
    for i, m in enumerate(trust.modalities):
        rates[m] = float(untrusted[:, i].sum()) / max(int(present[:, i].sum()), 1)
    return {key: round(value, 6) for key, value in rates.items()}


def trust_methods(
    model: MultimodalClassifier,
    trust: Trust,
    emb: torch.Tensor,
    present: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    temperature: float,
) -> dict[str, torch.Tensor]:
    """Calibrated log-probabilities [N, C] of the fused model under each trust method but trusting
    all (set_aside; weighted, when the trust has a gate): what the service would answer under each."""
    log_probs, aux = subset_log_probs(model, emb, temperature)
    assessment = trust.assess(emb, present, inputs, aux)
    names = [name for name in METHODS if name != FUSED and (name != "weighted" or trust.gate is not None)]
    return {name: assessment.answer(name, log_probs) for name in names}


def served_results(
    model: MultimodalClassifier, trust: Trust, split: Split, temperature: float, batch_size: int
) -> dict[str, Any]:
    """On a split: the accuracy under each trust method but trusting all, and the share of inputs
    the served method sets aside (on clean inputs, every one is a false alarm)."""
    e = encoded(model, split.tensors, batch_size)
    rows = e.present.any(dim=1)
    answers = trust_methods(model, trust, e.embeddings, e.present, e.inputs, temperature)
    return {
        "accuracy": {name: accuracy(log_probs, split.tensors["label"], rows) for name, log_probs in answers.items()},
        "set_aside": set_aside_rates(model, trust, e),
    }
