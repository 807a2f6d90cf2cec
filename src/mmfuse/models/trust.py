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
clean validation inputs. A modality whose score exceeds `1 - false_alarm` is untrusted and,
under `method: set_aside`, set aside: the any-subset model answers as if it were missing,
which it does at the accuracy of a model trained for the remaining subset.

Beside that hard rule, a softer one (`method: weighted`, QMF-like: Zhang et al., ICML 2023):
each modality gets a reliability r in (0, 1), a logistic function of its log distance and
of its own head's energy (`Gate`), fitted on validation samples with one modality corrupted
by a seen noise family. The answer is then the mixture, over every subset S of the given modalities, of the
any-subset model's calibrated answer on S, weighted by the chance that exactly S is
reliable (`mixture`): r = 1 everywhere is trusting every input, r in {0, 1} is set-aside.
A mildly noisy image is then neither believed in full nor thrown away.

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
from torch.nn.functional import softplus

from mmfuse.errors import MMFuseError
from mmfuse.io import atomic_file
from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.preprocess.text import PAD_ID, UNK_ID

TRUST = "trust.safetensors"
FORMAT = "mmfuse-trust/2"
_FORMAT_V1 = "mmfuse-trust/1"  # no gate: read as set-aside, so an older champion still serves
# How inputs are believed: all in full (the plain fused model), untrusted ones set aside, or
# each weighed by its reliability. Also the robustness curves' names.
METHODS = ("fused", "set_aside", "weighted")
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

    def rank(self, distances: np.ndarray) -> np.ndarray:
        """[N] in [0, 1]: the share of clean validation inputs that look more usual than each distance."""
        return np.searchsorted(self.reference, distances, side="left") / len(self.reference)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """[N] in [0, 1]: `rank` of each feature row's distance."""
        return self.rank(self.distances(features))


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


GATE_FEATURES = ("log_distance", "energy")


