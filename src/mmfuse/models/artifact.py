"""The model artifact of the DESIGN contract: model.safetensors + config.json + metrics.json, no pickle.

config.json carries the architecture (enough to rebuild the network), the label list and
the whole preprocessing meta, so serving reproduces training's preprocessing from the
artifact alone. Files are written key-sorted and without timestamps, so the same params
and data give byte-identical files and DVC sees no change on a rerun.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmfuse.errors import MMFuseError
from mmfuse.io import atomic_dir, write_json
from mmfuse.models.classifier import ModelSpec, MultimodalClassifier

FORMAT = "mmfuse-model/1"
WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"
CALIBRATION = "calibration.json"  # the temperature, beside the weights once the model is in the store
REFERENCE_FILE = "reference.parquet"  # the drift reference, beside the weights once the model is in the store


def save_artifact(out_dir: Path, model: MultimodalClassifier, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the artifact folder atomically: a crash never leaves a half-written model behind."""
    weights = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    payload = {"format": FORMAT, "model": model.spec.model_dump(mode="json"), **config}
    with atomic_dir(out_dir) as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        write_json(tmp / CONFIG, payload)
        write_json(tmp / METRICS, metrics)


def load_model(artifact_dir: Path) -> tuple[MultimodalClassifier, dict[str, Any]]:
    """Rebuild the network from config.json, load the safetensors weights (strict), return it in eval mode."""
    artifact_dir = Path(artifact_dir)
    config_path, weights_path = artifact_dir / CONFIG, artifact_dir / WEIGHTS
    if not config_path.exists() or not weights_path.exists():
        raise MMFuseError(
            f"{artifact_dir} is not a model artifact (needs {WEIGHTS} and {CONFIG}); run the train stage."
        )
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise MMFuseError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}; retrain the model.")
    try:
        model = MultimodalClassifier(ModelSpec.model_validate(config["model"]))
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except (ValidationError, SafetensorError, RuntimeError, KeyError) as exc:
        raise MMFuseError(f"{artifact_dir}: the weights do not match config.json ({exc}); retrain the model.") from exc
    return model.eval(), config


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_temperature(artifact_dir: Path, calibration: Path | None = None) -> float:
    """The calibration temperature serving divides the logits by: the one stored beside the weights,
    else `calibration` (the evaluate stage's output, for a challenger not yet in the store), else 1.
    """
    own = Path(artifact_dir) / CALIBRATION
    path = (
        own if own.exists() else Path(calibration) if calibration is not None and Path(calibration).exists() else None
    )
    if path is None:
        return 1.0
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MMFuseError(f'{path}: expected {{"temperature": <positive number>}} ({exc}).') from exc
    if not math.isfinite(temperature) or temperature <= 0:
        raise MMFuseError(f"{path}: temperature must be a positive finite number, got {temperature}.")
    return temperature
