"""Typed access to params.yaml: a typo or an out-of-range value fails loudly, naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from mmfuse.params_base import Section

from mmfuse.errors import ConfigError
from mmfuse.evaluation.params import EvaluateParams
from mmfuse.models.params import TrainParams
from mmfuse.monitoring.params import MonitorParams
from mmfuse.preprocess.params import PreprocessParams
from mmfuse.serving.params import ServeParams

PARAMS_FILE = Path("params.yaml")


class TextNoise(Section):
    """The seeded noisy-transcript model of avdigits (see README, "Text")."""

    p_correct: float = Field(0.50, ge=0, le=1)
    p_wrong: float = Field(0.15, ge=0, le=1)
    typo_rate: float = Field(0.10, ge=0, le=1)
    languages: list[Literal["en", "fr", "de", "es"]] = ["en", "fr", "de", "es"]
    uninformative: list[str] = ["", "n/a", "unclear", "noise", "??"]

    @model_validator(mode="after")
    def _probabilities(self) -> "TextNoise":
        if self.p_correct + self.p_wrong > 1:
            raise ValueError("p_correct + p_wrong must be <= 1")
        return self


class Degradation(Section):
    """Per-preset degradation; `hard` is frozen for comparability across versions."""

    image_pca_energy: float | None = Field(None, gt=0, le=1)
    audio_snr_db: float | None = None


class DataParams(Section):
    dataset: str = "avdigits"
    preset: Literal["clean", "hard"] = "hard"
    split: Literal["standard", "speaker"] = "standard"
    holdout_speaker: str = "theo"
    seed: int = 1234
    val_fraction: float = Field(0.10, gt=0, lt=1)
    test_fraction: float = Field(0.20, gt=0, lt=1)
    text_noise: TextNoise = TextNoise()
    presets: dict[str, Degradation] = {
        "clean": Degradation(),
        "hard": Degradation(image_pca_energy=0.25, audio_snr_db=-9.0),
    }

    @model_validator(mode="after")
    def _preset_known(self) -> "DataParams":
        if self.preset not in self.presets:
            raise ValueError(f"preset {self.preset!r} is not defined under data.presets")
        return self

    @property
    def degradation(self) -> Degradation:
        return self.presets[self.preset]


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


class PromoteParams(Section):
    """Gates a challenger must pass to become champion."""

    min_accuracy: float = Field(85.0, ge=0, le=100)  # absolute gate, first promotion included (percent)
    margin: float = 0.0  # challenger accuracy must reach champion + margin (points)
    subset_tolerance: float = Field(1.0, ge=0)  # no subset may lose more than this vs the champion (points)
    max_ece: float = Field(0.05, ge=0, le=1)  # calibration error ceiling, after temperature scaling
    require_validation: bool = True  # the validate stage must have passed for this data


class Params(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # later stages add their sections

    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    preprocess: PreprocessParams = PreprocessParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    serve: ServeParams = ServeParams()
    monitor: MonitorParams = MonitorParams()


OMEGACONF_MISSING = "???"


def _find_value(node: Any, value: str, where: str = "") -> str | None:
    """Dotted key (list items as [i]) of the first occurrence of `value` in a params tree."""
    if node == value:
        return where
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found = _find_value(child, value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read params.yaml; an unknown key or a bad value raises ConfigError naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run mmfuse from the project root (where params.yaml is).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data:, validate:, ...).")
    missing_marker = _find_value(raw, OMEGACONF_MISSING)
    if missing_marker is not None:
        raise ConfigError(
            f"{path}: {missing_marker} is {OMEGACONF_MISSING!r}, which `dvc exp run -S` (OmegaConf) reads as a "
            "missing value and refuses; use another string."
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
