"""Inference-log rows as the service writes them, for tests that need a log."""

from __future__ import annotations

import time

import numpy as np
import torch

from mmfuse.inference.log import LogRecord, input_statistics


def record(
    request_id: str, ts: float | None = None, prediction: str = "one", version: str = "mmfuse:test"
) -> LogRecord:
    """A prediction from an image and a text (no audio), as the service logs it."""
    return LogRecord(
        request_id=request_id,
        ts=time.time() if ts is None else ts,
        endpoint="predict",
        model_version=version,
        present=(True, False, True),
        stats=input_statistics(
            {
                "image": torch.full((1, 2, 2), 0.5),
                "audio": torch.zeros(2, 3),
                "text": torch.tensor([4, 5, 1, 0]),
                "mask": torch.tensor([True, False, True]),
            },
            image_bytes=100,
            audio_bytes=None,
            text_chars=3,
        ),
        embedding=np.arange(6, dtype=np.float32),
        prediction=prediction,
        confidence=0.75,
        probabilities={"zero": 0.25, "one": 0.75},
        latency_ms=1.5,
    )
