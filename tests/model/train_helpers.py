"""Both training stages in a row, laid out as dvc.yaml lays them out (curves/<part>/, metrics/train_<part>.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfuse.params.train import TrainParams
from mmfuse.training.jobs import PARTS, train_part


def run_training(
    processed: Path, models: Path, params: TrainParams, curves: Path, metrics: Path, parts: tuple[str, ...] = PARTS
) -> dict[str, Any]:
    """Train `parts` in order; returns {"baselines": {...}, "candidate": ...} over the parts run."""
    merged: dict[str, Any] = {"baselines": {}}
    for part in parts:
        summary = train_part(
            part,
            processed=processed,
            models=models,
            params=params,
            curves=Path(curves) / part,
            metrics=Path(metrics) / f"train_{part}.json",
        )
        merged["baselines"].update(summary["baselines"])
        merged.update({"candidate": summary["candidate"]} if "candidate" in summary else {})
    return merged
