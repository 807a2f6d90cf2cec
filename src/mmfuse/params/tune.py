"""Typed `tune:` section of params.yaml: the hyperparameter search `mmfuse tune` queues.

No stage reads it (the search runs the pipeline as DVC experiments), so changing the
search changes no stage's hash.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from mmfuse.params.base import Section


class TuneParams(Section):
    """A random search over a grid, then a seed spread of the best configurations."""

    space: dict[str, list[Any]] = {
        "train.lr": [0.001, 0.003, 0.01],
        "train.weight_decay": [0.0, 0.0001, 0.001],
        "train.arch.embed_dim": [32, 64],
        "train.epochs": [10, 20],
    }
    budget: int = Field(6, ge=1)  # experiments of the search itself (configurations drawn from the grid)
    top: int = Field(2, ge=1)  # the best configurations rerun with other seeds
    seeds: int = Field(3, ge=1)  # runs per top configuration, its own included (train.seed, +1, +2, ...)
    workers: int = Field(1, ge=1)  # `dvc queue start -j`: experiments run at once
    metric: str = "fused_accuracy"  # a key of metrics/evaluate.json; higher is better
    sample_seed: int = 0  # which configurations the search draws
    timeout_minutes: float = Field(720.0, gt=0)  # the whole search stops waiting after this
    report: str = "reports/tuning/summary.json"

    @field_validator("space")
    @classmethod
    def _non_empty(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in space.items() if not values]
        if not space or empty:
            raise ValueError(f"tune.space needs at least one key, each with values; empty: {empty or 'the space'}")
        return space
