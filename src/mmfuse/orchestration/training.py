"""Prefect flow: the DVC pipeline, one task per stage, with retries for transient failures.

The work is `mmfuse.orchestration.dvc` (DVC) and the stages it runs; a stage that failed
with a known error (bad data, bad params) is not retried, anything else may be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mmfuse.orchestration.alerts import notify_failure
from mmfuse.orchestration.dvc import StageFailed, StageResult, repro_stage, run_experiment, stage_names
from mmfuse.orchestration.harvest import extra_with_harvests, harvest_project
from mmfuse.params import load_params


def _transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's hook signature)
    try:
        state.result()
    except StageFailed as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - anything else (OOM kill, I/O) may pass on retry
        return True
    return False


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=_transient, task_run_name="stage {stage}")
def run_stage(stage: str, project: str) -> dict[str, Any]:
    result: StageResult = repro_stage(stage, Path(project))
    get_run_logger().info("%s: %s", stage, "ran" if result.ran else "unchanged, skipped by DVC")
    return {"stage": stage, "ran": result.ran}


@task(task_run_name="harvest")
def harvest_traffic(project: str) -> dict[str, Any]:
    """Harvest labelled, captured traffic into a new DVC-versioned window (nothing when none is new)."""
    result = harvest_project(Path(project), load_params(Path(project) / "params.yaml"))
    get_run_logger().info(
        "harvest: %d new labelled capture(s), kept %s, refused %d", result.candidates, result.kept, len(result.refused)
    )
    return result.to_dict()


@task(task_run_name="experiment")
def run_overridden(overrides: dict[str, Any], project: str) -> str:
    return run_experiment(overrides, Path(project))


def _publish(project: Path, stages: list[dict[str, Any]]) -> None:
    lines = ["# mmfuse training run", "", "| stage | result |", "|---|---|"]
    lines += [f"| {s['stage']} | {'ran' if s['ran'] else 'skipped (unchanged)'} |" for s in stages]
    rows = []
    for path in sorted((project / "metrics").glob("*.json")):
        data = json.loads(path.read_text())
        rows += [
            {"file": path.name, "metric": k, "value": v}
            for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
    decision = project / "reports" / "promotion" / "decision.json"
    if decision.exists():
        record = json.loads(decision.read_text())
        lines += [
            "",
            f"**Promotion**: {record['verdict']}",
            f"failed gates: {', '.join(record['failed_gates']) or 'none'}",
        ]
    lines += ["", "Reports: `reports/data_docs/index.html`, `reports/evaluation/index.html`, `metrics/`"]
    create_markdown_artifact("\n".join(lines), key="mmfuse-training-summary", description="stages, promotion, reports")
    if rows:
        create_table_artifact(rows, key="mmfuse-training-metrics", description="DVC metrics of this run")


@flow(name="mmfuse-training", log_prints=True, on_failure=[notify_failure])
def training_flow(
    project: str = ".", overrides: dict[str, Any] | None = None, harvest: bool = False
) -> list[dict[str, Any]]:
    """Reproduce the pipeline through DVC; with `overrides`, as a recorded DVC experiment.

    With `harvest` (what drift starts), labelled traffic is harvested first and every harvest
    window joins `data.extra` for this run, which is then a DVC experiment: it can be inspected
    (`dvc exp show`), applied or thrown away, and promotes only with promote.from_experiments.
    """
    root = Path(project).resolve()
    if harvest:
        harvest_traffic(str(root))
        params = load_params(root / "params.yaml")
        extra = extra_with_harvests(root, params)
        if extra != params.data.extra:
            overrides = {**(overrides or {}), "data.extra": extra}
    if overrides:
        run_overridden(overrides, str(root))
        stages = [{"stage": "experiment " + ", ".join(f"{k}={v}" for k, v in overrides.items()), "ran": True}]
    else:
        stages = [run_stage(stage, str(root)) for stage in stage_names(root)]
    _publish(root, stages)
    return stages
