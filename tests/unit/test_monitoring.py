"""Monitoring checks on synthetic traffic written with the service's own InferenceLog writer.

The reference is synthetic too (same columns as `build_reference` writes), with statistics
drawn from fixed distributions; "undrifted" traffic is drawn from the same ones, "shifted"
traffic moves the embeddings and the audio statistics.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmfuse.inference import registry
from mmfuse.inference.log import STAT_COLUMNS, InferenceLog, LogRecord, ShadowRecord, read_log
from mmfuse.monitoring.check import TriggerFailed, run_check, summary_markdown
from mmfuse.monitoring.log_checks import check_log
from mmfuse.monitoring.reference import read_reference, write_reference
from mmfuse.monitoring.state import load_state
from mmfuse.params.monitor import MonitorParams
from mmfuse.params.promote import ShadowParams

LABELS = ("zero", "one", "two")
DIM = 24  # 3 modalities x embed_dim 8, as the tiny service model
PARAMS = MonitorParams(min_records=40, min_feedback=30, pca_components=4)


def draw(n: int, seed: int, shift: float = 0.0, accuracy: float = 0.9) -> dict[str, Any]:
    """Columns of n samples; `shift` moves embeddings and audio statistics by that many std."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(LABELS, n)
    wrong = rng.random(n) > accuracy
    prediction = np.where(wrong, rng.choice(LABELS, n), truth)
    stats = {
        "image_bytes": rng.normal(600, 50, n),
        "audio_bytes": rng.normal(16000, 500, n) * (1 + 0.2 * shift),
        "text_chars": rng.integers(3, 20, n).astype(float),
        "image_mean": rng.normal(0, 1, n),
        "image_std": rng.normal(1, 0.1, n),
        "audio_mean": rng.normal(0, 1, n) + shift,
        "audio_std": rng.normal(1, 0.1, n) * (1 + shift),
        "text_tokens": rng.integers(3, 20, n).astype(float),
        "text_unk_share": rng.uniform(0, 0.1, n),
    }
    embedding = rng.normal(0, 1, (n, DIM)).astype(np.float32) + np.float32(shift)
    return {"truth": truth, "prediction": prediction, "stats": stats, "embedding": embedding}


def reference_file(path: Path) -> Path:
    d = draw(300, seed=1)
    frame = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(300)], "has_image": True, "has_audio": True, "has_text": True}
    )
    for name in STAT_COLUMNS:
        frame[name] = d["stats"][name]
    frame["embedding"] = list(d["embedding"])
    frame["prediction"], frame["confidence"], frame["true_label"] = d["prediction"], 0.8, d["truth"]
    write_reference(frame, path)
    return path


def log_traffic(
    log: Path,
    n: int,
    seed: int,
    start: datetime,
    shift: float = 0.0,
    accuracy: float = 0.9,
    feedback: bool = False,
    audio_set_aside: float = 0.0,
    model_version: str = "mmfuse:test",
) -> None:
    """Write n requests with the real writer, then feedback (the true label) for each if asked."""
    d = draw(n, seed, shift, accuracy)
    writer = InferenceLog(log, max_rows=100_000, queue_size=10_000, max_age_days=90)
    ids = [uuid.uuid4().hex for _ in range(n)]
    for i, request_id in enumerate(ids):
        writer.record(
            LogRecord(
                request_id=request_id,
                ts=(start + timedelta(seconds=i)).timestamp(),
                endpoint="predict",
                model_version=model_version,
                present=(True, True, True),
                stats={name: float(d["stats"][name][i]) for name in STAT_COLUMNS},
                embedding=d["embedding"][i],
                prediction=str(d["prediction"][i]),
                confidence=0.8,
                probabilities={label: 0.8 if label == d["prediction"][i] else 0.1 for label in LABELS},
                latency_ms=3.0,
                trust=(0.5, 0.999 if i < audio_set_aside * n else 0.5, 0.5),
                set_aside=(False, i < audio_set_aside * n, False),
            )
        )
    writer.flush()
    if feedback:
        for i, request_id in enumerate(ids):
            writer.feedback(request_id, str(d["truth"][i]))
    writer.close()


