"""Shadow serving: the challenger scores the champion's traffic, and nobody sees its answers.

A canary that cannot hurt: the champion answers every request as before; each answered
request is then queued for the challenger, which runs on its own thread, preprocesses the
raw input with its *own* preprocessing state (it may have been trained on other data, with
another vocabulary and other normalisation statistics) and writes its label to the
inference log's `shadow` table beside the champion's row. Requests arriving while the
queue is full are skipped and counted, so a slow challenger costs evidence, never latency
or answers; any failure of the challenger is logged as its answer (an error), never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from mmfuse.errors import NonFiniteError
from mmfuse.inference.log import InferenceLog, ShadowRecord
from mmfuse.inference.predictor import InputProblem, Predictor, RawSample

logger = logging.getLogger(__name__)

Job = tuple[list[RawSample], list[str]]  # raw samples and the request ids the champion gave them


class ShadowScorer:
    """One challenger, scored off the request path; `submit` never blocks and never raises."""

    def __init__(self, predictor: Predictor, log: InferenceLog, queue_size: int) -> None:
        self.predictor = predictor
        self.log = log
        self.skipped = 0  # requests not scored because the queue was full
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    @property
    def version(self) -> str:
        return self.predictor.version

    def submit(self, samples: list[RawSample], request_ids: list[str]) -> None:
        try:
            self._queue.put_nowait((samples, request_ids))
        except queue.Full:
            self.skipped += len(samples)
            if self.skipped == len(samples) or self.skipped % 1000 < len(samples):
                logger.warning("shadow queue full: %d requests not scored by %s so far", self.skipped, self.version)

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued (within `timeout`), then stop; call before the log closes."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            for record in self._score(*job):
                self.log.record(record)

    def _score(self, samples: list[RawSample], request_ids: list[str]) -> list[ShadowRecord]:
        now, version = time.time(), self.version
        records: dict[str, ShadowRecord] = {}
        prepared, ids = [], []
        for sample, request_id in zip(samples, request_ids, strict=True):
            try:
                prepared.append(self.predictor.prepare(sample))
                ids.append(request_id)
            except InputProblem as problem:  # e.g. a modality this challenger lacks
                records[request_id] = ShadowRecord(request_id, now, version, None, None, problem.kind)
        try:
            scores = self.predictor.forward(prepared) if prepared else []
        except Exception:  # the challenger must never take serving down: its failure is its answer
            logger.exception("shadow model %s failed on a batch of %d", version, len(prepared))
            scores = []
            records.update({rid: ShadowRecord(rid, now, version, None, None, "model_error") for rid in ids})
        for sample, score, request_id in zip(prepared, scores, ids):
            try:
                answer = self.predictor.explain(sample, score, request_id)
                records[request_id] = ShadowRecord(request_id, now, version, answer.label, answer.confidence)
            except NonFiniteError:
                records[request_id] = ShadowRecord(request_id, now, version, None, None, "non_finite")
        return [records[rid] for rid in request_ids]
