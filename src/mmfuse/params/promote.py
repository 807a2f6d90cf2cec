"""Typed `promote:` section of params.yaml: the gates a challenger must pass."""

from __future__ import annotations

from pydantic import Field

from mmfuse.params.base import Section


class ShadowParams(Section):
    """Live evidence a challenger must show in shadow before the switch (ML Test Score I6: a canary).

    With `require`, a challenger that passes every offline gate is first served in shadow
    (the champion still answers); `mmfuse champion repromote` then promotes it once enough
    of the champion's requests were scored by both and enough of them got feedback.
    """

    require: bool = False  # the first champion never waits: there is nothing to shadow
    min_requests: int = Field(200, ge=1)  # requests both scored
    min_agreement: float = Field(90.0, ge=0, le=100)  # percent of them given the champion's label
    min_feedback: int = Field(50, ge=1)  # of those requests, how many must carry the true label
    min_live_accuracy: float = Field(85.0, ge=0, le=100)  # the challenger's accuracy on them (percent)
    live_tolerance: float = Field(1.0, ge=0)  # and no more than this below the champion's on the same requests


class PromoteParams(Section):
    """Gates a challenger must pass to become champion."""

    min_accuracy: float = Field(85.0, ge=0, le=100)  # absolute gate, first promotion included (percent)
    margin: float = 0.0  # challenger accuracy must reach champion + margin (points)
    subset_tolerance: float = Field(1.0, ge=0)  # no subset may lose more than this vs the champion (points)
    max_ece: float = Field(0.05, ge=0, le=1)  # calibration error ceiling, after temperature scaling
    require_validation: bool = True  # the validate stage must have passed for this data
    from_experiments: bool = False  # a `dvc exp run` decides but never publishes a champion, unless set
    baseline_margin: float = 0.0  # must reach the best dedicated model and the late-fusion reference + this (points)
    min_subset_accuracy: float = Field(30.0, ge=0, le=100)  # floor for every modality subset (percent)
    subset_floors: dict[str, float] = {}  # per-subset floors replacing min_subset_accuracy, e.g. {"image": 60}
    min_class_accuracy: float = Field(80.0, ge=0, le=100)  # floor for each class's recall (percent)
    min_speaker_accuracy: float = Field(80.0, ge=0, le=100)  # floor per speaker, where the data names speakers
    shadow: ShadowParams = ShadowParams()  # canary: live evidence before the switch
    # With a recent-traffic test set (test_recent: harvested traffic held out), the challenger is
    # judged on what matters now: it must gain this much there on the champion (points) ...
    recent_margin: float = 2.0
    # ... and may lose at most this much on the original test split (points), instead of beating it.
    original_tolerance: float = Field(1.0, ge=0)
    min_recent: int = Field(30, ge=1)  # fewer recent-traffic samples than this: judged on the original test alone
