"""The command line both training stages share (train_unimodal and train_fusion differ only in their part)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from mmfuse.errors import ConfigError
from mmfuse.params import load_params
from mmfuse.stages import console
from mmfuse.training import distributed

TrainRun = Callable[..., dict[str, Any]]


def _module_of(run: TrainRun) -> str:
    """The stage's module, to start again under torchrun (run as `python -m`, it is `__main__`)."""
    if run.__module__ != "__main__":
        return run.__module__
    spec = sys.modules["__main__"].__spec__
    if spec is None:
        raise ConfigError("train.world_size > 1: run the stage as a module (python -m mmfuse.stages.train_...).")
    return spec.name


def main_for(run: TrainRun, summary: str) -> Callable[..., None]:
    """A stage `main` that reads params.yaml's `train:` and runs `run` on the paths dvc.yaml passes.

    With train.world_size > 1 it starts itself again as that many ranks under torchrun and
    waits for them; started by torchrun (here, or by hand on several machines), it joins.
    """

    def main(
        processed: Path = typer.Option(..., help="The processed splits (the preprocess stage's output)."),
        models: Path = typer.Option(..., help="The models folder (baselines/, candidate/, .checkpoints/)."),
        curves: Path = typer.Option(..., help="Where the learning curves (one CSV per model, DVC plots) go."),
        metrics: Path = typer.Option(..., help="Where this part's val metrics (a DVC metrics file) go."),
        times: Path = typer.Option(..., help="Where this part's wall times go (a DVC metrics file no stage reads)."),
    ) -> None:
        params = load_params().train
        paths = {"processed": processed, "models": models, "curves": curves, "metrics": metrics, "times": times}
        if params.world_size > 1 and not distributed.launched():
            argv = [part for name, path in paths.items() for part in (f"--{name}", str(path))]
            raise typer.Exit(distributed.launch(params.world_size, ["-m", _module_of(run), *argv]))
        with distributed.process_group():
            if distributed.world_size() != params.world_size:
                raise ConfigError(
                    f"train.world_size is {params.world_size} but {distributed.world_size()} processes were "
                    "started: make them agree (torchrun --nnodes x --nproc-per-node)."
                )
            result = run(**paths, params=params)
            if not distributed.is_main():
                return
        trained = {**result["baselines"], **({"fusion model": result["candidate"]} if "candidate" in result else {})}
        for name, scores in trained.items():
            console.print(f"[green]trained[/] {name}: val accuracy {scores['val_accuracy']:.2f} %")

    main.__doc__ = summary
    return main