def gate_features(distances: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    """[B, M, F] float64, what the gate reads per modality (GATE_FEATURES): the log of its squared distance
    (floored: rounding can give a tiny negative) and the energy of its own head's logits
    `aux` [B, M, C] (-logsumexp: high when no class stands out; Liu et al., NeurIPS 2020).

    Both, because each sees failures the other misses (hard preset, test split): audio at
    -10 dB SNR lies no further from training than clean audio (median log distance 3.55 vs
    3.71) but its head's energy rises (-2.32 vs -3.66), as with 90 % of its blocks lost; a
    noisy image moves the distance far (5.59 vs 3.70) but not the energy (-5.17 vs -4.76).
    """
    energy = -torch.logsumexp(aux.double(), dim=2)
    return torch.stack([distances.clamp(min=1e-12).log(), energy], dim=2)


@dataclass(frozen=True)
class Gate:
    """Per modality, reliability = sigmoid(bias - slope . (features - centre)), slopes >= 0: the
    further from training and the less sure its own head, the less an input is believed,
    never the other way round, so the rule extrapolates sensibly to failures it was not fitted on."""

    centre: np.ndarray  # [M, F] float64: median `gate_features` of clean val inputs
    bias: np.ndarray  # [M] float64
    slope: np.ndarray  # [M, F] float64, >= 0

    def reliability(self, features: torch.Tensor) -> torch.Tensor:
        """[B, M] float64 in (0, 1) from `gate_features` [B, M, F] (NaN where absent gives NaN)."""
        z = features - torch.from_numpy(self.centre)
        return torch.sigmoid(torch.from_numpy(self.bias) - (torch.from_numpy(self.slope) * z).sum(dim=2))


@dataclass(frozen=True)
class Assessment:
    """What the trust made of a batch: scores [B, M] (NaN where absent), which present
    modalities are trusted [B, M], their `gate_features` [B, M, F], each one's reliability
    [B, M] and the reliability of a typical clean input of each modality [M] (1 without a gate)."""

    present: torch.Tensor
    scores: torch.Tensor
    trusted: torch.Tensor
    features: torch.Tensor
    reliability: torch.Tensor
    typical: torch.Tensor

    def weights(self, method: str) -> torch.Tensor:
        """[B, M] float64: the chance each modality is reliable under `method` (0 = not used).

        `weighted` ignores the threshold: measured on the hard preset, mildly noisy images
        (pixel noise 0.2) score past it yet still help (fused 87.5 % vs 81.4 % without the
        image), and the gate keeps them at 88.4 % where the threshold drops them to 81.9 %.
        """
        if method == "fused":
            return self.present.double()
        if method == "set_aside":
            return self.trusted.double()
        if method == "weighted":
            return torch.where(self.present, self.reliability, 0.0)
        raise MMFuseError(f"unknown trust method {method!r}; known: {', '.join(METHODS)}")

    def used(self, method: str) -> torch.Tensor:
        """[B, M] bool: the modalities `method` counts as used, the others as set aside (reported,
        logged, monitored). Under `weighted`, set aside means believed less than half as much as a
        typical clean input of its modality: how much a modality is believed at all depends on
        what the others know (on the clean preset, text next to near-perfect image and audio
        sits at about 0.2), and a sensor that is merely weak is not failing. The whole
        reliability counts, not the distance alone (seed 0, hard preset with clean twins): by
        distance alone 60 % of the sharp test digits would be set aside (one mean per class
        spans both hard and clean images) and 2.7 % of hard test texts; by this rule 10.7 %
        and 0.3 %, as their heads' confidence keeps them believed. A sample whose every modality
        falls below that still counts its relatively most believed one as used (`keep_one`): the
        answer leans on it most (a text-only request once had nothing to name and failed)."""
        if method == "weighted":
            relative = self.reliability / self.typical
            return keep_one(self.present & (relative >= 0.5), self.present, relative)
        return self.weights(method) > 0


@dataclass(frozen=True)
class Trust:
    """The trust of every modality of a model, the score above which a modality is set aside,
    the reliability gate of the ones kept, and the method serving uses (one of METHODS)."""

    modalities: tuple[str, ...]
    per_modality: dict[str, ModalityTrust]
    threshold: float
    gate: Gate | None = None
    method: str = "set_aside"

    def distances(
        self, embeddings: torch.Tensor, present: torch.Tensor, inputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """[B, M] float64 squared distances of each present modality (NaN where absent), from encoder
        embeddings [B, M, D] and the model inputs they were encoded from (`inputs[modality]`, [B, ...])."""
        out = torch.full(present.shape, torch.nan, dtype=torch.float64)
        for i, m in enumerate(self.modalities):
            rows = present[:, i]
            if bool(rows.any()):
                features = trust_features(m, embeddings[rows, i].detach(), inputs[m][rows])
                out[rows, i] = torch.from_numpy(self.per_modality[m].distances(features))
        return out

    def scores(self, distances: torch.Tensor) -> torch.Tensor:
        """[B, M] ranks of `distances` among the clean val distances (NaN stays NaN)."""
        out = torch.full(distances.shape, torch.nan, dtype=torch.float64)
        for i, m in enumerate(self.modalities):
            rows = ~torch.isnan(distances[:, i])
            if bool(rows.any()):
                out[rows, i] = torch.from_numpy(self.per_modality[m].rank(distances[rows, i].numpy()))
        return out

    def assess(
        self, embeddings: torch.Tensor, present: torch.Tensor, inputs: dict[str, torch.Tensor], aux: torch.Tensor
    ) -> Assessment:
        """Score, trust and weigh every present modality of a batch (`aux`: the model's unimodal
        logits [B, M, C], which the gate reads)."""
        distances = self.distances(embeddings, present, inputs)
        scores = self.scores(distances)
        features = gate_features(distances, aux)
        reliability = torch.ones(present.shape, dtype=torch.float64)
        typical = torch.ones(present.shape[1], dtype=torch.float64)
        if self.gate is not None:
            reliability = torch.where(present, self.gate.reliability(features), 0.0)
            typical = torch.sigmoid(torch.from_numpy(self.gate.bias))
        return Assessment(present, scores, self.trusted(scores, present), features, reliability, typical)

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


def keep_one(chosen: torch.Tensor, present: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """`chosen` [B, M] with, in each sample that has a present modality but none chosen, its present
    modality of highest `preference` [B, M] chosen: every answer comes from some input, and says which."""
    lost = present.any(dim=1) & ~chosen.any(dim=1)
    if not bool(lost.any()):
        return chosen
    best = torch.where(present, preference, torch.full_like(preference, -torch.inf)).argmax(dim=1)
    keep = torch.nn.functional.one_hot(best, present.shape[1]).bool() & present
    return torch.where(lost.unsqueeze(1), keep, chosen)


def subset_bits(n_modalities: int) -> torch.Tensor:
    """[2^M, M] bool: every subset of the modalities, subset k holding modality i when bit i of k is set."""
    k = torch.arange(2**n_modalities).unsqueeze(1)
    return (k >> torch.arange(n_modalities).unsqueeze(0)) & 1 == 1


def subset_log_probs(
    model: MultimodalClassifier, emb: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, 2^M, C] calibrated log-probabilities of the any-subset model on every subset (`subset_bits`)
    of the modalities, the empty one answering uniformly; [B, M, C] unimodal logits) from embeddings [B, M, D].

    One `fuse` call over all subsets stacked along the batch: the head is tiny, so for a lone
    request the call count, not the arithmetic, is the cost.
    """
    bits = subset_bits(emb.shape[1])
    count, n_subsets = emb.shape[0], bits.shape[0]
    stacked = emb.unsqueeze(1).expand(-1, n_subsets, -1, -1).reshape(count * n_subsets, *emb.shape[1:])
    masks = bits.unsqueeze(0).expand(count, -1, -1).reshape(count * n_subsets, -1)
    with torch.no_grad():
        logits, aux = model.fuse(stacked, masks)
    log_probs = torch.log_softmax(logits.reshape(count, n_subsets, -1).double() / temperature, dim=2)
    log_probs[:, 0] = -np.log(log_probs.shape[2])
    return log_probs, aux.reshape(count, n_subsets, *aux.shape[1:])[:, 0]


def mixture(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, C] log-probabilities: the subsets' answers `log_probs` [B, 2^M, C] mixed by the chance
    that exactly that subset is reliable, each modality independently with probability
    `weights` [B, M] (0 for absent or set-aside ones, so subsets holding them weigh nothing)."""
    bits = subset_bits(weights.shape[1]).unsqueeze(0)
    w = weights.double().unsqueeze(1)
    subset_weight = torch.where(bits, w, 1.0 - w).prod(dim=2)  # [B, 2^M], sums to 1 per row
    log_weight = torch.where(subset_weight > 0, subset_weight.clamp(min=1e-300).log(), -torch.inf)
    return torch.logsumexp(log_weight.unsqueeze(2) + log_probs, dim=1)


def fit_gate(
    features: torch.Tensor,
    present: torch.Tensor,
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    centre: np.ndarray,
) -> Gate:
    """Fit each modality's gate by maximum likelihood of the true label under `mixture`, on
    samples with their `gate_features` [N, M, F], presence [N, M], subset answers [N, 2^M, C]
    and labels [N], centred on `centre` [M, F].

    1 + F parameters per modality, float64, L-BFGS from a fixed start: deterministic, and far
    too few parameters to overfit a few thousand samples.
    """
    with torch.inference_mode(False), torch.enable_grad():  # whatever mode the caller is in
        z = torch.nan_to_num(features.detach().clone() - torch.from_numpy(centre), nan=0.0)
        present = present.detach().clone()
        target = log_probs.detach().clone()[torch.arange(len(labels)), :, labels]  # [N, 2^M]: log p(true label)
        bias = torch.full((z.shape[1],), 3.0, dtype=torch.float64, requires_grad=True)
        raw_slope = torch.zeros(z.shape[1], z.shape[2], dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([bias, raw_slope], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            weights = torch.where(present, torch.sigmoid(bias - (softplus(raw_slope) * z).sum(dim=2)), 0.0)
            value = -mixture(target.unsqueeze(2), weights).mean()
            value.backward()
            return value

        optimiser.step(loss)
    slope = softplus(raw_slope).detach().numpy().copy()
    return Gate(np.asarray(centre, dtype=np.float64), bias.detach().numpy().copy(), slope)


@dataclass(frozen=True)
class Encoded:
    """A split as the trust sees it: encoder embeddings [N, M, D], presence [N, M] and the model inputs."""

    embeddings: torch.Tensor
    present: torch.Tensor
    inputs: dict[str, torch.Tensor]

    def features(self, column: int, modality: str) -> np.ndarray:
        rows = self.present[:, column]
        return trust_features(modality, self.embeddings[rows, column], self.inputs[modality][rows])

    def labelled(self, modalities: tuple[str, ...], labels: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per modality: the trust features of the samples carrying it, and their labels (`fit_trust`'s train)."""
        return {m: (self.features(i, m), labels[self.present[:, i]].numpy()) for i, m in enumerate(modalities)}


def fit_trust(
    modalities: tuple[str, ...], train: dict[str, tuple[np.ndarray, np.ndarray]], val: Encoded, false_alarm: float
) -> Trust:
    """Fit every modality's trust on train (class statistics from `train[m]`: the trust features of
    the train samples carrying m and their labels, `Encoded.labelled`) and val (the ranking);
    no gate yet (`fit_gate` needs the model's answers on corrupted samples)."""
    per_modality = {}
    for i, m in enumerate(modalities):
        features, labels = train[m]
        if not len(features) or not bool(val.present[:, i].any()):
            raise MMFuseError(f"trust: no {m} in train or val to fit its trust on.")
        per_modality[m] = fit_modality(features, labels, val.features(i, m))
    return Trust(modalities, per_modality, 1.0 - false_alarm)


def save_trust(path: Path, trust: Trust) -> None:
    """trust.safetensors: the arrays, and one metadata key (safetensors orders several at random)."""
    arrays = {}
    for m, fitted in trust.per_modality.items():
        arrays.update(
            {f"{m}.means": fitted.means, f"{m}.precision": fitted.precision, f"{m}.reference": fitted.reference}
        )
    if trust.gate is not None:
        arrays.update({"gate.centre": trust.gate.centre, "gate.bias": trust.gate.bias, "gate.slope": trust.gate.slope})
    meta = {
        "format": FORMAT,
        "modalities": list(trust.modalities),
        "threshold": trust.threshold,
        "method": trust.method,
    }
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
    if meta.get("format") not in (FORMAT, _FORMAT_V1):
        raise MMFuseError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; rerun the evaluate stage.")
    modalities = tuple(meta["modalities"])
    per_modality = {
        m: ModalityTrust(arrays[f"{m}.means"], arrays[f"{m}.precision"], arrays[f"{m}.reference"]) for m in modalities
    }
    gate = Gate(arrays["gate.centre"], arrays["gate.bias"], arrays["gate.slope"]) if "gate.bias" in arrays else None
    method = meta.get("method", "set_aside")
    if method not in METHODS or (method == "weighted" and gate is None):
        raise MMFuseError(f"{path}: trust method {method!r} cannot be served; rerun the evaluate stage.")
    return Trust(modalities, per_modality, float(meta["threshold"]), gate, method)
