"""Typed `serve:` section of params.yaml: concurrency, adaptive batching, request limits, log retention.

The per-modality limits (image/audio bytes, audio seconds, text characters) are not here:
they belong to preprocessing and travel inside the model artifact, so the service refuses
exactly what the training pipeline would refuse. These are the limits of the HTTP layer.
"""

from __future__ import annotations

from pydantic import Field

from mmfuse.params.base import Section


class ServeParams(Section):
    """How `mmfuse serve` runs the champion; read once when the service starts."""

    workers: int = Field(1, ge=1)  # server processes; each loads the model and runs its own batcher
    threads: int = Field(8, ge=1)  # requests one worker handles at once (preprocessing runs on these threads)
    torch_threads: int = Field(1, ge=1)  # intra-op threads of the model call
    max_batch_size: int = Field(32, ge=1)  # samples merged into one model call
    batch_wait_ms: float = Field(0.0, ge=0, le=1000)  # extra wait for more samples once a batch is open
    max_batch_samples: int = Field(64, ge=1)  # samples one /predict_batch request may carry
    max_request_bytes: int = Field(80_000_000, ge=1024)  # whole request body; larger ones get 413
    max_field_bytes: int = Field(65_536, ge=1024)  # one non-file multipart field (the text)
    timeout_s: int = Field(30, ge=1)  # a request still running after this gets 504
    log_max_rows: int = Field(1_000_000, ge=1)  # inference log retention: the oldest rows go first
    log_max_age_days: float = Field(90.0, gt=0)  # ... and rows older than this go too (raw inputs are never kept)
    log_queue_size: int = Field(10_000, ge=1)  # records waiting for the log writer; beyond it they are dropped
    capture: bool = False  # keep every request's raw inputs (a request may also opt in: X-MMFuse-Capture: true)
    capture_max_mb: float = Field(1000.0, ge=0)  # captured media beside the log, at most (per worker, roughly)
    reload_interval_s: float = Field(10.0, ge=0)  # how often a worker looks for a new champion/challenger; 0: never
    shadow: bool = True  # score the store's challenger (if any) beside the champion, off the request path
    shadow_queue_size: int = Field(1000, ge=1)  # requests waiting for the shadow scorer; beyond it they are skipped
    access_log: bool = False  # BentoML's access log line per request (the inference log records every request)
