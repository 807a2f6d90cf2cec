"""Per-modality trust: how unlike training each present modality of a request looks.

For each modality, the class-conditional Mahalanobis distance (Lee et al., NeurIPS 2018) of
its encoder embedding joined with a few statistics of the model input itself (`input_features`):
class means and one shared covariance fitted on train, the distance to the nearest class mean.
Measured on the hard preset (benchmarks/trust_choice.py): the embedding alone misses a
contrast-inverted image at 40 % blend (45 % flagged) and most occlusions; the input statistics
alone miss salt-and-pepper noise; joined, inversion is flagged at every level and noise and
occlusion more often, at a lower false-alarm rate on clean audio. The score is that distance's rank among the
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
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from mmfuse.errors import MMFuseError
from mmfuse.io import atomic_file
from mmfuse.preprocess.text import PAD_ID, UNK_ID

TRUST = "trust.safetensors"
FORMAT = "mmfuse-trust/1"
_RIDGE = 1e-3  # added to the covariance's diagonal (relative to its mean variance): a stable inverse


def input_features(modality: str, inputs: torch.Tensor) -> torch.Tensor:
    """[B, k] float64 statistics of one modality's model input: what an encoder may be blind to.

    Image and audio (normalised pixels, log-mel): mean, spread and the share of values beyond
    3 standard deviations. Text (token ids): its length and its share of unknown characters.
    """
    if modality == "text":
        tokens = inputs.long()
        length = (tokens != PAD_ID).sum(dim=1).double()
        unknown = (tokens == UNK_ID).sum(dim=1).double() / length.clamp(min=1)
        return torch.stack([length, unknown], dim=1)
    flat = inputs.double().flatten(1)
    return torch.stack([flat.mean(dim=1), flat.std(dim=1), (flat.abs() > 3).double().mean(dim=1)], dim=1)


def trust_features(modality: str, embeddings: torch.Tensor, inputs: torch.Tensor) -> np.ndarray:
    """[B, D + k]: one modality's encoder embeddings [B, D] joined with its `input_features`."""
    return torch.cat([embeddings.double(), input_features(modality, inputs)], dim=1).numpy()


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
        return ((xp * x).sum(axis=1)[:, None] - 2 * xp @ self.means.T + self._centres[None, :]).min(axis=1)

    @cached_property
    def _centres(self) -> np.ndarray:
        """mu'P mu of every class, computed once (a third of a request's trust cost otherwise)."""
        return np.einsum("cd,de,ce->c", self.means, self.precision, self.means)

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

    def scores(self, embeddings: torch.Tensor, present: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M] scores of each present modality (NaN where absent) from encoder embeddings [B, M, D]
        and the model inputs they were encoded from (`inputs[modality]`, [B, ...])."""
        out = torch.full(present.shape, torch.nan, dtype=torch.float64)
        for i, m in enumerate(self.modalities):
            rows = present[:, i]
            if bool(rows.any()):
                features = trust_features(m, embeddings[rows, i].detach(), inputs[m][rows])
                out[rows, i] = torch.from_numpy(self.per_modality[m].scores(features))
        return out

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


@dataclass(frozen=True)
class Encoded:
    """A split as the trust sees it: encoder embeddings [N, M, D], presence [N, M] and the model inputs."""

    embeddings: torch.Tensor
    present: torch.Tensor
    inputs: dict[str, torch.Tensor]

    def features(self, column: int, modality: str) -> np.ndarray:
        rows = self.present[:, column]
        return trust_features(modality, self.embeddings[rows, column], self.inputs[modality][rows])


def fit_trust(
    modalities: tuple[str, ...], train: Encoded, labels: torch.Tensor, val: Encoded, false_alarm: float
) -> Trust:
    """Fit every modality's trust on train (class statistics, with `labels`) and val (the ranking)."""
    per_modality = {}
    for i, m in enumerate(modalities):
        if not bool(train.present[:, i].any()) or not bool(val.present[:, i].any()):
            raise MMFuseError(f"trust: no {m} in train or val to fit its trust on.")
        rows = train.present[:, i]
        per_modality[m] = fit_modality(train.features(i, m), labels[rows].numpy(), val.features(i, m))
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
