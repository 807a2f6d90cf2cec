"""Noise-robustness curves and the MultiBench summaries (Liang et al., 2021).

Per corruption, accuracy is measured at the clean point and at every configured level for
the fusion model, the late-fusion reference and the dedicated model of the corrupted
modality. Two summaries condense a curve:

- relative robustness: the area under accuracy vs severity, with the severity steps spread
  evenly over [0, 1] (clean at 0, worst at 1), so it reads as the mean accuracy in percent
  over the noise range, whatever each corruption's units are;
- effective robustness: the area between the curve and the late-fusion reference curve
  shifted to the curve's clean accuracy, in points. Positive: the model loses less
  accuracy under noise than late fusion does from the same starting point.

MultiBench additionally min-max normalises both over the methods of a benchmark; with one
fusion model per run that normalisation would be meaningless, so the raw values are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mmfuse.evaluation.corruption import CORRUPTIONS, NoisyInputs
from mmfuse.evaluation.predict import (
    FUSED,
    MASKED,
    REFERENCE,
    accuracy,
    embeddings,
    late_fusion_logits,
    model_logits,
    scored_rows,
)
from mmfuse.evaluation.trust import trust_methods
from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.models.trust import Trust
from mmfuse.params.evaluate import RobustnessParams


def relative_robustness(accuracies: Sequence[float]) -> float:
    """Trapezoid area under accuracy over severities evenly spaced on [0, 1] (one point: that accuracy)."""
    values = np.asarray(accuracies, dtype=np.float64)
    area = values[0] if len(values) == 1 else np.trapezoid(values, np.linspace(0.0, 1.0, len(values)))
    return round(float(area), 4) + 0.0  # + 0.0: a rounded -0.0 would print as "-0" in the metrics


def effective_robustness(accuracies: Sequence[float], reference: Sequence[float]) -> float:
    """Area of (curve - reference shifted to the curve's clean accuracy), in accuracy points."""
    values, ref = np.asarray(accuracies, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.shape != ref.shape:
        raise ValueError(f"curves of different lengths: {len(values)} vs {len(ref)}")
    return relative_robustness(values - (ref + values[0] - ref[0]))


@torch.inference_mode()
def robustness_curves(
    fused: MultimodalClassifier,
    unimodal: dict[str, MultimodalClassifier],
    tensors: dict[str, torch.Tensor],
    clean_logits: dict[str, torch.Tensor],
    noisy_inputs: NoisyInputs,
    params: RobustnessParams,
    batch_size: int,
    advance: Callable[[], None],
    trust: Trust,
    temperature: float,
) -> dict[str, Any]:
    """{corruption: {modality, unit, levels, accuracy: {model: [...]}, summary: {model: {relative, effective}}}}.

    `clean_logits` holds the clean test logits of `fused` (key "fused") and of each unimodal
    model (key: its modality), computed once by the caller; at each level only the corrupted
    modality is re-encoded (the fusion model's other embeddings are reused, see `embeddings`).
    `noisy_inputs(corruption, level_index)` gives the corrupted modality's input tensor
    (see `corrupted_levels`). `levels[0]` is None: the clean test set. `advance()` is called
    once per corrupted level. Beside the fusion model trusting every input (FUSED), each curve
    holds the same model under the other trust methods (`trust_methods`: untrusted inputs set
    aside, or every input weighed by its reliability, calibrated by `temperature`) and,
    flat, with the corrupted modality masked out (MASKED: the best that ignoring the broken
    sensor can do).
    """
    labels, mask = tensors["label"], tensors["mask"]
    modalities = fused.spec.modalities
    present = fused.presence(tensors)
    fused_rows = present.any(dim=1)
    clean_embeddings = embeddings(fused, tensors, present, batch_size)
    reference_rows = mask[:, [modalities.index(m) for m in unimodal]].any(dim=1)
    clean_unimodal = {m: clean_logits[m] for m in unimodal}
    clean_reference = late_fusion_logits(clean_unimodal, mask, modalities)
    clean_methods = trust_methods(fused, trust, clean_embeddings, present, tensors, temperature)
    results: dict[str, Any] = {}
    for corruption in CORRUPTIONS:
        modality = corruption.modality
        own_rows = scored_rows(unimodal[modality], tensors)
        column = modalities.index(modality)
        others = present.clone()
        others[:, column] = False
        masked_rows = others.any(dim=1)
        masked = accuracy(fused.fuse(clean_embeddings, others)[0], labels, masked_rows)
        curve = {
            FUSED: [accuracy(clean_logits[FUSED], labels, fused_rows)],
            **{name: [accuracy(log_probs, labels, fused_rows)] for name, log_probs in clean_methods.items()},
            MASKED: [masked],
            REFERENCE: [accuracy(clean_reference, labels, reference_rows)],
            modality: [accuracy(clean_logits[modality], labels, own_rows)],
        }
        only = torch.zeros_like(present)
        only[:, column] = present[:, column]
        levels = corruption.levels(params)
        for index in range(len(levels)):
            noisy = {**tensors, modality: noisy_inputs(corruption, index)}
            emb = clean_embeddings.clone()
            emb[:, column] = embeddings(fused, noisy, only, batch_size)[:, column]
            fused_logits = fused.fuse(emb, present)[0]
            own = model_logits(unimodal[modality], noisy, batch_size)
            reference = late_fusion_logits({**clean_unimodal, modality: own}, mask, modalities)
            curve[FUSED].append(accuracy(fused_logits, labels, fused_rows))
            for name, log_probs in trust_methods(fused, trust, emb, present, noisy, temperature).items():
                curve[name].append(accuracy(log_probs, labels, fused_rows))
            curve[MASKED].append(masked)
            curve[REFERENCE].append(accuracy(reference, labels, reference_rows))
            curve[modality].append(accuracy(own, labels, own_rows))
            advance()
        summary = {
            name: {"relative": relative_robustness(values), "effective": effective_robustness(values, curve[REFERENCE])}
            for name, values in curve.items()
        }
        results[corruption.name] = {
            "modality": modality,
            "seen": corruption.seen,
            "unit": corruption.unit,
            "levels": [None, *levels],
            "accuracy": curve,
            "summary": summary,
        }
    return results


def corruption_regret(curves: dict[str, Any], method: str) -> dict[str, float]:
    """Points by which `method`'s curve falls short of the better of trusting everything and
    masking the corrupted modality, at its worst over every corruption and severity >= 1: overall,
    and over the seen and the unseen families apart. <= 0 means it never loses to either."""
    worst: dict[str, float] = {}
    for curve in curves.values():
        acc = curve["accuracy"]
        gaps = [max(acc[MASKED][s], acc[FUSED][s]) - acc[method][s] for s in range(1, len(acc[method]))]
        for key in ("all", "seen" if curve["seen"] else "unseen"):
            worst[key] = max(worst.get(key, -np.inf), *gaps)
    return {key: round(float(value), 4) + 0.0 for key, value in worst.items()}


def robustness_rows(curves: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows (corruption, modality, severity, level, model, accuracy) for the DVC plot CSV."""
    return [
        {
            "corruption": name,
            "modality": curve["modality"],
            "severity": severity,
            "level": "clean" if level is None else level,
            "model": model,
            "accuracy": values[severity],
        }
        for name, curve in curves.items()
        for model, values in curve["accuracy"].items()
        for severity, level in enumerate(curve["levels"])
    ]
