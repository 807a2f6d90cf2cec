"""One artifact scored on one processed split: what the promote stage compares challenger and champion by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scipy.special import softmax

from mmfuse.evaluation.calibration import expected_calibration_error
from mmfuse.evaluation.metrics import classification_metrics
from mmfuse.evaluation.predict import model_logits
from mmfuse.models.artifact import load_model
from mmfuse.models.classifier import subset_name
from mmfuse.models.data import load_split
from mmfuse.models.determinism import deterministic
from mmfuse.models.scoring import subset_scores
from mmfuse.params.evaluate import EvaluateParams


def score_artifact(
    artifact_dir: Path,
    processed_dir: Path,
    split: str = "test",
    temperature: float | None = None,
    params: EvaluateParams = EvaluateParams(),
) -> dict[str, Any]:
    """{"accuracy": %, "subsets": {name: %}, "classes": {label: recall %}, "ece": float, "samples": n}
    of one artifact on one split.

    For the promote stage: the challenger and the champion are re-scored by the same code
    on the same data. `temperature` (the artifact's calibration.json) scales the logits
    before the ECE, as serving does; accuracies do not depend on it.
    """
    model, config = load_model(Path(artifact_dir))
    data = load_split(processed_dir, split).with_any(model.columns)
    with deterministic(params.threads):
        subsets = subset_scores(model, data, params.batch_size)["subsets"]
        logits = model_logits(model, data.tensors, params.batch_size).double().numpy()
    probs = softmax(logits / (temperature or 1.0), axis=1)
    labels = data.tensors["label"].numpy()
    per_class = classification_metrics(labels, probs.argmax(axis=1), [str(n) for n in config["labels"]])["per_class"]
    return {
        "accuracy": round(subsets[subset_name(model.spec.modalities)]["accuracy"], 4),
        "subsets": {name: round(s["accuracy"], 4) for name, s in subsets.items()},
        "classes": {name: m["recall"] for name, m in per_class.items() if m["support"]},
        "ece": round(expected_calibration_error(probs, labels, params.ece_bins), 6),
        "samples": len(labels),
    }
