"""Every preprocessing tunable, validated: `preprocess:` in params.yaml.

The same object configures the batch stage and the service (it travels in meta.json
and in the model artifact), so a model is always fed exactly what it was trained on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmfuse.params.base import Section

DenoiseMethod = Literal["none", "median", "gaussian", "bilateral", "nlmeans"]


class ImageParams(Section):
    """Decode limits, output size and the denoiser (chosen by benchmarks/denoise_choice.py)."""

    size: int = Field(28, ge=4, le=512)
    min_side: int = Field(8, ge=1)
    max_side: int = Field(4096, ge=1)
    max_bytes: int = Field(20_000_000, ge=1)
    denoise: DenoiseMethod = "nlmeans"
    median_size: int = Field(3, ge=1)
    gaussian_sigma: float = Field(1.0, gt=0)
    bilateral_radius: int = Field(2, ge=1)
    bilateral_sigma_space: float = Field(1.0, gt=0)
    bilateral_sigma_range: float = Field(0.3, gt=0)
    nlmeans_patch: int = Field(3, ge=1)
    nlmeans_search: int = Field(5, ge=3)
    nlmeans_h: float = Field(0.15, gt=0)

    @model_validator(mode="after")
    def _sides(self) -> "ImageParams":
        if self.min_side > self.max_side:
            raise ValueError("min_side must be <= max_side")
        if max(self.bilateral_radius, self.nlmeans_search // 2, self.median_size // 2) >= self.size:
            raise ValueError("denoiser windows must be smaller than the image size")
        return self


class AudioParams(Section):
    """Decode limits, resampling, trimming, spectral gating and log-mel geometry.

    Frame sizes are in samples at `sample_rate` (the rate every clip is resampled to).
    """

    sample_rate: int = Field(8000, ge=4000, le=48000)
    min_input_rate: int = Field(8000, ge=1)
    max_input_rate: int = Field(48000, ge=1)
    min_seconds: float = Field(0.05, ge=0)
    max_seconds: float = Field(10.0, gt=0)
    max_bytes: int = Field(50_000_000, ge=1)
    trim: bool = True
    trim_frame: int = Field(80, ge=1)
    trim_top_db: float = Field(40.0, gt=0)
    trim_pad: int = Field(0, ge=0)
    denoise: bool = False
    gate_noise_quantile: float = Field(0.25, gt=0, le=1)
    gate_n_std: float = Field(1.5, ge=0)
    gate_prop_decrease: float = Field(1.0, ge=0, le=1)
    gate_smooth_bins: int = Field(3, ge=1)
    gate_smooth_frames: int = Field(5, ge=1)
    n_fft: int = Field(256, ge=16)
    hop_length: int = Field(80, ge=1)
    n_mels: int = Field(40, ge=1)
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = Field(None, gt=0)
    n_frames: int = Field(100, ge=1)
    log_floor: float = Field(1e-10, gt=0)

    @model_validator(mode="after")
    def _geometry(self) -> "AudioParams":
        if self.min_input_rate > self.max_input_rate:
            raise ValueError("min_input_rate must be <= max_input_rate")
        if self.min_seconds >= self.max_seconds:
            raise ValueError("min_seconds must be < max_seconds")
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must be <= n_fft")
        top = self.fmax if self.fmax is not None else self.sample_rate / 2
        if not self.fmin < top <= self.sample_rate / 2:
            raise ValueError("need fmin < fmax <= sample_rate / 2")
        return self


class TextParams(Section):
    """Cleanup and character-level tokenisation; the vocabulary is fitted on train only."""

    max_chars: int = Field(1000, ge=1)
    strip_accents: bool = True
    max_len: int = Field(24, ge=1)
    min_freq: int = Field(1, ge=1)


class DedupParams(Section):
    """Near-duplicate measure: correlation distance between grid x grid thumbnails.

    Thresholds were measured on avdigits (benchmarks/results/denoise_choice.json, "dedup"):
    they catch re-encodings, gain/contrast changes and slight noise, while distinct
    MNIST digits and FSDD clips stay well above them.
    """

    grid: int = Field(8, ge=2, le=64)
    image_max_distance: float = Field(1e-4, ge=0, le=2)
    audio_max_distance: float = Field(3e-3, ge=0, le=2)
    text_leak_min_chars: int = Field(20, ge=1)


class PreprocessParams(Section):
    """The `preprocess` stage and the service's input pipeline."""

    image: ImageParams = ImageParams()
    audio: AudioParams = AudioParams()
    text: TextParams = TextParams()
    dedup: DedupParams = DedupParams()
    workers: int = Field(2, ge=1)  # where the work runs, never what it produces: see EXECUTION
    chunk_size: int = Field(250, ge=1)


EXECUTION: frozenset[str] = frozenset({"workers", "chunk_size"})
"""PreprocessParams fields that choose how the preprocess stage runs, not its output: left out of
meta.json (and so of every artifact), so processed bytes are the same for any worker count."""
