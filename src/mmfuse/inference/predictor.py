"""The champion, ready to answer: training's preprocessing, the calibrated model call, the explanation.

Free of HTTP and BentoML, so the service, the latency benchmark (in-process baseline) and
tests all run exactly this code. Preprocessing is `preprocess_sample` with the state
stored in the model artifact: the service has no transform of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from mmfuse.data.manifest import text_given
from mmfuse.errors import MediaError, MMFuseError, NonFiniteError
from mmfuse.inference.log import LogRecord, input_statistics
from mmfuse.modality import MODALITIES
from mmfuse.models.artifact import load_model, read_temperature
from mmfuse.models.trust import TRUST, Trust, load_trust, subset_log_probs
from mmfuse.preprocess.sample import preprocess_sample
from mmfuse.preprocess.state import PreprocessState


class InputProblem(MMFuseError):
    """A request the model cannot answer, with the field to blame (`body` when it is no one field)."""

    def __init__(self, field: str, message: str, kind: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class RawSample:
    """One sample: media bytes (a request's uploads, a dataset's packed media) or files, and the text."""

    image: bytes | Path | None = None
    audio: bytes | Path | None = None
    text: str | None = None


@dataclass(frozen=True)
class PreparedSample:
    """A validated, preprocessed sample and what it carried (raw sizes, for the inference log)."""

    tensors: dict[str, torch.Tensor]
    used: tuple[str, ...]  # given and used by this model, in mask order
    ignored: tuple[str, ...]  # given but not an input of this model
    image_bytes: int | None
    audio_bytes: int | None
    text_chars: int | None

    @property
    def stats(self) -> dict[str, float | None]:
        """The input statistics the inference log stores, computed only when asked for."""
        return input_statistics(self.tensors, self.image_bytes, self.audio_bytes, self.text_chars)


@dataclass(frozen=True)
class Scores:
    """The model's answer for one sample."""

    probabilities: torch.Tensor  # [C], calibrated
    unimodal: torch.Tensor  # [M, C]: each model modality's auxiliary head alone
    embedding: torch.Tensor  # [M, D]: per-modality embeddings (absent ones: the learned missing embedding)
    trust: torch.Tensor  # [M]: each present modality's trust score (NaN where absent or without a trust model)
    trusted: torch.Tensor  # [M] bool: the present modalities the answer used (the others were set aside)
    weight: torch.Tensor  # [M]: the chance each modality is reliable, as the answer weighed it (0: not used)
    alone: torch.Tensor  # [M]: that chance from the modality alone (before the others' agreement), over a typical one's


class Contribution(BaseModel):
    """How one modality bears on the decision, read from its auxiliary (unimodal) head."""

    share: float = Field(description="this modality's part of the support for the decided label; shares sum to 1")
    support: float = Field(description="the probability this modality alone gives the decided label")
    label: str = Field(description="the label this modality alone would predict")


class TrustScore(BaseModel):
    """How unlike training one given modality looked: above the threshold, it is set aside."""

    score: float = Field(description="share of clean validation inputs more usual than this one (0 to 1)")
    threshold: float = Field(description="scores above it are set aside")
    trusted: bool
    weight: float = Field(
        description="how far the answer believed this modality: the chance it is reliable (1: in full, 0: set aside)"
    )


class Prediction(BaseModel):
    """The answer for one sample."""

    request_id: str = Field(description="quote it to POST /feedback once the true label is known")
    label: str
    confidence: float = Field(description="calibrated probability of `label`")
    probabilities: dict[str, float] = Field(description="calibrated probability of every label")
    modalities_used: list[str] = Field(description="the modalities the answer rests on")
    modalities_set_aside: list[str] = Field(
        default_factory=list, description="given, but unlike training: answered as if missing (see `trust`)"
    )
    modalities_ignored: list[str] = Field(description="given, but not inputs of this model")
    trust: dict[str, TrustScore] = Field(
        default_factory=dict, description="per given modality, when the model has a trust model"
    )
    notes: list[str] = Field(default_factory=list, description="why a modality was set aside, in words")
    contributions: dict[str, Contribution] = Field(description="per used modality")
    driver: str = Field(description="the used modality with the largest share")
    model_version: str


