"""The command line both training stages share (train_unimodal and train_fusion differ only in their part)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from mmfuse.params import load_params
from mmfuse.stages import console

TrainRun = Callable[..., dict[str, Any]]


def main_for(run: TrainRun, summary: str) -> Callable[..., None]:
    """A stage `main` that reads params.yaml's `train:` and runs `run` on the paths dvc.yaml passes."""

    def main(
        processed: Path = typer.Option(..., help="The processed splits (the preprocess stage's output)."),
        models: Path = typer.Option(..., help="The models folder (baselines/, candidate/, .checkpoints/)."),
        curves: Path = typer.Option(..., help="Where the learning curves (one CSV per model, DVC plots) go."),
        metrics: Path = typer.Option(..., help="Where this part's val metrics (a DVC metrics file) go."),
        times: Path = typer.Option(..., help="Where this part's wall times go (a DVC metrics file no stage reads)."),
    ) -> None:
        result = run(
            processed=processed, models=models, curves=curves, metrics=metrics, times=times, params=load_params().train
        )
        trained = {**result["baselines"], **({"fusion model": result["candidate"]} if "candidate" in result else {})}
        for name, scores in trained.items():
            console.print(f"[green]trained[/] {name}: val accuracy {scores['val_accuracy']:.2f} %")

    main.__doc__ = summary
    return main
