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
each modality gets a prior reliability r in (0, 1), a logistic function of how far it lies
from training and of its own head's energy (`Gate`), fitted on validation samples with one
modality corrupted by a seen noise family. The answer is then the mixture, over every subset
S of the given modalities, of the any-subset model's calibrated answer on S, weighted by the
posterior chance that exactly S is reliable (`mixture`): the prior of S times how well the
heads of S agree on one label (`subset_evidence`; the conflict Trusted Multi-View
Classification, Han et al., ICLR 2021, reads from the same heads). r = 1 everywhere is
trusting every input, r in {0, 1} is set-aside. A mildly noisy image is then neither believed
in full nor thrown away, and a sensor that looks like training but names another digit than
the two others is doubted.

What each part bought, measured on the hard preset's test split (seed 0, worst regret over
every corruption and severity, `corruption_regret_points`): the gate on raw log distances
with independent reliabilities, 5.9 points (audio with 30 % of its blocks lost: the gate had
never seen audio far from training, so it trusted audio at any distance); with the
input statistics' roughness and a ridge fair to their scale, the lost blocks lie far
(72-96 % past the threshold) but the gate still ignored it, 6.0; plus the agreement
evidence, 4.6; plus one distance slope for every modality, in units of the distance to the
threshold, 2.55 (image blurred at sigma 3: still in-distribution, and random words in the
text). Clean accuracy stayed at the trusting model's 93.25 throughout.

The embeddings are the frozen unimodal encoders' (staged training), so a modality's score
does not depend on the others. Deterministic: float64 statistics, a fixed eigen-solver, no
randomness; the fitted arrays travel in `trust.safetensors` beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache, cached_property
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
FORMAT = "mmfuse-trust/3"
# How inputs are believed: all in full (the plain fused model), untrusted ones set aside, or
# each weighed by its reliability. Also the robustness curves' names.
METHODS = ("fused", "set_aside", "weighted")
_RIDGE = 1e-3  # added to the covariance's diagonal (relative to each variance): a stable inverse
_GATE_PRIOR_SD = 3.0  # the gate's parameters, a priori: a typical input's reliability within sigmoid(+-3)


def input_features(modality: str, inputs: torch.Tensor) -> torch.Tensor:
    """[B, k] float64 statistics of one modality's model input: what an encoder may be blind to.

    Image and audio (normalised pixels, log-mel): mean, spread, the share of values beyond
    3 standard deviations and the roughness along each axis (mean absolute difference of
    neighbours: rows and columns, mel bands and frames). Text (token ids): its length and its
    share of unknown characters. Roughness, because packets lost from audio leave its
    level and spread typical (mean 0.004 against 0.114, spread 1.06 against 1.11 on the hard
    test split) but tear its frames apart: the frame-to-frame change of a clip with 30 % of its
    blocks lost has a median of 0.115 where 99 % of clean clips stay under 0.058.
    """
    if modality == "text":
        tokens = inputs.long()
        length = (tokens != PAD_ID).sum(dim=1).double()
        unknown = (tokens == UNK_ID).sum(dim=1).double() / length.clamp(min=1)
        return torch.stack([length, unknown], dim=1)
    grid = inputs.double().reshape(inputs.shape[0], *inputs.shape[-2:])  # [B, rows, columns]
    flat = grid.flatten(1)
    across = (grid[:, 1:, :] - grid[:, :-1, :]).abs().flatten(1).mean(dim=1)
    along = (grid[:, :, 1:] - grid[:, :, :-1]).abs().flatten(1).mean(dim=1)
    extreme = (flat.abs() > 3).double().mean(dim=1)
    return torch.stack([flat.mean(dim=1), flat.std(dim=1), extreme, across, along], dim=1)


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

    def log_quantiles(self, threshold: float) -> tuple[float, float]:
        """The log distances of a typical clean val input and of the `threshold` quantile of them:
        the 0 and 1 of `farness`."""
        typical, limit = np.log(np.quantile(self.reference, [0.5, threshold]).clip(min=1e-12))
        return float(typical), float(limit)


def farness(distances: torch.Tensor, typical: float, limit: float) -> torch.Tensor:
    """Log distances in units of the way from a typical clean val input (0) to the set-aside
    threshold (1), `ModalityTrust.log_quantiles`: the same scale for every modality, whatever its dimension."""
    return (distances.clamp(min=1e-12).log() - typical) / max(limit - typical, 1e-12)


def fit_modality(train: np.ndarray, labels: np.ndarray, val: np.ndarray) -> ModalityTrust:
    """Fit class means and the pooled within-class covariance on `train` [N, D], rank on `val` [V, D].

    The ridge is relative to each feature's own variance: one relative to their mean variance
    drowned the input statistics (variances near 1e-5 beside the embedding's near 1), so a
    clip with lost blocks moved its distance by 4 % instead of by e^3.
    """
    train = train.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / max(len(train) - len(classes), 1)
    variance = np.diag(covariance)
    covariance += np.diag(np.maximum(variance, 1e-6 * float(variance.mean()))) * _RIDGE
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2
    fitted = ModalityTrust(means, precision, np.zeros(1))
    return ModalityTrust(means, precision, np.sort(fitted.distances(val)))