def read_trust(artifact_dir: Path, trust: Path | None = None) -> Trust | None:
    """The trust stored beside the weights, else `trust` (the evaluate stage's, for a challenger
    not yet in the store), else None: an older artifact without one trusts every input."""
    own = Path(artifact_dir) / TRUST
    path = own if own.exists() else Path(trust) if trust is not None and Path(trust).exists() else None
    return load_trust(path) if path is not None else None


def _media_problem(exc: MediaError) -> InputProblem:
    """Blame the request field of the modality the error names (its `modality`), or the whole
    body when it names none, so a client learns which upload to fix."""
    if exc.modality is not None and exc.modality in MODALITIES:
        return InputProblem(exc.modality, exc.message, "media")
    return InputProblem("body", str(exc), "media")


def _size(source: bytes | Path | None) -> int | None:
    if source is None:
        return None
    return source.stat().st_size if isinstance(source, Path) else len(source)


class Predictor:
    """A model artifact loaded for serving (eval mode, its preprocessing state, its calibration, its trust)."""

    def __init__(
        self, artifact_dir: Path, version: str, calibration: Path | None = None, trust: Path | None = None
    ) -> None:
        self.model, config = load_model(Path(artifact_dir))
        self.state = PreprocessState.from_dict(config["preprocessing"])
        self.labels: list[str] = [str(label) for label in config["labels"]]
        self.modalities: tuple[str, ...] = tuple(self.model.spec.modalities)
        self.temperature = read_temperature(Path(artifact_dir), calibration)
        self.trust = read_trust(Path(artifact_dir), trust)
        self.version = version

    def prepare(self, sample: RawSample) -> PreparedSample:
        """Validate and preprocess one sample; raises InputProblem naming the field."""
        values = {"image": sample.image, "audio": sample.audio, "text": sample.text}
        given = tuple(m for m in MODALITIES if (text_given(values[m]) if m == "text" else values[m] is not None))
        if not given:
            raise InputProblem("body", "no modality given: send at least one of image, audio, text.", "missing")
        used = tuple(m for m in given if m in self.modalities)
        if not used:
            raise InputProblem(
                given[0],
                f"this model reads {', '.join(self.modalities)}; the request carries only {', '.join(given)}.",
                "unsupported",
            )
        image = sample.image if "image" in used else None
        audio = sample.audio if "audio" in used else None
        text = sample.text if "text" in used else None
        try:
            tensors = preprocess_sample(image, audio, text, self.state)
        except MediaError as exc:
            raise _media_problem(exc) from exc
        ignored = tuple(m for m in given if m not in used)
        return PreparedSample(tensors, used, ignored, _size(image), _size(audio), len(text) if text else None)

    def forward(self, samples: list[PreparedSample]) -> list[Scores]:
        """One model call for a batch: calibrated probabilities under the trust's method (untrusted
        modalities set aside, the rest weighed by reliability), unimodal probabilities, embeddings."""
        keys = (*self.modalities, "mask")
        batch = {key: torch.stack([s.tensors[key] for s in samples]) for key in keys}
        with torch.inference_mode():
            present = self.model.presence(batch)
            embedding = self.model.encode(batch, present)
            if self.trust is None:  # an artifact from before trust: every input is believed
                scores, trusted, weight = torch.full(present.shape, torch.nan, dtype=torch.float64), present, present
                alone = present.double()
                logits, aux = self.model.fuse(embedding, present)
                probabilities = torch.softmax(logits / self.temperature, dim=1)
            else:
                log_probs, aux = subset_log_probs(self.model, embedding, self.temperature)
                assessment = self.trust.assess(embedding, present, batch, aux)
                scores, trusted = assessment.scores, assessment.used(self.trust.method)
                weight = assessment.believed(self.trust.method)
                alone = assessment.weights(self.trust.method) / assessment.typical
                probabilities = assessment.answer(self.trust.method, log_probs).exp().float()
            unimodal = torch.softmax(aux, dim=2)
        return [
            Scores(probabilities[i], unimodal[i], embedding[i], scores[i], trusted[i], weight[i].double(), alone[i])
            for i in range(len(samples))
        ]

    def explain(self, sample: PreparedSample, scores: Scores, request_id: str) -> Prediction:
        """The response for one sample: label, probabilities, and each used modality's contribution.

        Raises NonFiniteError rather than answer NaN or infinite probabilities (a corrupt or
        diverged model): a number no client can act on must never look like an answer.
        """
        if not torch.isfinite(scores.probabilities).all():
            raise NonFiniteError(
                f"the model {self.version} produced non-finite probabilities for this input; the request is "
                "logged as failed. Roll back the champion (`mmfuse champion rollback`) if every request fails.",
                "probabilities",
            )
        best = int(torch.argmax(scores.probabilities))
        trusted = {m: bool(scores.trusted[self.modalities.index(m)]) for m in sample.used}
        used = [m for m in sample.used if trusted[m]]
        set_aside = [m for m in sample.used if not trusted[m]]
        support = {m: float(scores.unimodal[self.modalities.index(m), best]) for m in used}
        total = sum(support.values())
        contributions = {
            m: Contribution(
                share=support[m] / total if total > 0 else 1.0 / len(support),
                support=support[m],
                label=self.labels[int(torch.argmax(scores.unimodal[self.modalities.index(m)]))],
            )
            for m in used
        }
        trust = {}
        if self.trust is not None:
            trust = {
                m: TrustScore(
                    score=round(float(scores.trust[self.modalities.index(m)]), 6),
                    threshold=self.trust.threshold,
                    trusted=trusted[m],
                    weight=round(float(scores.weight[self.modalities.index(m)]), 6),
                )
                for m in sample.used
            }
        notes = [self._why_set_aside(m, trust[m], scores) for m in set_aside]
        return Prediction(
            request_id=request_id,
            label=self.labels[best],
            confidence=float(scores.probabilities[best]),
            probabilities=dict(zip(self.labels, scores.probabilities.tolist())),
            modalities_used=used,
            modalities_set_aside=set_aside,
            modalities_ignored=list(sample.ignored),
            trust=trust,
            notes=notes,
            contributions=contributions,
            driver=max(contributions, key=lambda m: contributions[m].share),
            model_version=self.version,
        )

    def _why_set_aside(self, modality: str, trust: TrustScore, scores: Scores) -> str:
        """Why `modality` was set aside, in words: it lies past the threshold, or it looked usual
        alone but its head names a label the other inputs contradict, or it looked unreliable alone."""
        index = self.modalities.index(modality)
        if trust.score > trust.threshold:
            return f"{modality} set aside: unlike training {modality}, score {trust.score:.3f} > {trust.threshold:.2f}"
        if float(scores.alone[index]) >= 0.5:
            label = self.labels[int(torch.argmax(scores.unimodal[index]))]
            return (
                f"{modality} set aside: it reads {label!r}, which the other inputs contradict "
                f"(weighed {trust.weight:.2f}, score {trust.score:.3f})"
            )
        weighed = f"weighed {trust.weight:.2f}, far below a typical {modality}"
        return f"{modality} set aside: {weighed} (score {trust.score:.3f})"

    def log_record(
        self,
        sample: PreparedSample,
        scores: Scores,
        prediction: Prediction,
        endpoint: str,
        ts: float,
        latency_ms: float,
    ) -> LogRecord:
        """The inference-log row of one answered sample: what monitoring reads of it."""
        return LogRecord(
            request_id=prediction.request_id,
            ts=ts,
            endpoint=endpoint,
            model_version=self.version,
            present=tuple(bool(v) for v in sample.tensors["mask"].tolist()),
            stats=sample.stats,
            embedding=scores.embedding.flatten().numpy(),
            prediction=prediction.label,
            confidence=prediction.confidence,
            probabilities=prediction.probabilities,
            latency_ms=latency_ms,
            trust=tuple(prediction.trust[m].score if m in prediction.trust else None for m in MODALITIES),
            set_aside=tuple(m in prediction.modalities_set_aside for m in MODALITIES),
        )
