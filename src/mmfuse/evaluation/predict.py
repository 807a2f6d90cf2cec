"""Batched inference over split tensors, and the late-fusion reference built from the unimodal models.

Works on the tensor dict of a split so that a robustness level can swap one modality's column
for its corrupted copy and reuse the others as they are; `model_logits` also reads a `Split`
a batch at a time.
"""

from __future__ import annotations

import torch

from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.models.data import Split

# Names in every table, curve and metric key of the evaluation: the all-modality fusion model
# trusting every input (models/candidate), the same model with the corrupted modality masked
# out, and the late-fusion reference of the unimodal models. The same model with untrusted
# inputs set aside, or weighed, is named by its trust method (models.trust.METHODS).
FUSED, MASKED, REFERENCE = "fused", "masked", "late_fusion"


@torch.inference_mode()
def model_logits(model: MultimodalClassifier, data: Split | dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """Logits [N, C] of `model` on every row (rows without any of its modalities give meaningless logits:
    select them out with `scored_rows`). A `Split` is read a batch at a time."""
    if isinstance(data, Split):
        parts = [model(batch) for batch in data.in_order(batch_size)]
    else:
        count = int(data["label"].shape[0])
        parts = [
            model({key: value[start : start + batch_size] for key, value in data.items()})
            for start in range(0, count, batch_size)
        ]
    return torch.cat(parts) if parts else torch.zeros(0, model.spec.n_classes)


@torch.inference_mode()
def embeddings(
    model: MultimodalClassifier, tensors: dict[str, torch.Tensor], present: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Encoder outputs [N, M, D] for the modalities marked in `present` [N, M] (the missing embedding elsewhere).

    Encoders see one modality each and run in eval mode, so a modality's embedding does not
    depend on the others: a robustness level re-encodes only the corrupted modality and
    fuses it with the clean embeddings of the rest (`model.fuse`), instead of a full forward.
    """
    count = int(present.shape[0])
    parts = [
        model.encode(
            {key: value[start : start + batch_size] for key, value in tensors.items()},
            present[start : start + batch_size],
        )
        for start in range(0, count, batch_size)
    ]
    return torch.cat(parts)


def scored_rows(model: MultimodalClassifier, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N] bool: the samples carrying at least one of the model's modalities, the ones it is scored on
    (the same rule as `subset_scores`)."""
    return model.presence(tensors).any(dim=1)


def late_fusion_logits(
    unimodal_logits: dict[str, torch.Tensor], mask: torch.Tensor, modalities: tuple[str, ...]
) -> torch.Tensor:
    """The late-fusion reference: the mean of the dedicated unimodal models' log-probabilities over
    the modalities each sample carries (a product of experts, equal weights, nothing learned).

    It is the reference curve of MultiBench's effective robustness: it needs no training of
    its own and is independent of the fusion head under test, even when that head is `late`.
    """
    present = mask[:, [modalities.index(m) for m in unimodal_logits]].to(torch.float32)
    logp = torch.stack([torch.log_softmax(v, dim=1) for v in unimodal_logits.values()], dim=1)
    return (present.unsqueeze(2) * logp).sum(dim=1) / present.sum(dim=1, keepdim=True).clamp(min=1.0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> float:
    """Percent of `rows` whose argmax is the label, rounded to 4 decimals for stable metric files."""
    total = int(rows.sum())
    correct = int((logits.argmax(dim=1)[rows] == labels[rows]).sum())
    return round(100.0 * correct / max(total, 1), 4)
