"""The BentoML service: serves the champion from the model store.

Endpoints (the HTTP API is serving/api.py, mounted here with `bentoml.asgi_app`; its
reference at /docs, its OpenAPI document at /docs.json):
- POST /predict        multipart/form-data `image` (file), `audio` (file), `text`; any non-empty subset
- POST /predict_batch  JSON {"samples": [{"image": base64, "audio": base64, "text": str}, ...]}
- POST /feedback       JSON {"request_id": ..., "label": ...}: the true label of an earlier prediction
- GET  /demo/          a page to try the model in a browser
- BentoML's /livez, /readyz, /metrics

This class owns what lives as long as a worker process: the model, the adaptive batcher,
the inference log, the thread pool; the API calls `classify` and `record_feedback` on it.

Run it with `mmfuse serve` (or `bentoml serve mmfuse.serving.service:MMFuse`) from the
project root: params.yaml's `serve:` section configures it, the inference log goes to
$MMFUSE_INFERENCE_LOG (default data/inference/log.sqlite), and setting $MMFUSE_API_TOKEN
turns on bearer-token auth for the three POST endpoints.

The champion is `mmfuse:latest` at start-up; a newly promoted champion is served after
a restart (or a rebuilt bento), so one server process never mixes two models. A challenger
the promote stage put in shadow (`promote.shadow.require`) is scored beside it from the
same start-up (serving/shadow.py; `serve.shadow: false` turns that off): its answers go to
the inference log only.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
import bentoml
import torch

from mmfuse.errors import NonFiniteError
from mmfuse.inference import registry
from mmfuse.inference.log import InferenceLog, LogRecord, log_path
from mmfuse.inference.predictor import InputProblem, Prediction, Predictor, PreparedSample, RawSample
from mmfuse.inference.registry import MODEL_NAME
from mmfuse.modality import MODALITIES
from mmfuse.serving.api import PROTECTED, SERVE, FeedbackResponse, ServiceBinding, app
from mmfuse.serving.auth import BearerAuth
from mmfuse.serving.batching import AdaptiveBatcher
from mmfuse.serving.http import BodySizeLimit, Loc, Problem, RequestRejected
from mmfuse.serving.shadow import ShadowScorer

logger = logging.getLogger(__name__)

# InputProblem kinds -> status: nothing usable given / bad media content / a modality this model lacks.
STATUS = {"missing": 400, "media": 422, "unsupported": 422}


@lru_cache(maxsize=1)
def _batch_size_histogram() -> Any:
    """Created on first use: BentoML sets the multiprocess metrics directory after this module is imported."""
    import prometheus_client

    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < SERVE.max_batch_size] + [SERVE.max_batch_size]
    return prometheus_client.Histogram(
        "mmfuse_model_batch_size", "Samples per model call (adaptive batching)", buckets=buckets
    )


@bentoml.asgi_app(app, path="/", name="api")  # only the app's own routes: BentoML's health and metrics stay
@bentoml.service(
    name="mmfuse",
    workers=SERVE.workers,
    threads=SERVE.threads,  # for the record: the API applies it with the instance's `limiter`
    traffic={"timeout": SERVE.timeout_s},
)
class MMFuse:
    """Multimodal classifier: image, audio and/or text in, a calibrated label and its reasons out."""

    champion = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")

    def __init__(self) -> None:
        torch.set_num_threads(SERVE.torch_threads)
        # Looked up now, at this instance's start-up, and checked complete: `self.champion` is resolved
        # once per process (BentoML pins its tag to the first version it found), so an app started
        # after a promotion in the same process served the old model. The class attribute stays for
        # `bentoml build`, which packs the champion into the bento.
        stored = registry.champion()
        if stored is None:
            raise registry.RegistryError("no champion in the model store: run the pipeline (dvc repro) first.")
        self.predictor = Predictor(Path(stored.path), str(stored.tag))
        self.labels = frozenset(self.predictor.labels)
        self.log = InferenceLog(log_path(), SERVE.log_max_rows, SERVE.log_queue_size, SERVE.log_max_age_days)
        histogram = _batch_size_histogram()
        self.batcher = AdaptiveBatcher(
            self.predictor.forward, SERVE.max_batch_size, SERVE.batch_wait_ms / 1000, on_batch=histogram.observe
        )
        self.limiter = anyio.CapacityLimiter(SERVE.threads)  # requests this worker serves at once
        self.shadow = self._shadow() if SERVE.shadow else None

    def _shadow(self) -> ShadowScorer | None:
        """The store's challenger, scored in shadow; None when there is none or it cannot be loaded
        (the champion is served either way: a canary is never a reason not to serve)."""
        stored = registry.challenger()
        if stored is None:
            return None
        try:
            predictor = Predictor(Path(stored.path), str(stored.tag))
        except Exception:
            logger.exception("the challenger %s cannot be loaded: serving without shadow", stored.tag)
            return None
        logger.info("scoring %s in shadow beside the champion %s", stored.tag, self.predictor.version)
        return ShadowScorer(predictor, self.log, SERVE.shadow_queue_size)

    @bentoml.on_shutdown
    def close(self) -> None:
        """Refuse new model calls, let the shadow finish, and write the queued log records before the process exits."""
        self.batcher.close()
        if self.shadow is not None:
            self.shadow.close()
        self.log.close()

    def classify(self, samples: list[RawSample], locs: list[Loc], endpoint: str) -> list[Prediction]:
        """Predictions for `samples` (from `endpoint`), each logged; runs on one of the API's threads.

        Every sample is validated and preprocessed first, on this thread; only the model call
        is batched with concurrent requests. Any bad sample refuses the whole call, naming
        every bad field under its sample's `loc` (so one bad sample never costs a model call).
        """
        started = time.perf_counter()
        prepared: list[PreparedSample] = []
        problems: list[tuple[int, Problem]] = []
        for sample, loc in zip(samples, locs, strict=True):
            try:
                prepared.append(self.predictor.prepare(sample))
            except InputProblem as problem:
                problems.append((STATUS[problem.kind], Problem((*loc, problem.field), problem.message, problem.kind)))
        if problems:
            raise RequestRejected(min(status for status, _ in problems), [p for _, p in problems])
        predictions = self._answer(prepared, endpoint, started)
        if self.shadow is not None:
            self.shadow.submit(samples, [p.request_id for p in predictions])
        return predictions

    def record_feedback(self, request_id: str, label: str) -> FeedbackResponse:
        """Store the true label of an earlier prediction beside it in the inference log.

        Refused (400) for a label the model does not know, so monitoring never counts a typo
        as an error; 404 when the log holds no such prediction.
        """
        if label not in self.labels:
            known = ", ".join(self.predictor.labels)
            raise RequestRejected(
                400, [Problem(("label",), f"unknown label {label!r}; the labels are {known}.", "unknown_label")]
            )
        prediction = self.log.feedback(request_id, label)
        if prediction is None:
            msg = "no prediction with this id in the inference log (never made, or removed by retention)."
            raise RequestRejected(404, [Problem(("request_id",), msg, "not_found")])
        return FeedbackResponse(request_id=request_id, label=label, prediction=prediction, correct=prediction == label)

    def _answer(self, prepared: list[PreparedSample], endpoint: str, started: float) -> list[Prediction]:
        """Run the model (adaptively batched with concurrent requests), explain, and log each sample."""
        scores = self.batcher(prepared)
        latency_ms = (time.perf_counter() - started) * 1000
        now = time.time()
        predictions = []
        for sample, score in zip(prepared, scores):
            try:
                prediction = self.predictor.explain(sample, score, uuid.uuid4().hex)
            except NonFiniteError as exc:
                logger.error("refused to answer: %s", exc)
                raise RequestRejected(500, [Problem(("model",), str(exc), "non_finite_output")]) from exc
            self.log.record(
                LogRecord(
                    request_id=prediction.request_id,
                    ts=now,
                    endpoint=endpoint,
                    model_version=self.predictor.version,
                    present=tuple(bool(v) for v in sample.tensors["mask"].tolist()),
                    stats=sample.stats,
                    embedding=score.embedding.flatten().numpy(),
                    prediction=prediction.label,
                    confidence=prediction.confidence,
                    probabilities=prediction.probabilities,
                    latency_ms=latency_ms,
                    trust=tuple(prediction.trust[m].score if m in prediction.trust else None for m in MODALITIES),
                    set_aside=tuple(m in prediction.modalities_set_aside for m in MODALITIES),
                )
            )
            predictions.append(prediction)
        return predictions


# Outermost first: refuse unauthenticated calls before reading anything, then oversized bodies;
# innermost, hand the API's routes this app's service instance.
MMFuse.add_asgi_middleware(BearerAuth, protected=PROTECTED)
MMFuse.add_asgi_middleware(BodySizeLimit, max_bytes=SERVE.max_request_bytes)
MMFuse.add_asgi_middleware(ServiceBinding)
