"""Great Expectations over one window of logged traffic: schema, value ranges, modality mix,
and finite numbers (a NaN confidence slips through a range check, which skips nulls, so
confidences must also be non-null, and embeddings and probabilities all finite).

A failed expectation is reported beside the drift result rather than raised: bad inputs
are a fact about the traffic, and the monitoring flow must still finish its report.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from mmfuse.inference.log import STAT_COLUMNS
from mmfuse.modality import FLAGS

_NON_NEGATIVE = tuple(name for name in STAT_COLUMNS if not name.endswith("_mean") and name != "text_unk_share")


def _expectations(labels: list[str], shares: dict[str, float], tolerance: float) -> list[Any]:
    checks: list[Any] = [
        gxe.ExpectColumnToExist(column=c) for c in ("time", *FLAGS, *STAT_COLUMNS, "prediction", "confidence")
    ]
    checks += [
        gxe.ExpectColumnValuesToNotBeNull(column="prediction"),
        gxe.ExpectColumnValuesToBeInSet(column="prediction", value_set=labels),
        gxe.ExpectColumnValuesToNotBeNull(column="confidence"),
        gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeInSet(column="embedding_finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="probabilities_finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="text_unk_share", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="modalities", min_value=1, max_value=len(FLAGS)),
    ]
    checks += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0.0) for c in _NON_NEGATIVE]
    checks += [
        gxe.ExpectColumnMeanToBeBetween(
            column=flag, min_value=max(0.0, shares[flag] - tolerance), max_value=min(1.0, shares[flag] + tolerance)
        )
        for flag in FLAGS
    ]
    return checks


def _all_finite(rows: list[Any]) -> list[bool]:
    """Per row: every number finite (one vectorised test over the window, not a loop per value)."""
    if not rows:
        return []
    return np.isfinite(np.asarray(rows, dtype=np.float64)).all(axis=1).tolist()


def check_log(window: pd.DataFrame, reference: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Validate `window` (read_log rows); labels and modality shares come from the reference.

    Returns {"success": bool, "failed": [...], "results": [...]} in plain JSON types.
    """
    table = window.drop(columns=[c for c in ("embedding", "probabilities") if c in window.columns]).copy()
    table["embedding_finite"] = _all_finite(window["embedding"].to_list())
    table["probabilities_finite"] = _all_finite([list(p.values()) for p in window["probabilities"]])
    for flag in FLAGS:
        table[flag] = table[flag].astype(float)
    table["modalities"] = table[list(FLAGS)].sum(axis=1)
    labels = sorted(set(reference["prediction"]) | set(reference["true_label"].dropna()))
    shares = {flag: float(reference[flag].astype(float).mean()) for flag in FLAGS}
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (
        context.data_sources.add_pandas("inference_log")
        .add_dataframe_asset("window")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": table})
    )
    suite = context.suites.add(gx.ExpectationSuite(name="inference_log"))
    for expectation in _expectations(labels, shares, tolerance):
        suite.add_expectation(expectation)
    outcome = batch.validate(suite)
    results = [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column"),
            "success": bool(r.success),
            "observed": r.result.get("observed_value", r.result.get("unexpected_percent")),
        }
        for r in outcome.results
    ]
    failed = [f"{r['expectation']}({r['column']})" for r in results if not r["success"]]
    return {"success": bool(outcome.success), "failed": failed, "results": results}
