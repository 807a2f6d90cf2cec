"""Prefect flow: one monitoring check of the logged traffic (the work is mmfuse.monitoring.check)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mmfuse.errors import MMFuseError
from mmfuse.monitoring.check import CheckResult, Trigger, run_check, summary_markdown, trigger_training
from mmfuse.orchestration.alerts import notify, notify_failure
from mmfuse.orchestration.harvest import harvest_project
from mmfuse.params import load_params


@task(task_run_name="check logged traffic")
def check(project: str, log: str | None, trigger: Trigger | None) -> CheckResult:
    params = load_params(Path(project) / "params.yaml")
    return run_check(
        Path(project),
        params.monitor,
        trigger or trigger_training(params.monitor.training_deployment),
        log,
        shadow=params.promote.shadow,
    )


@task(task_run_name="harvest labelled traffic")
def harvest(project: str, log: str | None) -> dict[str, Any]:
    """`mmfuse harvest`; a harvest that cannot run (no ingested dataset to judge it against, no DVC
    project) is reported and alerted, and never stops the drift check."""
    try:
        result = harvest_project(Path(project), load_params(Path(project) / "params.yaml"), log)
    except MMFuseError as exc:
        return {"path": None, "error": str(exc)}
    return result.to_dict()


@flow(name="mmfuse-monitoring", log_prints=True, on_failure=[notify_failure])
def monitoring_flow(project: str = ".", log: str | None = None, trigger: Trigger | None = None) -> dict[str, Any]:
    """Validate and drift-check the log since the last check; on entering drift, start training.
    Every alert of the check (drift, a failing sensor, failed data checks, a stale champion, a
    canary with enough evidence) goes to the notification block `monitor.notify_block`.

    Labelled, captured traffic is harvested first (`mmfuse harvest`), so a retraining the check
    starts finds it versioned. `trigger` replaces the default (run the training deployment) when
    called in-process.
    """
    harvested = harvest(str(Path(project).resolve()), log)
    result = check(str(Path(project).resolve()), log, trigger)
    logger = get_run_logger()
    if harvested["path"]:
        logger.info("harvest: kept %s in %s", harvested["kept"], harvested["path"])
    if harvested.get("error"):
        logger.warning("labelled traffic was not harvested: %s", harvested["error"])
        result.summary.setdefault("alerts", []).append(f"labelled traffic was not harvested: {harvested['error']}")
    logger.info(
        "monitoring: %s over %d requests%s",
        result.status,
        result.records,
        f", training run {result.triggered} started" if result.triggered else "",
    )
    if result.summary.get("trigger_error"):
        logger.warning("retraining was not started: %s", result.summary["trigger_error"])
    create_markdown_artifact(
        summary_markdown(result), key="mmfuse-monitoring", description="drift check of logged traffic"
    )
    if result.summary.get("alerts"):
        block = load_params(Path(project) / "params.yaml").monitor.notify_block
        notify(block, f"mmfuse monitoring: {result.status}", result.summary["alerts"])
    return {**result.summary, "harvest": harvested}