GATE_FEATURES = ("farness", "energy")


def gate_features(farness: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    """[B, M, F] float64, what the gate reads per modality (GATE_FEATURES): its `farness` [B, M]
    and the energy of its own head's logits `aux` [B, M, C]
    (-logsumexp: high when no class stands out; Liu et al., NeurIPS 2020).

    Both, because each sees failures the other misses (hard preset, test split): audio at
    -10 dB SNR lies no further from training than clean audio (median log distance 3.55 vs
    3.71) but its head's energy rises (-2.32 vs -3.66); a noisy image moves the distance far
    (5.59 vs 3.70) but not the energy (-5.17 vs -4.76).
    """
    energy = -torch.logsumexp(aux.double(), dim=2)
    return torch.stack([farness.double(), energy], dim=2)


@dataclass(frozen=True)
class Gate:
    """Per modality, reliability = sigmoid(bias - slope . (features - centre)), slopes >= 0: the
    further from training and the less sure its own head, the less an input is believed,
    never the other way round, so the rule extrapolates sensibly to failures it was not fitted on.

    The farness slope is one for every modality (`fit_gate`): no seen audio noise moves audio
    far from training, so a slope of audio's own was never learnt (0.6 against a bias of 15:
    audio trusted at any distance) and audio that lost its blocks, far as it lay, was believed."""

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
    modalities are trusted [B, M], their `gate_features` [B, M, F], each one's prior
    reliability [B, M], the prior reliability of a typical clean input of each modality [M]
    (1 without a gate) and the agreement evidence of every subset [B, 2^M] (`subset_evidence`)."""

    present: torch.Tensor
    scores: torch.Tensor
    trusted: torch.Tensor
    features: torch.Tensor
    reliability: torch.Tensor
    typical: torch.Tensor
    evidence: torch.Tensor
    _posteriors: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

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

    def answer(self, method: str, log_probs: torch.Tensor) -> torch.Tensor:
        """[B, C] log-probabilities under `method`: the subsets' answers `log_probs` [B, 2^M, C]
        (`subset_log_probs`) mixed by `posterior`."""
        return mix(log_probs, self.posterior(method))

    def posterior(self, method: str) -> torch.Tensor:
        """[B, 2^M] float64: the chance that exactly each subset (`subset_bits`) is reliable under
        `method`, given how well its members agree (`subset_posterior`); computed once per method."""
        if method not in self._posteriors:
            self._posteriors[method] = subset_posterior(self.weights(method), self.evidence)
        return self._posteriors[method]

    def believed(self, method: str) -> torch.Tensor:
        """[B, M] float64: the chance each modality is among the reliable ones, all evidence in
        (the weight a response reports): the posterior of the subsets holding it."""
        return self.posterior(method) @ subset_bits(self.present.shape[1]).double()

    def used(self, method: str) -> torch.Tensor:
        """[B, M] bool: the modalities `method` counts as used, the others as set aside (reported,
        logged, monitored). Under `weighted`, set aside means believed less than half as much as a
        typical clean input of its modality: how much a modality is believed at all depends on
        what the others know (on the clean preset, text next to near-perfect image and audio
        sits at about 0.2), and a sensor that is merely weak is not failing. The whole
        belief counts (`believed`: prior and agreement), not the distance alone: on the hard test
        split 0.07 % of clean inputs fall under half a typical one's prior (0.25 % of the clean
        preset's), against 97 % of images under pixel noise 0.8 and 80 % of clips that lost
        30 % of their blocks. A sample whose every modality
        falls below that still counts its relatively most believed one as used (`keep_one`): the
        answer leans on it most (a text-only request once had nothing to name and failed)."""
        if method == "weighted":
            relative = self.believed(method) / self.typical
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
        far = torch.stack([farness(distances[:, i], *self._log_quantiles[i]) for i in range(len(self.modalities))], 1)
        features = gate_features(far, aux)
        reliability = torch.ones(present.shape, dtype=torch.float64)
        typical = torch.ones(present.shape[1], dtype=torch.float64)
        if self.gate is not None:
            reliability = torch.where(present, self.gate.reliability(features), 0.0)
            typical = torch.sigmoid(torch.from_numpy(self.gate.bias))
        trusted = self.trusted(scores, present)
        return Assessment(present, scores, trusted, features, reliability, typical, subset_evidence(aux))

    @cached_property
    def _log_quantiles(self) -> list[tuple[float, float]]:
        """Each modality's `ModalityTrust.log_quantiles` at the threshold, computed once (sorting the
        references again cost a request 0.6 ms)."""
        return [self.per_modality[m].log_quantiles(self.threshold) for m in self.modalities]

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


@cache
def subset_bits(n_modalities: int) -> torch.Tensor:
    """[2^M, M] bool: every subset of the modalities, subset k holding modality i when bit i of k is set
    (one shared tensor per M: read it, never write it). Made outside inference mode, whatever the
    caller's: a cached inference tensor would break the gate's fit, which needs autograd."""
    with torch.inference_mode(False):
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


def subset_evidence(aux: torch.Tensor) -> torch.Tensor:
    """[B, 2^M] float64: log of how much likelier the unimodal heads' answers `aux` [B, M, C] are if
    the modalities of each subset share one label than if each went its own way:
    log sum_y p(y)^(1-|S|) prod_(m in S) p_m(y), p(y) uniform. 0 for the empty subset and for
    single modalities (nothing to agree with); large when two heads name the same label,
    negative when they name different ones. It is Bayes' rule for which sensors still see the
    same digit, the heads' answers standing in for their inputs."""
    bits = subset_bits(aux.shape[1]).double()
    log_p = torch.log_softmax(aux.double(), dim=2)
    joint = torch.einsum("km,bmc->bkc", bits, log_p)  # [B, 2^M, C]: sum over members of log p_m(y)
    return torch.logsumexp(joint, dim=2) + (bits.sum(dim=1) - 1) * float(np.log(aux.shape[2]))


