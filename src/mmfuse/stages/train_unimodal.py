"""Stage 4a, train_unimodal: the image, audio and text baselines, whose encoders the fusion part adopts.

Reads only the train.* knobs a unimodal model depends on (`unimodal_params`), so a fusion
experiment (`dvc exp run -S train.fusion=gated`) reuses these models untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfuse.params.train import TrainParams
from mmfuse.stages import stage_cli
from mmfuse.stages._train import main_for
from mmfuse.training.jobs import train_part


def run(
    *, processed: Path, models: Path, curves: Path, metrics: Path, times: Path, params: TrainParams
) -> dict[str, Any]:
    """Train into models/baselines/{image,audio,text}; resumes after a crash from models/.checkpoints."""
    return train_part(
        "unimodal", processed=processed, models=models, params=params, curves=curves, metrics=metrics, times=times
    )


main = main_for(run, "Stage 4a: the image, audio and text baselines.")

if __name__ == "__main__":
    stage_cli(main)
