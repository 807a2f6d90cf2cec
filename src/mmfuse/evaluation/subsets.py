"""The any-subset check: the one fusion model with modalities masked out vs each dedicated model.

A single model that accepts any subset is only worth serving if, for every subset,
it is about as good as a model trained for that subset alone; this is what tells.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmfuse.errors import MMFuseError
from mmfuse.evaluation.predict import FUSED
from mmfuse.modality import MODALITIES
from mmfuse.models.artifact import load_model
from mmfuse.models.classifier import MultimodalClassifier, nonempty_subsets, subset_name
from mmfuse.models.data import Split
from mmfuse.models.scoring import subset_scores

EVAL_BATCH = 1000


def load_models(models_dir: Path) -> tuple[dict[str, MultimodalClassifier], dict[str, Any]]:
    """{FUSED: candidate, <subset>: baselines/<subset>, ...} of `models_dir` in subset order, and the candidate's config."""  # noqa: E501
    models_dir = Path(models_dir)
    fused, config = load_model(models_dir / "candidate")
    if tuple(fused.spec.modalities) != MODALITIES:
        raise MMFuseError(f"{models_dir / 'candidate'} is not a model over all of {MODALITIES}; rerun the train stage.")
    models = {FUSED: fused}
    for subset in nonempty_subsets(MODALITIES)[:-1]:
        models[subset_name(subset)] = load_model(models_dir / "baselines" / subset_name(subset))[0]
    return models, config


def evaluate_subsets(
    models: Mapping[str, MultimodalClassifier], data: Split, batch_size: int = EVAL_BATCH
) -> dict[str, Any]:
    """Accuracy (percent) of models[FUSED] on all 7 subsets vs the dedicated model of each (`load_models`).

    Returns fused_accuracy (all modalities), fusion_gain_points (fused minus the best
    dedicated unimodal model), worst_subset_gap_points (max over the 6 proper subsets of
    dedicated minus fused; <= 0 means the fusion model is never worse) and, per subset,
    fused, dedicated and gap_points. The all-modality "dedicated" model is the fusion model itself.
    """
    fused = subset_scores(models[FUSED], data, batch_size)["subsets"]
    per_subset: dict[str, dict[str, float]] = {}
    for subset in nonempty_subsets(MODALITIES):
        name = subset_name(subset)
        if len(subset) == len(MODALITIES):
            dedicated = fused[name]["accuracy"]
        else:
            dedicated = subset_scores(models[name], data, batch_size)["subsets"][name]["accuracy"]
        per_subset[name] = {
            "fused": round(fused[name]["accuracy"], 4),
            "dedicated": round(dedicated, 4),
            "gap_points": round(dedicated - fused[name]["accuracy"], 4),
        }
    full = per_subset[subset_name(MODALITIES)]["fused"]
    proper = [v["gap_points"] for k, v in per_subset.items() if k != subset_name(MODALITIES)]
    return {
        "fusion": models[FUSED].spec.fusion,
        "fused_accuracy": full,
        "fusion_gain_points": round(full - max(per_subset[m]["dedicated"] for m in MODALITIES), 4),
        "worst_subset_gap_points": max(proper),
        "subsets": per_subset,
    }
