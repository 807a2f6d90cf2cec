"""Typed `evaluate:` section of params.yaml: calibration bins, timing repeats and noise levels.

Pydantic only (no torch): `mmfuse.params.Params` mounts `EvaluateParams` under `evaluate` and
is imported by every CLI command. Unknown keys are refused so a typo fails loudly instead of
silently evaluating at other noise levels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmfuse.params.base import Section


class RobustnessParams(Section):
    """Noise levels of each corruption, from mild to severe; the clean test set is always prepended.

    Every corruption is applied to the raw media of the test split and then run through the
    preprocessing functions of the artifact, as a noisy sensor would be seen in serving.
    """

    image_noise_std: list[float] = Field([0.1, 0.2, 0.3, 0.45, 0.6, 0.8], min_length=1)
    image_blur_sigma: list[float] = Field([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], min_length=1)
    image_occlusion: list[float] = Field([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], min_length=1)
    audio_snr_db: list[float] = Field([20.0, 10.0, 5.0, 0.0, -5.0, -10.0], min_length=1)
    text_typo_rate: list[float] = Field([0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)
    # Families no model here is trained or tuned on ("unseen"), reported apart from the ones above.
    image_salt_pepper: list[float] = Field([0.02, 0.05, 0.1, 0.2, 0.3, 0.5], min_length=1)
    image_inversion: list[float] = Field([0.2, 0.4, 0.6, 0.8, 0.9, 1.0], min_length=1)
    audio_clipping_db: list[float] = Field([6.0, 12.0, 18.0, 24.0, 30.0, 36.0], min_length=1)
    audio_dropout: list[float] = Field([0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)
    text_random_words: list[float] = Field([0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)
    text_script: list[float] = Field([0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)
    image_jpeg_quality: list[int] = Field([60, 40, 25, 15, 8, 3], min_length=1)
    audio_bits: list[int] = Field([8, 6, 5, 4, 3, 2], min_length=1)
    text_truncation: list[float] = Field([0.1, 0.2, 0.3, 0.5, 0.7, 0.9], min_length=1)

    @model_validator(mode="after")
    def _increasing_severity(self) -> "RobustnessParams":
        """Robustness areas assume the x axis runs from clean to worst; refuse lists that do not."""
        rising = {
            "image_noise_std": self.image_noise_std,
            "image_blur_sigma": self.image_blur_sigma,
            "image_occlusion": self.image_occlusion,
            "text_typo_rate": self.text_typo_rate,
            "image_salt_pepper": self.image_salt_pepper,
            "image_inversion": self.image_inversion,
            "audio_clipping_db": self.audio_clipping_db,
            "audio_dropout": self.audio_dropout,
            "text_random_words": self.text_random_words,
            "text_script": self.text_script,
            "text_truncation": self.text_truncation,
        }
        for name, levels in rising.items():
            if levels[0] <= 0 or any(b <= a for a, b in zip(levels, levels[1:])):
                raise ValueError(f"{name} must be positive and strictly increasing (more noise), got {levels}")
        if max(self.image_occlusion) >= 1 or max(self.audio_dropout) >= 1:
            raise ValueError("image_occlusion and audio_dropout must stay below 1")
        shares = (
            "text_typo_rate",
            "image_salt_pepper",
            "image_inversion",
            "text_random_words",
            "text_script",
            "text_truncation",
        )
        if any(max(getattr(self, name)) > 1 for name in shares):
            raise ValueError(f"{', '.join(shares)} are shares: at most 1")
        falling = {"audio_snr_db": (self.audio_snr_db, None), "image_jpeg_quality": (self.image_jpeg_quality, (1, 95))}
        falling["audio_bits"] = (self.audio_bits, (1, 16))
        for name, (levels, bounds) in falling.items():
            if any(b >= a for a, b in zip(levels, levels[1:])):
                raise ValueError(f"{name} must be strictly decreasing (more noise), got {levels}")
            if bounds is not None and not bounds[0] <= min(levels) <= max(levels) <= bounds[1]:
                raise ValueError(f"{name} must lie in {bounds[0]}-{bounds[1]}, got {levels}")
        return self


class TrustParams(Section):
    """Per-modality trust (models/trust.py): the false-alarm rate its threshold is calibrated to on
    val, and how serving treats the inputs (METHODS in models/trust.py)."""

    false_alarm: float = Field(0.01, gt=0, lt=0.5)  # share of clean val modalities that would be set aside
    method: Literal["fused", "set_aside", "weighted"] = "weighted"


class EvaluateParams(Section):
    """The evaluate stage: inference settings, calibration bins, latency sampling and noise levels."""

    seed: int = 0
    threads: int = Field(1, ge=1)
    workers: int = Field(2, ge=1)
    batch_size: int = Field(500, ge=1)
    ece_bins: int = Field(15, ge=2)
    latency_batch: int = Field(256, ge=1)
    latency_repeats: int = Field(10, ge=1)
    robustness: RobustnessParams = RobustnessParams()
    trust: TrustParams = TrustParams()
