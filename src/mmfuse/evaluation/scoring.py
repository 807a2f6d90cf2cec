"""One artifact scored on one split: what the promote stage compares challenger and champion by.

Each model sees the split as it would be served: through its own preprocessing. The processed
tensors are the challenger's (this run's normalisation statistics and vocabulary); a champion
trained on other data has its own, so its inputs are rebuilt from the raw media of the same
samples with its state. Scoring a champion on tensors made with another state is wrong
(statistics shift) and can fail outright (a harvested text brings a character the champion's
vocabulary has no id for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from scipy.special import softmax

from mmfuse.data.media import open_media
from mmfuse.errors import MMFuseError
from mmfuse.evaluation.calibration import expected_calibration_error
from mmfuse.evaluation.corruption import split_rows
from mmfuse.evaluation.metrics import classification_metrics
from mmfuse.evaluation.predict import model_logits
from mmfuse.models.artifact import load_model
from mmfuse.models.classifier import subset_name
from mmfuse.models.data import Split, load_meta, load_split
from mmfuse.models.determinism import deterministic
from mmfuse.models.scoring import subset_scores
from mmfuse.params.evaluate import EvaluateParams
from mmfuse.preprocess.sample import preprocess_sample
from mmfuse.preprocess.state import PreprocessState


def as_served(split: Split, config: dict[str, Any], meta: dict[str, Any], raw_manifest: Path | None) -> Split:
    """`split` (made with the processed data's preprocessing `meta`) as the artifact of `config`
    would see it: unchanged when it was trained on the same preprocessing, else rebuilt from the
    raw media of the same samples (`raw_manifest`) with its own state, labels renumbered to its own."""
    if config["preprocessing"] == meta:
        return split
    if raw_manifest is None:
        raise MMFuseError("this model was trained with other preprocessing: score it from the raw data (--raw).")
    state = PreprocessState.from_dict(config["preprocessing"])
    rows, store = split_rows(raw_manifest, split.sample_ids), open_media(Path(raw_manifest).parent)
    samples = [
        preprocess_sample(
            store.read(row.image) if row.image else None,
            store.read(row.audio) if row.audio else None,
            row.text,
            state,
        )
        for row in rows.itertuples()
    ]
    tensors = {key: torch.stack([s[key] for s in samples]) for key in ("image", "audio", "text", "mask")}
    own = {str(name): index for index, name in enumerate(config["labels"])}
    names = [str(name) for name in meta["labels"]]
    unknown = sorted({names[k] for k in split.label.tolist()} - set(own))
    if unknown:
        raise MMFuseError(
            f"the data hold classes {unknown} this model was never trained on, so it cannot be compared on them; "
            "the decision needs a human: promote by hand (`dvc exp apply`, `mmfuse champion ...`)."
        )
    tensors["label"] = torch.tensor([own[names[k]] for k in split.label.tolist()])
    return Split.of(tensors, split.sample_ids)


def score_artifact(
    artifact_dir: Path,
    processed_dir: Path,
    split: str = "test",
    temperature: float | None = None,
    params: EvaluateParams = EvaluateParams(),
    raw_manifest: Path | None = None,
) -> dict[str, Any]:
    """{"accuracy": %, "subsets": {name: %}, "classes": {label: recall %}, "ece": float, "samples": n}
    of one artifact on one split.

    For the promote stage: the challenger and the champion are re-scored by the same code
    on the same data, each through its own preprocessing (`as_served`, from `raw_manifest`).
    `temperature` (the artifact's calibration.json) scales the logits before the ECE, as serving
    does; accuracies do not depend on it.
    """
    model, config = load_model(Path(artifact_dir))
    processed = load_split(processed_dir, split)
    data = as_served(processed, config, load_meta(processed_dir), raw_manifest).with_any(model.columns)
    with deterministic(params.threads):
        subsets = subset_scores(model, data, params.batch_size)["subsets"]
        logits = model_logits(model, data, params.batch_size).double().numpy()
    probs = softmax(logits / (temperature or 1.0), axis=1)
    labels = data.label.numpy()
    per_class = classification_metrics(labels, probs.argmax(axis=1), [str(n) for n in config["labels"]])["per_class"]
    return {
        "accuracy": round(subsets[subset_name(model.spec.modalities)]["accuracy"], 4),
        "subsets": {name: round(s["accuracy"], 4) for name, s in subsets.items()},
        "classes": {name: m["recall"] for name, m in per_class.items() if m["support"]},
        "ece": round(expected_calibration_error(probs, labels, params.ece_bins), 6),
        "samples": len(labels),
    }
