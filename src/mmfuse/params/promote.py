"""Typed `promote:` section of params.yaml: the gates a challenger must pass."""

from __future__ import annotations

from pydantic import Field

from mmfuse.params.base import Section


class PromoteParams(Section):
    """Gates a challenger must pass to become champion."""

    min_accuracy: float = Field(85.0, ge=0, le=100)  # absolute gate, first promotion included (percent)
    margin: float = 0.0  # challenger accuracy must reach champion + margin (points)
    subset_tolerance: float = Field(1.0, ge=0)  # no subset may lose more than this vs the champion (points)
    max_ece: float = Field(0.05, ge=0, le=1)  # calibration error ceiling, after temperature scaling
    require_validation: bool = True  # the validate stage must have passed for this data
    from_experiments: bool = False  # a `dvc exp run` decides but never publishes a champion, unless set
