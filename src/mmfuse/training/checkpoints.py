"""Checkpoints: one per model, rewritten atomically after every epoch, resumed only by the run that wrote it.

A checkpoint exists to resume an interrupted run, nothing else: `train_part` removes its
part's checkpoints once every model of the part is written, so `dvc repro -f` retrains
instead of replaying a finished run.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from mmfuse.io import atomic_file
from mmfuse.models.classifier import ModelSpec
from mmfuse.models.data import split_files
from mmfuse.params.train import TrainParams

CHECKPOINT = "checkpoint.pt"


def fingerprint(spec: ModelSpec, params: TrainParams, processed_dir: Path, sources: list[Path], code: str) -> str:
    """What a checkpoint was made from (code, params, data, adopted encoders): another run's is never resumed.

    `code` is the `code_digest` of the training jobs' import closure (the loop, the losses,
    the models, the params): the same closure dvc.yaml's deps cover.
    """
    digest = hashlib.sha256()
    digest.update(code.encode())
    digest.update(json.dumps([spec.model_dump(mode="json"), params.model_dump(mode="json")], sort_keys=True).encode())
    for path in [*split_files(processed_dir, "train"), *split_files(processed_dir, "val"), *sources]:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_file(path, "wb") as handle:
        handle.write(buffer.getvalue())


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this run; unreadable or foreign ones are ignored."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file is not worth a crash: training restarts from scratch
        return None
    return state if state.get("fingerprint") == fingerprint else None
