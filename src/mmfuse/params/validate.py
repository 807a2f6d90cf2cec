"""Typed `validate:` section of params.yaml: data-quality checks beyond the input contract.

The input contract itself (image sides, audio rates and durations, text length, payload
sizes) is `preprocess.image`, `preprocess.audio` and `preprocess.text`: the validate stage,
the preprocess stage and the service all read those same numbers (the service from the
model artifact, which carries them), so a file one of them accepts the others accept too.
"""

from __future__ import annotations

from pydantic import Field

from mmfuse.params.base import Section


class ValidateParams(Section):
    """Ranges the media must fall in; `critical` failures stop the pipeline."""

    audio_max_clipping_share: float = Field(0.01, ge=0, le=1)
    audio_max_silence_share: float = Field(0.95, ge=0, le=1)
    audio_silence_dbfs: float = -50.0
    max_failing_examples: int = Field(10, ge=1)
