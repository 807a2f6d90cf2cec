"""The adaptive batcher behind the model call: merging under load, order, limits, failures."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mmfuse.serving.batching import AdaptiveBatcher


class SlowDouble:
    """A stand-in model call: doubles its inputs, takes a while, records each batch it saw."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.seconds)
        return [2 * x for x in items]


def test_a_lone_call_runs_at_once_as_a_batch_of_one():
    model = SlowDouble(0.0)
    batcher = AdaptiveBatcher(model, max_batch_size=8)
    try:
        started = time.perf_counter()
        assert batcher([3]) == [6]
        assert time.perf_counter() - started < 0.05
        assert model.batches == [[3]]
    finally:
        batcher.close()


def test_concurrent_calls_are_merged_and_each_gets_its_own_results():
    model = SlowDouble(0.02)
    batcher = AdaptiveBatcher(model, max_batch_size=8)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda x: batcher([x, x + 100]), range(32)))
    finally:
        batcher.close()
    assert results == [[2 * x, 2 * (x + 100)] for x in range(32)]
    assert max(len(b) for b in model.batches) > 2  # merged while the model was busy
    assert all(len(b) <= 8 for b in model.batches)
    assert sum(len(b) for b in model.batches) == 64


def test_a_call_larger_than_the_limit_runs_whole():
    model = SlowDouble(0.0)
    batcher = AdaptiveBatcher(model, max_batch_size=4)
    try:
        assert batcher(list(range(10))) == [2 * x for x in range(10)]
    finally:
        batcher.close()
    assert model.batches == [list(range(10))]


def test_wait_fills_a_batch_at_light_load():
    model = SlowDouble(0.0)
    batcher = AdaptiveBatcher(model, max_batch_size=8, wait_s=0.2)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher, [i]) for i in range(4)]
            assert [f.result() for f in futures] == [[0], [2], [4], [6]]
    finally:
        batcher.close()
    assert len(model.batches) < 4


def test_a_failing_model_call_fails_its_callers_and_the_batcher_goes_on():
    def flaky(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("boom")
        return items

    batcher = AdaptiveBatcher(flaky, max_batch_size=8)
    try:
        with pytest.raises(ValueError, match="boom"):
            batcher([-1])
        assert batcher([5]) == [5]
    finally:
        batcher.close()


def test_a_closed_batcher_refuses_work():
    batcher = AdaptiveBatcher(lambda items: items, max_batch_size=2)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher([1])
