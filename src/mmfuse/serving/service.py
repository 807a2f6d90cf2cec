"""The BentoML service: serves the champion from the model store.

Endpoints (the HTTP API is serving/api.py, mounted here with `bentoml.asgi_app`; its
reference at /docs, its OpenAPI document at /docs.json):
- POST /predict        multipart/form-data `image` (file), `audio` (file), `text`; any non-empty subset
- POST /predict_batch  JSON {"samples": [{"image": base64, "audio": base64, "text": str}, ...]}
- POST /feedback       JSON {"request_id": ..., "label": ...}: the true label of an earlier prediction
- POST /reload         serve the store's champion (and challenger) now, if either changed
- GET  /demo/          a page to try the model in a browser
- BentoML's /livez, /readyz, /metrics

This class owns what lives as long as a worker process: the model, the adaptive batcher,
the inference log, the thread pool; the API calls `classify` and `record_feedback` on it.

Run it with `mmfuse serve` (or `bentoml serve mmfuse.serving.service:MMFuse`) from the
project root: params.yaml's `serve:` section configures it, the inference log goes to
$MMFUSE_INFERENCE_LOG (default data/inference/log.sqlite), and setting $MMFUSE_API_TOKEN
turns on bearer-token auth for the three POST endpoints.

The champion is `mmfuse:latest`. Each worker looks at the store every
`serve.reload_interval_s` (and on POST /reload) and swaps a new champion in without a
restart: the new model is loaded first, then one attribute is replaced, so a request runs
start to finish on the model it started with and none fails during the swap; every answer
names its model version. A rollback is picked up the same way. A challenger the promote
stage put in shadow (`promote.shadow.require`) is scored beside the champion
(serving/shadow.py; `serve.shadow: false` turns that off): its answers go to the inference
log only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
import bentoml
import torch

from mmfuse.errors import NonFiniteError
from mmfuse.inference import registry
from mmfuse.inference.log import CaptureRecord, InferenceLog, log_path
from mmfuse.inference.predictor import InputProblem, Prediction, Predictor, PreparedSample, RawSample
from mmfuse.inference.registry import MODEL_NAME
from mmfuse.serving.api import PROTECTED, SERVE, FeedbackResponse, ReloadResponse, ServiceBinding, app
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


@dataclass(frozen=True)
class Served:
    """One champion as served: its predictor and the batcher of its model calls, swapped together."""

    predictor: Predictor
    batcher: AdaptiveBatcher[PreparedSample, Any]


@bentoml.asgi_app(app, path="/", name="api")  # only the app's own routes: BentoML's health and metrics stay
@bentoml.service(
    name="mmfuse",
    workers=SERVE.workers,
    threads=SERVE.threads,  # for the record: the API applies it with the instance's `limiter`
    traffic={"timeout": SERVE.timeout_s},
    logging={"access": {"enabled": SERVE.access_log}},
)
class MMFuse:
    """Multimodal classifier: image, audio and/or text in, a calibrated label and its reasons out."""

    champion = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")

    def __init__(self) -> None:
        torch.set_num_threads(SERVE.torch_threads)
        # Looked up in the store by this instance, at start-up and at every reload, and checked complete:
        # `self.champion` is resolved once per process (BentoML pins its tag to the first version it
        # found). The class attribute stays for `bentoml build`, which packs the champion into the bento.
        stored = registry.champion()
        if stored is None:
            raise registry.RegistryError("no champion in the model store: run the pipeline (dvc repro) first.")
        self.log = InferenceLog(
            log_path(),
            SERVE.log_max_rows,
            SERVE.log_queue_size,
            SERVE.log_max_age_days,
            capture_max_bytes=int(SERVE.capture_max_mb * 1_000_000),
        )
        self.served = self._serve(stored)
        self.limiter = anyio.CapacityLimiter(SERVE.threads)  # requests this worker serves at once
        self.shadow: ShadowScorer | None = None
        self._shadow_tag: str | None = None  # the challenger last looked at, loaded or not
        self._reloading = threading.Lock()
        self._stop = threading.Event()
        self._refresh_shadow()
        self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        if SERVE.reload_interval_s > 0:
            self._watcher.start()

    @staticmethod
    def _serve(stored: bentoml.Model) -> Served:
        predictor = Predictor(Path(stored.path), str(stored.tag))
        histogram = _batch_size_histogram()
        batcher = AdaptiveBatcher(
            predictor.forward, SERVE.max_batch_size, SERVE.batch_wait_ms / 1000, on_batch=histogram.observe
        )
        return Served(predictor, batcher)

    def _refresh_shadow(self) -> bool:
        """Score the store's challenger in shadow, if it changed; True when it did. One that cannot be
        loaded is skipped (logged once) and the champion is served either way: a canary is never a
        reason not to serve."""
        stored = registry.challenger() if SERVE.shadow else None
        tag = str(stored.tag) if stored is not None else None
        if tag == self._shadow_tag:
            return False
        scorer = None
        if stored is not None:
            try:
                scorer = ShadowScorer(Predictor(Path(stored.path), tag), self.log, SERVE.shadow_queue_size)
                logger.info("scoring %s in shadow beside the champion %s", tag, self.served.predictor.version)
            except Exception:
                logger.exception("the challenger %s cannot be loaded: serving without shadow", tag)
        old, self.shadow, self._shadow_tag = self.shadow, scorer, tag
        if old is not None:
            old.close()
        return True

    def reload(self) -> ReloadResponse:
        """Serve the store's champion and challenger, if either changed since this worker last looked.

        The new model is loaded before `self.served` is replaced, in one assignment: a request
        holds the `Served` it started with, so requests in flight finish on the old model and
        none fails. A store without a complete champion keeps the current one serving (503).
        """
        with self._reloading:
            try:
                stored = registry.champion()
            except registry.RegistryError as exc:
                raise RequestRejected(503, [Problem(("store",), str(exc), "store")]) from exc
            if stored is None:
                msg = "the model store holds no champion; the current one keeps serving."
                raise RequestRejected(503, [Problem(("store",), msg, "store")])
            changed = str(stored.tag) != self.served.predictor.version
            if changed:
                try:
                    self.served = self._serve(stored)
                except Exception as exc:  # e.g. weights of the right size but unreadable
                    msg = f"{stored.tag} cannot be loaded ({exc}); {self.served.predictor.version} keeps serving."
                    raise RequestRejected(503, [Problem(("store",), msg, "store")]) from exc
                logger.info("now serving %s", stored.tag)
            changed = self._refresh_shadow() or changed
            return ReloadResponse(champion=self.served.predictor.version, challenger=self._shadow_tag, changed=changed)

    def _watch(self) -> None:
        while not self._stop.wait(SERVE.reload_interval_s):
            try:
                self.reload()
            except RequestRejected as exc:
                logger.warning("model reload skipped: %s", exc.problems[0].msg)
            except Exception:  # the watcher must outlive any one failed look at the store
                logger.exception("model reload failed; still serving %s", self.served.predictor.version)

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop watching the store, refuse new model calls, let the shadow finish, and write the
        queued log records before the process exits."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=30)
        self.served.batcher.close()
        if self.shadow is not None:
            self.shadow.close()
        self.log.close()

    def classify(
        self, samples: list[RawSample], locs: list[Loc], endpoint: str, capture: bool = False
    ) -> list[Prediction]:
        """Predictions for `samples` (from `endpoint`), each logged; runs on one of the API's threads.

        With `capture` (the request opted in) or `serve.capture`, the raw inputs are kept too,
        beside the log, so that once labelled they can become training data (`mmfuse harvest`).

        Every sample is validated and preprocessed first, on this thread; only the model call
        is batched with concurrent requests. Any bad sample refuses the whole call, naming
        every bad field under its sample's `loc` (so one bad sample never costs a model call).
        """
        started = time.perf_counter()
        served, shadow = self.served, self.shadow  # this request's models, whatever a reload does meanwhile
        prepared: list[PreparedSample] = []
        problems: list[tuple[int, Problem]] = []
        for sample, loc in zip(samples, locs, strict=True):
            try:
                prepared.append(served.predictor.prepare(sample))
            except InputProblem as problem:
                problems.append((STATUS[problem.kind], Problem((*loc, problem.field), problem.message, problem.kind)))
        if problems:
            raise RequestRejected(min(status for status, _ in problems), [p for _, p in problems])
        predictions = self._answer(served, prepared, endpoint, started)
        if capture or SERVE.capture:
            now = time.time()
            for sample, prediction in zip(samples, predictions):
                image, audio = (m if isinstance(m, bytes) else None for m in (sample.image, sample.audio))
                self.log.record(CaptureRecord(prediction.request_id, now, image, audio, sample.text))
        if shadow is not None:
            shadow.submit(samples, [p.request_id for p in predictions])
        return predictions

    def record_feedback(self, request_id: str, label: str) -> FeedbackResponse:
        """Store the true label of an earlier prediction beside it in the inference log.

        Refused (400) for a label the model does not know, so monitoring never counts a typo
        as an error; 404 when the log holds no such prediction.
        """
        labels = self.served.predictor.labels
        if label not in labels:
            known = ", ".join(labels)
            raise RequestRejected(
                400, [Problem(("label",), f"unknown label {label!r}; the labels are {known}.", "unknown_label")]
            )
        prediction = self.log.feedback(request_id, label)
        if prediction is None:
            msg = "no prediction with this id in the inference log (never made, or removed by retention)."
            raise RequestRejected(404, [Problem(("request_id",), msg, "not_found")])
        return FeedbackResponse(request_id=request_id, label=label, prediction=prediction, correct=prediction == label)

    def _answer(
        self, served: Served, prepared: list[PreparedSample], endpoint: str, started: float
    ) -> list[Prediction]:
        """Run the model (adaptively batched with concurrent requests), explain, and log each sample."""
        scores = served.batcher(prepared)
        latency_ms = (time.perf_counter() - started) * 1000
        now = time.time()
        predictions = []
        for sample, score in zip(prepared, scores):
            try:
                prediction = served.predictor.explain(sample, score, uuid.uuid4().hex)
            except NonFiniteError as exc:
                logger.error("refused to answer: %s", exc)
                raise RequestRejected(500, [Problem(("model",), str(exc), "non_finite_output")]) from exc
            self.log.record(served.predictor.log_record(sample, score, prediction, endpoint, now, latency_ms))
            predictions.append(prediction)
        return predictions


# Outermost first: refuse unauthenticated calls before reading anything, then oversized bodies;
# innermost, hand the API's routes this app's service instance.
MMFuse.add_asgi_middleware(BearerAuth, protected=PROTECTED)
MMFuse.add_asgi_middleware(BodySizeLimit, max_bytes=SERVE.max_request_bytes)
MMFuse.add_asgi_middleware(ServiceBinding)
