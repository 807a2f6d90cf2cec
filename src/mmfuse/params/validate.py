"""Typed `validate:` section of params.yaml: what the validate stage's suites do beyond the input contract."""

from __future__ import annotations

from pydantic import Field

from mmfuse.params.base import Section


class ValidateParams(Section):
    """Ranges the media must fall in; `critical` failures stop the pipeline."""

    image_min_side: int = Field(8, ge=1)
    image_max_side: int = Field(4096, ge=1)
    audio_sample_rates: list[int] = [8000, 16000, 22050, 44100, 48000]
    audio_min_duration_s: float = Field(0.05, ge=0)
    audio_max_duration_s: float = Field(10.0, gt=0)
    audio_max_clipping_share: float = Field(0.01, ge=0, le=1)
    audio_max_silence_share: float = Field(0.95, ge=0, le=1)
    audio_silence_dbfs: float = -50.0
    text_max_length: int = Field(500, ge=1)
    max_failing_examples: int = Field(10, ge=1)