def subset_posterior(weights: torch.Tensor, evidence: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 2^M] float64 summing to 1 per row: the chance that exactly each subset is reliable, each
    modality a priori independently with probability `weights` [B, M] (0 for absent or set-aside
    ones, so subsets holding them weigh nothing), times the subset's `evidence` [B, 2^M] if given."""
    bits = subset_bits(weights.shape[1]).unsqueeze(0)
    w = weights.double().unsqueeze(1)
    prior = torch.where(bits, w, 1.0 - w).prod(dim=2)  # [B, 2^M], sums to 1 per row
    log_weight = torch.where(prior > 0, prior.clamp(min=1e-300).log(), -torch.inf)
    if evidence is not None:
        log_weight = log_weight + torch.where(prior > 0, evidence.double(), 0.0)
    return torch.softmax(log_weight, dim=1)


def mix(log_probs: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """[B, C] log-probabilities: the subsets' answers `log_probs` [B, 2^M, C] mixed by `posterior` [B, 2^M]."""
    log_weight = torch.where(posterior > 0, posterior.clamp(min=1e-300).log(), -torch.inf)
    return torch.logsumexp(log_weight.unsqueeze(2) + log_probs, dim=1)


def mixture(log_probs: torch.Tensor, weights: torch.Tensor, evidence: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C] log-probabilities: the subsets' answers `log_probs` [B, 2^M, C] mixed by
    `subset_posterior(weights, evidence)`."""
    return mix(log_probs, subset_posterior(weights, evidence))


def fit_gate(
    features: torch.Tensor,
    present: torch.Tensor,
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    centre: np.ndarray,
    evidence: torch.Tensor | None = None,
) -> Gate:
    """Fit each modality's gate by maximum a posteriori of the true label under `mixture`, on
    samples with their `gate_features` [N, M, F], presence [N, M], subset answers [N, 2^M, C],
    labels [N] and subsets' agreement `evidence` [N, 2^M], centred on `centre` [M, F].

    A bias and F - 1 slopes per modality and one farness slope for all (see `Gate`), float64,
    L-BFGS from a fixed start: deterministic, and far too few parameters to overfit a few
    thousand samples. A weak Gaussian prior (sd `_GATE_PRIOR_SD`) keeps them finite where the
    data cannot tell: no seen corruption makes audio worth doubting, so by likelihood alone
    its bias ran off to 10.6, 19.9 or 59.9 depending on the seed and the draw of corrupted val
    copies, and at 59.9 audio with lost blocks was believed at any distance (regret 8.5
    points); with the prior it stays at 7.2-7.7 over three draws, the regret unchanged.
    """
    with torch.inference_mode(False), torch.enable_grad():  # whatever mode the caller is in
        z = torch.nan_to_num(features.detach().clone() - torch.from_numpy(centre), nan=0.0)
        present = present.detach().clone()
        target = log_probs.detach().clone()[torch.arange(len(labels)), :, labels]  # [N, 2^M]: log p(true label)
        evidence = None if evidence is None else evidence.detach().clone()
        bias = torch.full((z.shape[1],), 3.0, dtype=torch.float64, requires_grad=True)
        raw_farness = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
        raw_own = torch.zeros(z.shape[1], z.shape[2] - 1, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([bias, raw_farness, raw_own], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def slopes() -> torch.Tensor:
            return softplus(torch.cat([raw_farness.expand(z.shape[1], 1), raw_own], dim=1))

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            weights = torch.where(present, torch.sigmoid(bias - (slopes() * z).sum(dim=2)), 0.0)
            value = -mixture(target.unsqueeze(2), weights, evidence).mean()
            value = value + (bias.square().sum() + slopes().square().sum()) / (2 * _GATE_PRIOR_SD**2 * len(target))
            value.backward()
            return value

        optimiser.step(loss)
        slope = slopes().detach().numpy().copy()
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
    if meta.get("format") != FORMAT:
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
