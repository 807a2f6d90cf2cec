"""Stage 4a, train_unimodal: the image, audio and text baselines, whose encoders the fusion part adopts.

Reads only the train.* knobs a unimodal model depends on (`unimodal_params`), so a fusion
experiment (`dvc exp run -S train.fusion=gated`) reuses these models untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mmfuse.params import load_params
from mmfuse.params.train import TrainParams
from mmfuse.stages import console, stage_cli
from mmfuse.training.jobs import train_part


def run(*, processed: Path, models: Path, curves: Path, metrics: Path, params: TrainParams) -> dict[str, Any]:
    """Train into models/baselines/{image,audio,text}; resumes after a crash from models/.checkpoints."""
    return train_part("unimodal", processed=processed, models=models, params=params, curves=curves, metrics=metrics)


def main(
    processed: Path = typer.Option(..., help="The processed splits (the preprocess stage's output)."),
    models: Path = typer.Option(..., help="The models folder: baselines/, candidate/ and .checkpoints/ live in it."),
    curves: Path = typer.Option(..., help="Where the learning curves (one CSV per model, DVC plots) go."),
    metrics: Path = typer.Option(..., help="Where this part's metrics (a DVC metrics file) go."),
) -> None:
    """Stage 4 (unimodal part): see the module docstring."""
    summary = run(processed=processed, models=models, curves=curves, metrics=metrics, params=load_params().train)
    for name, result in {
        **summary["baselines"],
        **({"fusion model": summary["candidate"]} if "candidate" in summary else {}),
    }.items():
        console.print(f"[green]trained[/] {name}: val accuracy {result['val_accuracy']:.2f} %")


if __name__ == "__main__":
    stage_cli(main)
