"""The tuning summary: a seed spread outranks a single lucky run, then the mean decides.

The queue itself (DVC experiments, `dvc exp show`) runs for real in
tests/integration/test_dvc_pipeline.py; here `runs` is what `experiments` reads from it.
"""

from __future__ import annotations

import pytest

from mmfuse.orchestration.tune import METRICS_FILE, draw, summarise
from mmfuse.params import Params
from mmfuse.params.tune import TuneParams


def _run(value: float | None, state: str = "success") -> dict:
    metrics = {} if value is None else {METRICS_FILE: {"fused_accuracy": value}}
    return {"state": state, "metrics": metrics}


def test_a_seed_spread_ranks_first_and_a_failed_run_is_named():
    params = Params(tune=TuneParams(space={"train.lr": [0.01, 0.02, 0.03]}, budget=3, top=1, seeds=3))
    configs = {"a": {"train.lr": 0.01}, "b": {"train.lr": 0.02}, "c": {"train.lr": 0.03}}
    spread = {"b-seed1": {"train.lr": 0.02, "train.seed": 1}, "b-seed2": {"train.lr": 0.02, "train.seed": 2}}
    runs = {"a": _run(95.0), "b": _run(90.0), "b-seed1": _run(80.0), "b-seed2": _run(None, "failed"), "c": _run(None)}
    summary = summarise(params, configs, spread, runs)
    assert [r["experiment"] for r in summary["results"]] == ["b", "a", "c"]  # n=2 before n=1; no score last
    best = summary["best"]
    assert best["n"] == 2 and best["mean"] == 85.0 and best["std"] == pytest.approx(7.0711, abs=1e-4)
    assert best["runs"] == {"b": 90.0, "b-seed1": 80.0, "b-seed2": None} and best["failed"] == ["b-seed2"]
    assert summary["results"][1]["std"] is None and summary["results"][2]["mean"] is None
    assert summary["baseline"] == {"train.lr": Params().train.lr}


def test_no_scored_run_means_no_best():
    params = Params(tune=TuneParams(space={"train.lr": [0.01]}, budget=1))
    summary = summarise(params, {"a": {"train.lr": 0.01}}, {}, {"a": _run(None, "failed")})
    assert summary["best"] is None and summary["results"][0]["failed"] == ["a"]


def test_draw_is_seeded_and_never_repeats():
    space = {"train.lr": [1, 2, 3], "train.epochs": [4, 5]}
    drawn = draw(space, 4, seed=0)
    assert drawn == draw(space, 4, seed=0) and len({tuple(sorted(d.items())) for d in drawn}) == 4
    assert len(draw(space, 10, seed=0)) == 6  # the whole grid when the budget exceeds it
