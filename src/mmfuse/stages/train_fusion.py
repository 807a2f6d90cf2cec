"""Stage 4b, train_fusion: the three pair baselines and the fusion model (staged: on the unimodal encoders, frozen).

Fails with a clear message when the unimodal models are missing (run train_unimodal first).
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
    """Train into models/baselines/<pair> and models/candidate; resumes after a crash from models/.checkpoints."""
    return train_part(
        "fusion", processed=processed, models=models, params=params, curves=curves, metrics=metrics, times=times
    )


main = main_for(run, "Stage 4b: the pair baselines and the fusion model (on the unimodal encoders).")

if __name__ == "__main__":
    stage_cli(main)
