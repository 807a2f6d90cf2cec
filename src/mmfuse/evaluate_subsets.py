"""The any-subset check: the one fusion model with modalities masked out vs each dedicated model.

A single model that accepts any subset is only worth serving if, for every subset,
it is about as good as a model trained for that subset alone; this is what tells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfuse.errors import MMFuseError
from mmfuse.models.artifact import load_model
from mmfuse.models.classifier import nonempty_subsets, subset_name
from mmfuse.models.data import load_split
from mmfuse.models.params import MODALITIES
from mmfuse.models.scoring import subset_scores

EVAL_BATCH = 1000


def evaluate_subsets(processed_dir: Path, models_dir: Path, split: str = "test") -> dict[str, Any]:
    """Accuracy (percent) of models_dir/candidate on all 7 subsets vs models_dir/baselines/<subset>.

    Returns fused_accuracy (all modalities), fusion_gain_points (fused minus the best
    dedicated unimodal model), worst_subset_gap_points (max over the 6 proper subsets of
    dedicated minus fused; <= 0 means the fusion model is never worse) and, per subset,
    fused, dedicated and gap_points. The all-modality "dedicated" model is the candidate itself.
    """
    models_dir = Path(models_dir)
    data = load_split(processed_dir, split)
    fused_model, config = load_model(models_dir / "candidate")
    if tuple(fused_model.spec.modalities) != MODALITIES:
        raise MMFuseError(f"{models_dir / 'candidate'} is not a model over all of {MODALITIES}; rerun the train stage.")
    fused = subset_scores(fused_model, data, EVAL_BATCH)["subsets"]
    per_subset: dict[str, dict[str, float]] = {}
    for subset in nonempty_subsets(MODALITIES):
        name = subset_name(subset)
        if len(subset) == len(MODALITIES):
            dedicated = fused[name]["accuracy"]
        else:
            model, _ = load_model(models_dir / "baselines" / name)
            dedicated = subset_scores(model, data, EVAL_BATCH)["subsets"][name]["accuracy"]
        per_subset[name] = {
            "fused": round(fused[name]["accuracy"], 4),
            "dedicated": round(dedicated, 4),
            "gap_points": round(dedicated - fused[name]["accuracy"], 4),
        }
    full = per_subset[subset_name(MODALITIES)]["fused"]
    proper = [v["gap_points"] for k, v in per_subset.items() if k != subset_name(MODALITIES)]
    return {
        "split": split,
        "fusion": config["model"]["fusion"],
        "fused_accuracy": full,
        "fusion_gain_points": round(full - max(per_subset[m]["dedicated"] for m in MODALITIES), 4),
        "worst_subset_gap_points": max(proper),
        "subsets": per_subset,
    }