class Counter:
    """A trigger that counts the training runs it would have started."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, summary: dict[str, Any]) -> str:
        self.calls.append(summary)
        return f"run-{len(self.calls)}"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path, tmp_path / "log.sqlite", reference_file(tmp_path / "reference.parquet")


# Yesterday, on the hour: within the log's age limit.
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)


def check(project: Path, log: Path, ref: Path, trigger: Counter, at: datetime, params: MonitorParams = PARAMS):
    return run_check(project, params, trigger, log=log, reference=ref, now=at)


def test_reference_round_trips_with_list_embeddings(setup):
    _, _, ref = setup
    frame = read_reference(ref)
    assert frame["embedding"].iloc[0].dtype == np.float32 and frame["embedding"].iloc[0].shape == (DIM,)
    again = ref.with_name("again.parquet")
    write_reference(frame, again)
    assert again.read_bytes() == ref.read_bytes()  # deterministic bytes: DVC sees no change


def test_undrifted_traffic_is_not_drift_and_triggers_nothing(setup):
    project, log, ref = setup
    log_traffic(log, 120, seed=2, start=T0)
    trigger = Counter()
    result = check(project, log, ref, trigger, T0 + timedelta(hours=1))
    assert result.status == "ok", result.summary["drift"]
    assert trigger.calls == [] and result.triggered is None
    assert result.summary["log_checks"]["success"], result.summary["log_checks"]["failed"]
    latest = project / PARAMS.reports_dir
    assert (latest / "latest.json").exists() and list(latest.glob("*/drift.html"))


def test_shifted_traffic_triggers_once_per_drifted_window(setup):
    project, log, ref = setup
    trigger = Counter()
    log_traffic(log, 120, seed=3, start=T0)
    assert check(project, log, ref, trigger, T0 + timedelta(hours=1)).status == "ok"
    log_traffic(log, 120, seed=4, start=T0 + timedelta(hours=1, seconds=1), shift=1.5)
    first = check(project, log, ref, trigger, T0 + timedelta(hours=2))
    assert first.status == "drift" and first.triggered == "run-1"
    assert first.summary["drift"]["columns"]["embedding_pc1"]["group"] == "embedding"
    log_traffic(log, 120, seed=5, start=T0 + timedelta(hours=2, seconds=1), shift=1.5)
    second = check(project, log, ref, trigger, T0 + timedelta(hours=3))
    assert second.status == "drift" and second.triggered is None and second.records == 120
    assert len(trigger.calls) == 1
    assert load_state(project / PARAMS.state_path).drifted


class Unavailable(Counter):
    """A trigger whose orchestrator is not there for the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def __call__(self, summary: dict[str, Any]) -> str:
        if self.failures:
            self.failures -= 1
            raise TriggerFailed("the training deployment mmfuse-training/nightly is not registered")
        return super().__call__(summary)


def test_a_failed_trigger_keeps_the_check_and_is_retried_on_the_next_drifted_window(setup):
    project, log, ref = setup
    trigger = Unavailable(failures=1)
    log_traffic(log, 120, seed=4, start=T0, shift=1.5)
    first = check(project, log, ref, trigger, T0 + timedelta(hours=1))
    assert first.status == "drift" and first.triggered is None and "not registered" in first.summary["trigger_error"]
    assert (
        json.loads((project / PARAMS.reports_dir / "latest.json").read_text())["trigger_error"]
        == first.summary["trigger_error"]
    )
    assert "Retraining was not started" in summary_markdown(first)
    assert not load_state(project / PARAMS.state_path).drifted  # no trigger went out: the episode is still open
    log_traffic(log, 120, seed=5, start=T0 + timedelta(hours=1, seconds=1), shift=1.5)
    second = check(project, log, ref, trigger, T0 + timedelta(hours=2))
    assert second.triggered == "run-1" and second.summary["trigger_error"] is None
    assert load_state(project / PARAMS.state_path).drifted


