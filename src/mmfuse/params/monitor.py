"""The `monitor:` section of params.yaml: reference, drift thresholds, schedules.

One module per section of params.yaml; `mmfuse.params.Params` mounts it under `monitor`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmfuse.params.base import Section


class MonitorParams(Section):
    """Every knob of the drift reference and the monitoring flow."""

    reference_split: Literal["train", "val", "test"] = "val"  # held out from training, so its scores are honest
    reference_batch: int = Field(64, ge=1)  # samples per model call while building it (memory only)
    min_records: int = Field(50, ge=1)  # fewer logged requests than this is "not enough data", never drift
    pca_components: int = Field(8, ge=1)  # embeddings are drift-tested on this many reference PCA projections
    stattest_threshold: float = Field(0.05, gt=0, lt=1)  # p-value under which one column counts as drifted
    drift_share: float = Field(0.3, gt=0, le=1)  # share of drifted columns at which the window counts as drifted
    min_feedback: int = Field(30, ge=1)  # labelled requests needed before live accuracy is judged
    accuracy_drop: float = Field(0.10, ge=0, le=1)  # reference accuracy minus live accuracy that counts as drift
    sensor_setaside_rate: float = Field(0.2, gt=0, le=1)  # a modality set aside more often than this: sensor failing
    modality_tolerance: float = Field(0.25, ge=0, le=1)  # allowed gap between live and reference modality shares
    max_champion_age_days: float = Field(30.0, gt=0)  # a champion trained longer ago than this is reported stale
    max_offline_gap: float = Field(10.0, ge=0)  # offline test accuracy minus live accuracy (points) that alerts
    notify_block: str = "custom-webhook/mmfuse-alerts"  # the Prefect notification block alerts go to
    training_deployment: str = "nightly"  # the training flow's deployment name: drift runs "mmfuse-training/<this>"
    training_cron: str = "0 2 * * *"  # nightly retraining
    monitoring_cron: str = "0 * * * *"  # hourly drift check
    timezone: str = "UTC"
    reports_dir: str = "reports/monitoring"
    harvest_dir: str = "data/external/feedback"  # `mmfuse harvest` writes <this>/<window>/ (list it in data.extra)
    harvest_holdout: float = Field(0.2, ge=0, lt=1)  # share of each harvest held out as test_recent, never trained on
    state_path: str = "data/monitoring/state.json"
    prefect_port: int = Field(4200, ge=1, le=65535)  # the local Prefect server `mmfuse orchestrate` starts
