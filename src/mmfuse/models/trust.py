"""Per-modality trust: how unlike training each present modality of a request looks.

For each modality, the class-conditional Mahalanobis distance (Lee et al., NeurIPS 2018) of
its encoder embedding: class means and one shared covariance fitted on train embeddings,
the distance to the nearest class mean. The score is that distance's rank among the
validation samples' distances (an empirical CDF on held-out data), so it reads the same
for every modality: 0.5 is a typical input, 0.999 is more unusual than all but 0.1 % of
clean validation inputs. A modality whose score exceeds `1 - false_alarm` is untrusted and
set aside: the any-subset model answers as if it were missing, which it does at the
accuracy of a model trained for the remaining subset.

The embeddings are the frozen unimodal encoders' (staged training), so a modality's score
does not depend on the others. Deterministic: float64 statistics, a fixed eigen-solver, no
randomness; the fitted arrays travel in `trust.safetensors` beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from mmfuse.errors import MMFuseError
from mmfuse.io import atomic_file

TRUST = "trust.safetensors"
FORMAT = "mmfuse-trust/1"
_RIDGE = 1e-3  # added to the covariance's diagonal (relative to its mean variance): a stable inverse


@dataclass(frozen=True)
class ModalityTrust:
    """One modality's fitted trust: class means, the shared precision matrix and the sorted val distances."""

    means: np.ndarray  # [C, D] float64
    precision: np.ndarray  # [D, D] float64
    reference: np.ndarray  # [V] float64, sorted: the validation samples' distances

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance [N] of each embedding [N, D] to its nearest class mean."""
        x = embeddings.astype(np.float64)
        xp = x @ self.precision  # (x - mu)' P (x - mu) = x'Px - 2 x'P mu + mu'P mu, for every class at once
        centre = np.einsum("cd,de,ce->c", self.means, self.precision, self.means)
        return ((xp * x).sum(axis=1)[:, None] - 2 * xp @ self.means.T + centre[None, :]).min(axis=1)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """[N] in [0, 1]: the share of clean validation inputs that look more usual than each embedding."""
        return np.searchsorted(self.reference, self.distances(embeddings), side="left") / len(self.reference)


def fit_modality(train: np.ndarray, labels: np.ndarray, val: np.ndarray) -> ModalityTrust:
    """Fit class means and the pooled within-class covariance on `train` [N, D], rank on `val` [V, D]."""
    train = train.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / max(len(train) - len(classes), 1)
    covariance += np.eye(len(covariance)) * _RIDGE * float(np.trace(covariance)) / len(covariance)
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2
    fitted = ModalityTrust(means, precision, np.zeros(1))
    return ModalityTrust(means, precision, np.sort(fitted.distances(val)))


@dataclass(frozen=True)
class Trust:
    """The trust of every modality of a model, and the score above which a modality is set aside."""

    modalities: tuple[str, ...]
    per_modality: dict[str, ModalityTrust]
    threshold: float

    def scores(self, embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, M] scores of each present modality (NaN where absent) from encoder embeddings [B, M, D]."""
        emb, shown = embeddings.detach().double().numpy(), present.numpy()
        out = np.full(shown.shape, np.nan)
        for i, m in enumerate(self.modalities):
            rows = shown[:, i]
            if rows.any():
                out[rows, i] = self.per_modality[m].scores(emb[rows, i])
        return torch.from_numpy(out)

    def trusted(self, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, M] bool: present modalities scoring at most the threshold. A sample whose every
        modality is untrusted keeps its most usual one: an answer from the least broken input
        beats none, and the response says it was not trusted."""
        trusted = present & (scores <= self.threshold)
        lost = present.any(dim=1) & ~trusted.any(dim=1)
        if bool(lost.any()):
            best = torch.where(present, scores, torch.full_like(scores, torch.inf)).argmin(dim=1)
            keep = torch.nn.functional.one_hot(best, present.shape[1]).bool() & present
            trusted = torch.where(lost.unsqueeze(1), keep, trusted)
        return trusted


def fit_trust(
    modalities: tuple[str, ...],
    train: torch.Tensor,
    train_present: torch.Tensor,
    labels: torch.Tensor,
    val: torch.Tensor,
    val_present: torch.Tensor,
    false_alarm: float,
) -> Trust:
    """Fit every modality's trust from encoder embeddings [N, M, D] of train (with labels) and val."""
    per_modality = {}
    for i, m in enumerate(modalities):
        rows, val_rows = train_present[:, i].numpy(), val_present[:, i].numpy()
        if not rows.any() or not val_rows.any():
            raise MMFuseError(f"trust: no {m} in train or val to fit its trust on.")
        per_modality[m] = fit_modality(
            train[rows, i].double().numpy(), labels[rows].numpy(), val[val_rows, i].double().numpy()
        )
    return Trust(modalities, per_modality, 1.0 - false_alarm)


def save_trust(path: Path, trust: Trust) -> None:
    """trust.safetensors: the arrays, and one metadata key (safetensors orders several at random)."""
    arrays = {}
    for m, fitted in trust.per_modality.items():
        arrays.update(
            {f"{m}.means": fitted.means, f"{m}.precision": fitted.precision, f"{m}.reference": fitted.reference}
        )
    meta = {"format": FORMAT, "modalities": list(trust.modalities), "threshold": trust.threshold}
    with atomic_file(Path(path), "wb") as handle:
        handle.write(save(arrays, metadata={"trust": json.dumps(meta, sort_keys=True)}))


def load_trust(path: Path) -> Trust:
    """Read trust.safetensors; a corrupt or foreign file is an error naming it."""
    try:
        with safe_open(str(path), framework="np") as handle:
            meta = json.loads((handle.metadata() or {})["trust"])
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise MMFuseError(f"{path} is not a readable trust file ({exc}); rerun the evaluate stage.") from exc
    if meta.get("format") != FORMAT:
        raise MMFuseError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; rerun the evaluate stage.")
    modalities = tuple(meta["modalities"])
    per_modality = {
        m: ModalityTrust(arrays[f"{m}.means"], arrays[f"{m}.precision"], arrays[f"{m}.reference"]) for m in modalities
    }
    return Trust(modalities, per_modality, float(meta["threshold"]))