def test_too_few_records_is_reported_as_such_and_the_window_stays_open(setup):
    project, log, ref = setup
    log_traffic(log, 10, seed=6, start=T0, shift=3.0)
    trigger = Counter()
    result = check(project, log, ref, trigger, T0 + timedelta(hours=1))
    assert result.status == "insufficient_data" and "10 logged requests" in result.summary["detail"]
    assert trigger.calls == [] and load_state(project / PARAMS.state_path).last_check is None


def test_a_live_accuracy_drop_counts_as_drift(setup):
    project, log, ref = setup
    log_traffic(log, 120, seed=7, start=T0, accuracy=0.3, feedback=True)
    trigger = Counter()
    result = check(project, log, ref, trigger, T0 + timedelta(hours=1))
    accuracy = result.summary["accuracy"]
    assert accuracy["dropped"] and accuracy["live"] < accuracy["reference"] - PARAMS.accuracy_drop
    assert not result.summary["drift"]["drifted"]  # inputs look the same: only the labels tell
    assert result.status == "drift" and len(trigger.calls) == 1
    assert len(result.summary["accuracy_trend"]) == 1 and list((project / PARAMS.reports_dir).glob("*/accuracy.html"))


def test_a_failing_sensor_is_reported_apart_from_drift(setup):
    """Audio set aside in 40 % of the requests (a dead microphone): the check names the sensor,
    while the population itself (statistics, embeddings) has not drifted."""
    project, log, ref = setup
    log_traffic(log, 100, seed=21, start=T0, audio_set_aside=0.4)
    result = check(project, log, ref, Counter(), T0 + timedelta(hours=1))
    sensors = result.summary["sensors"]
    assert sensors["failing"] == ["audio"] and sensors["audio"]["set_aside_rate"] == 0.4
    assert sensors["image"] == {"given": 100, "set_aside_rate": 0.0, "failing": False}
    assert result.status == "alert" and not result.triggered  # someone must look; retraining would not help
    assert "- **sensor failing: audio set aside in 40% of its requests" in summary_markdown(result)
    calm = check(project, log, ref, Counter(), T0 + timedelta(hours=2))  # nothing new since: not judged
    assert calm.status == "insufficient_data"


def test_nan_and_inf_in_logged_confidences_embeddings_and_probabilities_fail_the_log_suite(setup):
    _, log, ref = setup
    log_traffic(log, 60, seed=9, start=T0)
    window = read_log(log)
    assert check_log(window, read_reference(ref), PARAMS.modality_tolerance)["success"]
    window.loc[3, "confidence"] = float("nan")
    window.at[5, "embedding"] = np.where(np.arange(DIM) == 0, np.inf, window.at[5, "embedding"]).astype(np.float32)
    window.at[7, "probabilities"] = {**window.at[7, "probabilities"], "one": float("nan")}
    failed = check_log(window, read_reference(ref), PARAMS.modality_tolerance)["failed"]
    assert failed == [
        "expect_column_values_to_not_be_null(confidence)",
        "expect_column_values_to_be_in_set(embedding_finite)",
        "expect_column_values_to_be_in_set(probabilities_finite)",
    ]


def test_the_champion_age_is_reported_and_flagged_stale_past_the_limit(setup, tmp_path):
    project, log, ref = setup
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.safetensors").write_bytes(b"weights")
    tag = registry.promote(artifact, {"source": "monitoring test"})
    created = registry.champion().info.creation_time
    fresh = check(project, log, ref, Counter(), created + timedelta(days=2)).summary
    assert fresh["champion"]["tag"] == tag and 1.9 < fresh["champion"]["age_days"] < 2.1
    assert fresh["champion_stale"] is False
    old = check(project, log, ref, Counter(), created + timedelta(days=PARAMS.max_champion_age_days + 1))
    assert old.status == "insufficient_data" and old.summary["champion_stale"] is True  # no traffic needed
    assert old.summary["alerts"] == [f"champion stale: {tag} trained 31 days ago (limit 30)"]
    assert f"- **champion stale: {tag}" in summary_markdown(old)


