"""One monitoring check: read the new log window, validate it, drift-test it, maybe trigger training.

Plain functions, so the Prefect flow stays a thin wrapper and tests drive the same code
with their own trigger. Retraining is triggered only on the transition into drift (see
state.py); a window with too few requests is reported as such and stays open, so the
next check judges it together with what arrives meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mmfuse.errors import MMFuseError
from mmfuse.inference import registry
from mmfuse.inference.log import (
    SET_ASIDE_COLUMNS,
    LogLocation,
    feedback_by_version,
    log_path,
    read_log,
    shadow_evidence,
)
from mmfuse.io import write_json
from mmfuse.modality import FLAGS, MODALITIES
from mmfuse.models.artifact import REFERENCE_FILE
from mmfuse.monitoring.drift import as_json, live_accuracy, run_drift
from mmfuse.monitoring.log_checks import check_log
from mmfuse.monitoring.reference import read_reference
from mmfuse.monitoring.state import AccuracyPoint, MonitorState, load_state, save_state
from mmfuse.params.monitor import MonitorParams
from mmfuse.params.promote import ShadowParams

Trigger = Callable[[dict[str, Any]], str | None]  # gets the check summary, returns the run it started


@dataclass(frozen=True)
class CheckResult:
    status: str  # "insufficient_data" | "ok" | "alert" (someone must look; no retraining) | "drift"
    records: int
    triggered: str | None = None  # the training flow run started by this check
    summary: dict[str, Any] = field(default_factory=dict)


class TriggerFailed(MMFuseError):
    """Drift was found but retraining could not be started; the check itself still counts."""


def trigger_training(deployment: str) -> Trigger:
    """A trigger that starts the training deployment `mmfuse-training/<deployment>`, harvesting
    labelled traffic first (its `harvest` parameter), and does not wait."""

    def _trigger(summary: dict[str, Any]) -> str | None:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import PREFECT_API_URL

        name = f"mmfuse-training/{deployment}"
        try:
            run = run_deployment(name=name, timeout=0, tags=["drift"], parameters={"harvest": True})
        except ObjectNotFound as exc:
            server = PREFECT_API_URL.value() or "the temporary Prefect server of this process"
            raise TriggerFailed(
                f"the training deployment {name} is not registered on {server}: run `mmfuse orchestrate` "
                "(and set PREFECT_API_URL to its server) so that drift starts retraining"
            ) from exc
        except Exception as exc:  # the server is down, refuses, times out: report it, keep the check
            raise TriggerFailed(f"could not start the training deployment {name}: {exc}") from exc
        return str(run.id)

    return _trigger


def champion_reference() -> Path:
    """The drift reference the champion carries (promote stores it beside the weights): traffic is
    compared with what the served model saw, never with a newer run that was not promoted."""
    try:
        path = registry.champion_path() / REFERENCE_FILE
    except registry.RegistryError as exc:
        raise MMFuseError(f"nothing to compare traffic with: {exc}") from exc
    if not path.exists():
        raise MMFuseError(f"the champion carries no {REFERENCE_FILE}: run `dvc repro` so promote stores one beside it.")
    return path


def champion_age(now: datetime, max_age_days: float) -> dict[str, Any] | None:
    """How long ago the served champion was trained (a rollback copy counts from the version it
    restores), and whether that passes `max_age_days`; None when the store holds no champion."""
    try:
        model = registry.champion()
    except registry.RegistryError:
        return None
    if model is None:
        return None
    original = registry.version(registry.lineage(model)) or model
    age = (now - original.info.creation_time).total_seconds() / 86_400
    return {
        "tag": str(model.tag),
        "trained": original.info.creation_time.isoformat(),
        "age_days": round(age, 2),
        "max_age_days": max_age_days,
        "stale": age > max_age_days,
    }


def canary(log: LogLocation, champion_tag: str | None, params: ShadowParams) -> dict[str, Any] | None:
    """What the challenger in shadow has shown against the serving champion so far, and whether it
    is enough for `mmfuse champion repromote` to decide (promote.shadow's minimum counts); None
    when nothing is in shadow."""
    challenger = registry.challenger()
    if challenger is None or champion_tag is None:
        return None
    seen = shadow_evidence(log, champion_tag, str(challenger.tag)).to_dict()
    return {**seen, "ready": seen["requests"] >= params.min_requests and seen["labelled"] >= params.min_feedback}


def alerts(summary: dict[str, Any]) -> list[str]:
    """What someone must be told about one check, one line each; [] when all is well.

    Drift, a failing sensor, failed data checks on the logged traffic, a stale champion and
    a retraining that could not be started: each is a fact a person has to act on, so each
    changes the check's status and reaches the notification block (orchestration.alerts).
    """
    found = []
    if summary.get("status") == "drift":
        accuracy = summary.get("accuracy")
        dropped = f"; live accuracy {accuracy['live']:.3f} vs {accuracy['reference']:.3f}" if accuracy else ""
        found.append(f"drift: {summary['drift']['share']:.0%} of the monitored columns drifted{dropped}")
    for modality in summary.get("sensors", {}).get("failing", []):
        rate = summary["sensors"][modality]["set_aside_rate"]
        found.append(f"sensor failing: {modality} set aside in {rate:.0%} of its requests (unlike training)")
    checks = summary.get("log_checks")
    if checks and not checks["success"]:
        found.append(f"data checks failed on logged traffic: {', '.join(checks['failed'])}")
    if summary.get("champion_stale"):
        c = summary["champion"]
        found.append(f"champion stale: {c['tag']} trained {c['age_days']:.0f} days ago (limit {c['max_age_days']:.0f})")
    serving = (summary.get("champion") or {}).get("tag")
    for row in summary.get("versions", []):
        if row["gap_exceeded"] and row["version"] == serving:
            found.append(
                f"offline/online gap: {row['version']} scores {row['live_accuracy']} % live on {row['feedback']} "
                f"labelled requests vs {row['offline_accuracy']} % on the test split (limit {row['max_gap']} points): "
                "the test split no longer resembles traffic"
            )
    shadow = summary.get("shadow")
    if shadow and shadow["ready"]:
        found.append(
            f"canary ready: {shadow['challenger']} scored {shadow['requests']} requests in shadow "
            f"({shadow['agreement']} % agreement; live {shadow['challenger_accuracy']} % vs the champion's "
            f"{shadow['champion_accuracy']} % on {shadow['labelled']} labels): `mmfuse champion repromote` decides"
        )
    if summary.get("trigger_error"):
        found.append(f"retraining was not started: {summary['trigger_error']}")
    return found


def offline_vs_online(counts: pd.DataFrame, max_gap: float, min_feedback: int) -> list[dict[str, Any]]:
    """Per model version that served labelled requests: its offline test accuracy (recorded at
    promotion) beside its live accuracy from feedback, and the gap (ML Test Score M2).

    `counts` is `feedback_by_version` of the whole log, not one window: a version's live
    accuracy accumulates while it serves. A gap that grows from version to version says the
    test split stopped resembling traffic; past `max_gap` points on at least `min_feedback`
    labels it is flagged (`gap_exceeded`), and `alerts` reports it for the serving champion.
    """
    rows = []
    for version, feedback, correct in counts.itertuples(index=False):  # one row per model version
        model = registry.version(str(version))
        offline = model.info.metadata.get("accuracy") if model is not None else None
        live = round(100.0 * correct / feedback, 2)
        gap = round(offline - live, 2) if offline is not None else None
        rows.append(
            {
                "version": str(version),
                "offline_accuracy": offline,
                "live_accuracy": live,
                "feedback": int(feedback),
                "gap_points": gap,
                "max_gap": max_gap,
                "gap_exceeded": gap is not None and feedback >= min_feedback and gap > max_gap,
            }
        )
    return rows


def run_check(
    project: Path,
    params: MonitorParams,
    trigger: Trigger,
    log: LogLocation | None = None,
    reference: Path | None = None,
    now: datetime | None = None,
    shadow: ShadowParams | None = None,
) -> CheckResult:
    """Check the log rows since the last check; write reports; trigger on entering drift.
    With `shadow` (promote.shadow), report the canary's evidence and alert once it suffices."""
    project = Path(project)
    now = now or datetime.now(timezone.utc)
    state_file = project / params.state_path
    state = load_state(state_file)
    log = log or log_path(project)
    window = read_log(log, since=state.last_check)
    champion = champion_age(now, params.max_champion_age_days)
    summary: dict[str, Any] = {
        "time": now.isoformat(),
        "since": state.last_check.isoformat() if state.last_check else None,
        "records": len(window),
        "min_records": params.min_records,
        "drift_share": params.drift_share,
        "champion": champion,
        "champion_stale": bool(champion and champion["stale"]),
        "versions": offline_vs_online(feedback_by_version(log), params.max_offline_gap, params.min_feedback),
        "shadow": canary(log, champion["tag"] if champion else None, shadow) if shadow is not None else None,
    }
    out_dir = project / params.reports_dir
    if len(window) < params.min_records:
        summary["status"] = "insufficient_data"
        summary["detail"] = (
            f"{len(window)} logged requests since the last check, {params.min_records} needed: not judged"
        )
        summary["alerts"] = alerts(summary)
        write_json(out_dir / "latest.json", summary)
        return CheckResult("insufficient_data", len(window), summary=summary)
    ref_path = reference or champion_reference()
    ref = read_reference(ref_path)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    summary["reference"] = str(ref_path)
    summary["log_checks"] = check_log(window, ref, params.modality_tolerance)
    summary["sensors"] = sensor_health(window, params.sensor_setaside_rate)
    drift, drift_report = run_drift(ref, window, params, out_dir / stamp / "drift.html")
    summary["drift"] = as_json(drift)
    accuracy = live_accuracy(ref, window, params, out_dir / stamp / "accuracy.html")
    history = state.accuracy_history
    if accuracy is not None:
        summary["accuracy"] = as_json(accuracy[0])
        history = (*history, AccuracyPoint(time=now, accuracy=accuracy[0].live, n=accuracy[0].n))
    summary["accuracy_trend"] = [p.model_dump(mode="json") for p in history]
    drifted = drift.drifted or (accuracy is not None and accuracy[0].dropped)
    status = "drift" if drifted else "ok"
    triggered, trigger_error = None, None
    if drifted and not state.drifted:
        try:
            triggered = trigger(summary)
        except TriggerFailed as exc:  # the reports still get written; the next drifted check tries again
            trigger_error = str(exc)
    summary.update(
        status=status, triggered=triggered, trigger_error=trigger_error, already_drifted=drifted and state.drifted
    )
    summary["alerts"] = alerts(summary)
    if status == "ok" and summary["alerts"]:
        status = summary["status"] = "alert"
    write_json(out_dir / stamp / "drift.json", drift_report)
    if accuracy is not None:
        write_json(out_dir / stamp / "accuracy.json", accuracy[1])
    write_json(out_dir / stamp / "summary.json", summary)
    write_json(out_dir / "latest.json", summary)
    save_state(
        state_file,
        MonitorState(
            last_check=now,
            drifted=drifted and trigger_error is None,
            last_trigger=now if triggered else state.last_trigger,
            accuracy_history=history,
        ),
    )
    return CheckResult(status, len(window), triggered, summary)


def sensor_health(window: pd.DataFrame, limit: float) -> dict[str, Any]:
    """Per modality, the share of the requests carrying it whose input was set aside as unlike
    training, and whether that share passes `limit`: a failing sensor (a covered camera, a
    dead microphone), reported apart from population drift, which may come with it or not."""
    health: dict[str, Any] = {}
    for m, flag, aside in zip(MODALITIES, FLAGS, SET_ASIDE_COLUMNS):
        given = int(window[flag].sum())
        rate = float(window.loc[window[flag], aside].sum()) / given if given else 0.0
        health[m] = {"given": given, "set_aside_rate": round(rate, 4), "failing": given > 0 and rate > limit}
    health["failing"] = [m for m in MODALITIES if health[m]["failing"]]
    return health


def summary_markdown(result: CheckResult) -> str:
    """The Prefect artifact: the verdict first, then what drifted and the accuracy trend."""
    s = result.summary
    lines = [
        f"# mmfuse monitoring: **{result.status}**",
        "",
        f"{result.records} logged requests since {s.get('since') or 'the start'}.",
    ]
    if s.get("alerts"):
        lines += ["", *(f"- **{alert}**" for alert in s["alerts"])]
    if s.get("versions"):
        header = "| model version | offline test accuracy | live accuracy (feedback) | gap, points |"
        lines += ["", header, "|---|---|---|---|"]
        lines += [
            f"| {v['version']} | {v['offline_accuracy']} | {v['live_accuracy']} ({v['feedback']}) | {v['gap_points']} |"
            for v in s["versions"]
        ]
    if s.get("shadow"):
        c = s["shadow"]
        lines += [
            "",
            f"Canary {c['challenger']} in shadow: {c['requests']} requests scored, {c['agreement']} % agreement, "
            f"live {c['challenger_accuracy']} % vs the champion's {c['champion_accuracy']} % on {c['labelled']} labels"
            f"{' (enough to decide)' if c['ready'] else ''}.",
        ]
    if result.status == "insufficient_data":
        return "\n".join([*lines, "", s["detail"]])
    drift = s["drift"]
    lines += ["", f"Drifted columns: {drift['share']:.0%} (drift at {s['drift_share']:.0%})", ""]
    lines += ["| column | group | p-value | drifted |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {c['group']} | {c['p_value']} | {'yes' if c['drifted'] else ''} |"
        for name, c in drift["columns"].items()
    ]
    if "accuracy" in s:
        a = s["accuracy"]
        lines += ["", f"Live accuracy {a['live']:.3f} on {a['n']} labelled requests (reference {a['reference']:.3f})."]
    if len(s["accuracy_trend"]) > 1:
        lines += ["", "Accuracy trend: " + " → ".join(f"{p['accuracy']:.3f}" for p in s["accuracy_trend"][-10:])]
    checks = s["log_checks"]
    lines += [
        "",
        "Log checks (Great Expectations): "
        + ("passed" if checks["success"] else "failed: " + ", ".join(checks["failed"])),
    ]
    if s.get("trigger_error"):
        lines += ["", f"**Retraining was not started**: {s['trigger_error']}."]
    else:
        lines += [
            "",
            f"Training run triggered: {result.triggered}" if result.triggered else "No training run triggered.",
        ]
    return "\n".join(lines)
