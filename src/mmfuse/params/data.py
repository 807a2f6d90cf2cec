"""Typed `data:` section of params.yaml: which dataset, its split, and the avdigits presets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmfuse.params.base import Section


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
    # Manifests of extra datasets ingest merges into `dataset` (for example harvested traffic,
    # data/external/feedback/<window>/manifest.csv); their rows may be train or test_recent only.
    extra: list[str] = []
    preset: Literal["clean", "hard"] = "hard"
    split: Literal["standard", "speaker"] = "standard"
    holdout_speaker: str = "theo"
    seed: int = 1234
    val_fraction: float = Field(0.10, gt=0, lt=1)
    test_fraction: float = Field(0.20, gt=0, lt=1)
    text_noise: TextNoise = TextNoise()
    # avdigits with a degrading preset: also ingest every sample's undegraded twin, so the
    # model learns clean inputs too (train, val) and is tested on them apart (test_clean)
    clean_twin: bool = True
    # avdigits scaled to this many samples (before twins) by showing its 10,000 images again
    # with other clips, text and noise (the scale benchmark's 10k-100k); null: each image once
    samples: int | None = Field(None, ge=1)
    # ingested media are packed into tar shards of this many files (see mmfuse.data.media)
    shard_files: int = Field(2000, ge=1)
    presets: dict[str, Degradation] = {
        "clean": Degradation(),
        "hard": Degradation(image_pca_energy=0.25, audio_snr_db=-9.0),
    }

    @model_validator(mode="after")
    def _extra_manifests(self) -> "DataParams":
        bad = [path for path in self.extra if not path.endswith((".csv", ".parquet"))]
        if bad:
            raise ValueError(f"data.extra must list .csv or .parquet manifests, got {bad}")
        if len(set(self.extra)) != len(self.extra):
            raise ValueError("data.extra lists a manifest twice")
        return self

    @model_validator(mode="after")
    def _preset_known(self) -> "DataParams":
        if self.preset not in self.presets:
            raise ValueError(f"preset {self.preset!r} is not defined under data.presets")
        return self

    @property
    def degradation(self) -> Degradation:
        return self.presets[self.preset]