def test_offline_and_live_accuracy_are_reported_side_by_side_per_version(setup, tmp_path):
    project, log, ref = setup
    tags = []
    for name, offline in (("a", 93.0), ("b", 94.0)):
        artifact = tmp_path / name
        artifact.mkdir()
        (artifact / "model.safetensors").write_bytes(name.encode())
        tags.append(registry.promote(artifact, {"accuracy": offline}))
    log_traffic(log, 100, seed=31, start=T0, accuracy=0.9, feedback=True, model_version=tags[0])
    log_traffic(log, 100, seed=32, start=T0 + timedelta(minutes=5), accuracy=0.6, feedback=True, model_version=tags[1])
    log_traffic(log, 20, seed=33, start=T0 + timedelta(minutes=10), model_version=tags[1])  # no feedback yet
    result = check(project, log, ref, Counter(), T0 + timedelta(hours=1))
    versions = {v["version"]: v for v in result.summary["versions"]}
    assert list(versions) == tags and versions[tags[1]]["feedback"] == 100
    truth = read_log(log).query("true_label.notna()")
    for tag, offline in zip(tags, (93.0, 94.0)):
        rows = truth[truth["model_version"] == tag]
        live = round(100 * float((rows["prediction"] == rows["true_label"]).mean()), 2)
        assert versions[tag]["live_accuracy"] == live and versions[tag]["offline_accuracy"] == offline
        assert versions[tag]["gap_points"] == round(offline - live, 2)
    assert versions[tags[1]]["gap_points"] > versions[tags[0]]["gap_points"] + 5  # the second tracks worse
    # past monitor.max_offline_gap (10 points) only the second: it is the serving champion, so it alerts
    assert [versions[t]["gap_exceeded"] for t in tags] == [False, True]
    gap_alerts = [a for a in result.summary["alerts"] if a.startswith("offline/online gap")]
    assert len(gap_alerts) == 1 and tags[1] in gap_alerts[0]
    assert f"| {tags[1]} | 94.0 |" in summary_markdown(result)


def test_the_check_reports_the_canary_and_alerts_once_its_evidence_suffices(setup, tmp_path):
    project, log, ref = setup
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "model.safetensors").write_bytes(b"champion")
    champion = registry.promote(artifact, {"accuracy": 93.0})
    (artifact / "model.safetensors").write_bytes(b"challenger")
    challenger = registry.shadow(artifact, {"accuracy": 94.0})
    try:
        log_traffic(log, 60, seed=41, start=T0, accuracy=0.9, feedback=True, model_version=champion)
        writer = InferenceLog(log, max_rows=100_000, queue_size=1000, max_age_days=90)
        rows = read_log(log)
        for k, row in enumerate(rows.itertuples()):  # the challenger agrees on all but every tenth request
            label = row.prediction if k % 10 else "other"
            writer.record(ShadowRecord(row.request_id, row.time.timestamp(), challenger, label, 0.9))
        writer.close()
        waiting = run_check(
            project, PARAMS, Counter(), log, ref, T0 + timedelta(hours=1), ShadowParams(min_requests=100)
        )
        assert waiting.summary["shadow"]["requests"] == 60 and not waiting.summary["shadow"]["ready"]
        assert not any(a.startswith("canary ready") for a in waiting.summary["alerts"])
        ready = run_check(project, PARAMS, Counter(), log, ref, T0 + timedelta(hours=2), ShadowParams(min_requests=50))
        shadow = ready.summary["shadow"]
        assert shadow["ready"] and shadow["agreement"] == 90.0 and shadow["challenger"] == challenger
        [alert] = [a for a in ready.summary["alerts"] if a.startswith("canary ready")]
        assert challenger in alert and "90.0 % agreement" in alert and "mmfuse champion repromote" in alert
        assert "canary" in summary_markdown(ready)
    finally:
        registry.end_shadow("test over")
