"""Evidently drift of one traffic window against the reference, and live accuracy from feedback.

Embeddings are too wide to test dimension by dimension, and their dimensions are not
independent; projecting both sides on the reference's top principal components gives a
few uncorrelated columns that carry most of the variance, which the per-column tests then
see. Input statistics and the prediction (its distribution, i.e. prior shift) join them.
Tests are fixed (K-S for numbers, chi-square for categories) so every column yields a
p-value judged against one threshold from params, whatever the sample size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, MulticlassClassification, Report
from evidently.presets import ClassificationPreset, DataDriftPreset

from mmfuse.errors import MMFuseError
from mmfuse.inference.log import STAT_COLUMNS
from mmfuse.modality import FLAGS, MODALITIES
from mmfuse.params.monitor import MonitorParams

_MIN_VALUES = 5  # a statistic seen fewer times than this on either side is not tested


@dataclass(frozen=True)
class Projection:
    """Reference embedding mean and top principal axes."""

    mean: np.ndarray
    components: np.ndarray  # [k, dim]

    @classmethod
    def fit(cls, embeddings: np.ndarray, k: int) -> "Projection":
        mean = embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        return cls(mean, vt[: min(k, vt.shape[0])])

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        if embeddings.shape[1] != self.mean.shape[0]:
            raise MMFuseError(
                f"logged embeddings have {embeddings.shape[1]} values, the reference {self.mean.shape[0]}: "
                "the reference belongs to another model; rebuild it for the champion."
            )
        return (embeddings - self.mean) @ self.components.T


@dataclass(frozen=True)
class DriftResult:
    drifted: bool
    share: float  # drifted columns / tested columns
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {group, p_value, drifted}


@dataclass(frozen=True)
class AccuracyResult:
    live: float
    reference: float
    n: int
    dropped: bool


def _stack(embeddings: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(e, dtype=np.float32) for e in embeddings])


def drift_features(frame: pd.DataFrame, projection: Projection) -> pd.DataFrame:
    """The tested columns: embedding PCs, input statistics, prediction, modality combination."""
    pcs = projection(_stack(frame["embedding"]))
    features = pd.DataFrame({f"embedding_pc{i + 1}": pcs[:, i] for i in range(pcs.shape[1])}, index=frame.index)
    for name in STAT_COLUMNS:
        features[name] = frame[name].astype(float)
    features["prediction"] = frame["prediction"].astype(str)
    flags = frame[list(FLAGS)].astype(bool).to_numpy()
    features["modalities"] = ["+".join(m for m, on in zip(MODALITIES, row) if on) for row in flags]
    return features.reset_index(drop=True)


def _group(column: str) -> str:
    if column.startswith("embedding_pc"):
        return "embedding"
    return "input_statistics" if column in STAT_COLUMNS else column


def run_drift(
    reference: pd.DataFrame, current: pd.DataFrame, params: MonitorParams, html: Path
) -> tuple[DriftResult, dict]:
    """Drift-test `current` against `reference`; write the Evidently HTML; return the verdict and its JSON."""
    projection = Projection.fit(_stack(reference["embedding"]), params.pca_components)
    ref, cur = drift_features(reference, projection), drift_features(current, projection)
    numeric = [c for c in ref.columns if c not in ("prediction", "modalities")]
    numeric = [c for c in numeric if ref[c].notna().sum() >= _MIN_VALUES and cur[c].notna().sum() >= _MIN_VALUES]
    categorical = ["prediction", "modalities"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    columns = numeric + categorical
    preset = DataDriftPreset(
        columns=columns,
        num_method="ks",
        cat_method="chisquare",
        threshold=params.stattest_threshold,
        drift_share=params.drift_share,
    )
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(cur[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(ref[columns], data_definition=definition),
    )
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))
    report = snapshot.dict()
    tested: dict[str, dict[str, Any]] = {}
    for metric in report["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            p_value = float(metric["value"])
            drifted = not math.isnan(p_value) and p_value < params.stattest_threshold
            tested[config["column"]] = {"group": _group(config["column"]), "p_value": p_value, "drifted": drifted}
    share = sum(c["drifted"] for c in tested.values()) / len(tested) if tested else 0.0
    return DriftResult(share >= params.drift_share, share, tested), report


def live_accuracy(
    reference: pd.DataFrame, current: pd.DataFrame, params: MonitorParams, html: Path
) -> tuple[AccuracyResult, dict] | None:
    """Accuracy of the labelled requests (feedback) vs the reference; None below `min_feedback`."""
    labelled = current[current["true_label"].notna()]
    if len(labelled) < params.min_feedback:
        return None
    columns = ["prediction", "true_label"]
    definition = DataDefinition(
        categorical_columns=columns,
        classification=[MulticlassClassification(target="true_label", prediction_labels="prediction")],
    )
    snapshot = Report([ClassificationPreset()]).run(
        current_data=Dataset.from_pandas(
            labelled[columns].astype(str).reset_index(drop=True), data_definition=definition
        ),
        reference_data=Dataset.from_pandas(
            reference[columns].astype(str).reset_index(drop=True), data_definition=definition
        ),
    )
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))
    live = float((labelled["prediction"] == labelled["true_label"]).mean())
    ref = float((reference["prediction"] == reference["true_label"]).mean())
    result = AccuracyResult(live=live, reference=ref, n=len(labelled), dropped=ref - live > params.accuracy_drop)
    return result, snapshot.dict()


def as_json(value: Any) -> Any:
    """Dataclass results in plain JSON types (NaN p-values become null)."""
    return json.loads(
        json.dumps(asdict(value) if hasattr(value, "__dataclass_fields__") else value, default=str).replace(
            "NaN", "null"
        )
    )
