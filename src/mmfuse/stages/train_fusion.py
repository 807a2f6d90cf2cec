"""Stage 4b, train_fusion: the three pair baselines and the fusion model (staged: on the unimodal encoders, frozen).

Fails with a clear message when the unimodal models are missing (run train_unimodal first).
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
    """Train into models/baselines/<pair> and models/candidate; resumes after a crash from models/.checkpoints."""
    return train_part("fusion", processed=processed, models=models, params=params, curves=curves, metrics=metrics)


def main(
    processed: Path = typer.Option(..., help="The processed splits (the preprocess stage's output)."),
    models: Path = typer.Option(..., help="The models folder: baselines/, candidate/ and .checkpoints/ live in it."),
    curves: Path = typer.Option(..., help="Where the learning curves (one CSV per model, DVC plots) go."),
    metrics: Path = typer.Option(..., help="Where this part's metrics (a DVC metrics file) go."),
) -> None:
    """Stage 4 (fusion part): see the module docstring."""
    summary = run(processed=processed, models=models, curves=curves, metrics=metrics, params=load_params().train)
    for name, result in {
        **summary["baselines"],
        **({"fusion model": summary["candidate"]} if "candidate" in summary else {}),
    }.items():
        console.print(f"[green]trained[/] {name}: val accuracy {result['val_accuracy']:.2f} %")


if __name__ == "__main__":
    stage_cli(main)
