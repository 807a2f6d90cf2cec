"""Typed `train:` section of params.yaml: architecture, optimisation and imbalance counter-measures.

`mmfuse.params.Params` mounts `TrainParams` under `train`. Every section forbids unknown keys, so a typo
in params.yaml fails loudly instead of silently training a different model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmfuse.params.base import Section

FUSIONS: tuple[str, ...] = ("concat", "late", "gated", "lmf")
Fusion = Literal["concat", "late", "gated", "lmf"]


class EncoderParams(Section):
    """One convolutional encoder: a block (stride-2 conv, batch-norm, ReLU) per width."""

    channels: list[int] = Field([32, 64], min_length=1)
    kernel_size: int = Field(3, ge=1)

    @field_validator("channels")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(c < 1 for c in value):
            raise ValueError("every channel width must be >= 1")
        return value

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd so 'same' padding keeps the input size")
        return value


class ArchParams(Section):
    """Architecture: everything needed to rebuild the network; copied into each artifact's config.json."""

    embed_dim: int = Field(64, ge=1)
    token_dim: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    fusion_hidden: int = Field(128, ge=1)
    lmf_rank: int = Field(8, ge=1)
    image: EncoderParams = EncoderParams(channels=[16, 32])
    audio: EncoderParams = EncoderParams(channels=[64, 64, 64], kernel_size=5)
    text: EncoderParams = EncoderParams(channels=[64])


class AugmentParams(Section):
    """Training-time audio augmentation, in log-mel frames and mel bins (0 turns one off)."""

    time_shift: int = Field(10, ge=0)
    time_mask: int = Field(15, ge=0)
    freq_mask: int = Field(6, ge=0)


class TrainParams(Section):
    """The train stage: which fusion head, how to optimise, and how to keep modalities balanced."""

    fusion: Fusion = "late"
    arch: ArchParams = ArchParams()
    seed: int = 0
    threads: int = Field(2, ge=1)
    world_size: int = Field(1, ge=1)  # processes training data-parallel (DDP under torchrun); results depend on it
    epochs: int = Field(20, ge=1)
    patience: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=2)
    eval_batch_size: int = Field(1000, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_fraction: float = Field(0.2, gt=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    modality_dropout: float = Field(0.3, ge=0, lt=1)
    aux_weight: float = Field(1.0, ge=0)
    pretrained_encoders: bool = True
    head_epochs: int = Field(8, ge=1)
    augment: AugmentParams = AugmentParams()

    @model_validator(mode="after")
    def _batches_split_over_ranks(self) -> "TrainParams":
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {self.batch_size} does not split over world_size {self.world_size} processes: "
                "make it a multiple of world_size"
            )
        return self
