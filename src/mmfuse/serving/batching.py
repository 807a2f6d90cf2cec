"""Adaptive batching of the model call, inside the serving process.

BentoML's own adaptive batching (`@bentoml.api(batchable=True)`) merges whole HTTP
requests to one endpoint, and runs the endpoint's entire body on the merged batch: the
per-sample preprocessing would then run serially in one thread, and one bad sample would
fail every request merged with it. Splitting the model into a second BentoML service
would batch only the model call, but adds a process hop and tensor serialisation to
every request. So requests preprocess and validate on their own threads, and only the
model call goes through this batcher, shared by /predict and /predict_batch.

The policy adapts to load without a tuned delay, and without a thread of its own
(leader/follower "combining"): a caller that finds the model idle runs it at once, in its
own thread, on everything queued so far (batch of 1 when idle: no added latency, no
thread hand-off); callers that arrive while it runs queue up, and when the batch is done
the oldest of them leads the next batch, with everything that queued meanwhile. So a
loaded server runs batches as large as its backlog (up to `max_batch_size`), and the
model never runs twice at once. `wait_s` optionally holds a batch open to fill it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Job(Generic[T, R]):
    """One caller's items, and how the caller learns its outcome or that it now leads."""

    def __init__(self, items: Sequence[T]) -> None:
        self.items = items
        self.results: list[R] | None = None
        self.error: BaseException | None = None
        self.lead = False
        self.wake = threading.Event()

    def outcome(self) -> list[R]:
        if self.error is not None:
            raise self.error
        assert self.results is not None
        return self.results


class AdaptiveBatcher(Generic[T, R]):
    """Runs `fn(items) -> results` (same length, same order) on merged batches from many threads."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch_size: int,
        wait_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._fn = fn
        self._max = max_batch_size
        self._wait = wait_s
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._pending: deque[_Job[T, R]] = deque()
        self._busy = False  # a leader is between taking a batch and handing over
        self._closed = False

    def __call__(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, computed in some batch together with other callers' items.

        A job is never split, so one caller's samples stay in one model call; a job larger
        than max_batch_size runs as a batch of its own. An exception of `fn` is raised
        in every caller whose items were in the failed batch.
        """
        if not items:
            return []
        job: _Job[T, R] = _Job(items)
        with self._lock:
            if self._closed:
                raise RuntimeError("the model batcher is closed")
            self._pending.append(job)
            job.lead = not self._busy
            self._busy = True
        if not job.lead:
            job.wake.wait()
            if not job.lead:
                return job.outcome()
        self._lead()
        return job.outcome()

    def close(self) -> None:
        """Refuse new calls; calls already queued still complete (their callers run them)."""
        with self._lock:
            self._closed = True

    def _take(self) -> list[_Job[T, R]]:
        """The next batch from the front of the queue: whole jobs, at least one (the leader's)."""
        with self._lock:
            batch = [self._pending.popleft()]
            size = len(batch[0].items)
            while self._pending and size + len(self._pending[0].items) <= self._max:
                size += len(self._pending[0].items)
                batch.append(self._pending.popleft())
        return batch

    def _lead(self) -> None:
        """Run one batch (the leader's job is at the front of the queue), then hand over."""
        if self._wait > 0 and sum(len(j.items) for j in list(self._pending)) < self._max:
            time.sleep(self._wait)
        batch = self._take()
        try:
            items = [item for job in batch for item in job.items]
            if self._on_batch is not None:
                self._on_batch(len(items))
            results = self._fn(items)
            start = 0
            for job in batch:
                job.results = results[start : start + len(job.items)]
                start += len(job.items)
        except BaseException as exc:  # every caller in the batch must be released, whatever went wrong
            for job in batch:
                job.error = exc
        finally:
            with self._lock:
                successor = self._pending[0] if self._pending else None
                if successor is None:
                    self._busy = False
                else:
                    successor.lead = True
            for job in batch[1:]:
                job.wake.set()
            if successor is not None:
                successor.wake.set()
