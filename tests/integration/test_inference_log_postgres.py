"""The inference log on a real Postgres, shared by replicas: one schema with SQLite, the same
answers from either backend, and two `bentoml serve` processes writing to it at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
from log_records import record
from postgres_server import fresh_database, postgres_server
from test_service_support import LABELS, png, promoted_champion, start_server, wav

from mmfuse.inference import log as log_module
from mmfuse.inference.log import (
    CAPTURE_ENV,
    LOG_ENV,
    CaptureRecord,
    InferenceLog,
    LogRecord,
    ShadowRecord,
    ensure_schema,
    feedback_by_version,
    labelled_captures,
    read_log,
    shadow_evidence,
)
from mmfuse.serving.auth import TOKEN_ENV


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def database(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database; captured media go to a folder of this test's."""
    monkeypatch.setenv(CAPTURE_ENV, str(tmp_path / "captured"))
    return fresh_database(server)


def _traffic(log: InferenceLog, now: float) -> None:
    """Predictions from two versions with trust, set-aside and absent statistics, feedback on some,
    a challenger's shadow answers and captured inputs: everything the log stores."""
    for k in range(8):
        base = record(f"r{k}", ts=now - 60 + k, prediction=LABELS[k % 3], version=f"mmfuse:v{k % 2}")
        log.record(
            LogRecord(
                **{
                    **base.__dict__,
                    "trust": (0.5 + k / 100, None, 0.25),
                    "set_aside": (k % 4 == 0, False, False),
                }
            )
        )
        log.record(ShadowRecord(f"r{k}", now, "mmfuse-shadow:c", LABELS[k % 2] if k != 3 else None, 0.6))
        if k % 3 == 0:
            log.record(CaptureRecord(f"r{k}", now, f"image {k}".encode(), None, f"text {k}"))
    assert log.flush()
    for k in (0, 1, 3, 4, 6):
        assert log.feedback(f"r{k}", LABELS[(k + 1) % 3 if k == 4 else k % 3]) == LABELS[k % 3]


def test_sqlite_and_postgres_hold_the_same_log(database: str, tmp_path: Path) -> None:
    """What monitoring, promote and harvest read is the same whichever backend holds the traffic."""
    locations = {"sqlite": tmp_path / "log.sqlite", "postgres": database}
    now = time.time()
    for location in locations.values():
        log = InferenceLog(location, max_rows=1000, queue_size=1000, max_age_days=90, capture_max_bytes=10_000)
        _traffic(log, now)
        log.close()
    lite, pg = (read_log(location) for location in locations.values())
    assert len(lite) == 8 and lite["true_label"].notna().sum() == 5
    for frame in (lite, pg):  # the feedback times are each backend's own clock
        frame.drop(columns="feedback_time", inplace=True)
    pd.testing.assert_frame_equal(lite.drop(columns="embedding"), pg.drop(columns="embedding"))
    assert all((a == b).all() for a, b in zip(lite["embedding"], pg["embedding"]))
    pd.testing.assert_frame_equal(*(feedback_by_version(location) for location in locations.values()))
    evidence = [shadow_evidence(location, "mmfuse:v1", "mmfuse-shadow:c") for location in locations.values()]
    assert evidence[0] == evidence[1] and evidence[0].requests == 4 and evidence[0].failed == 1
    captures = [labelled_captures(location) for location in locations.values()]
    assert list(captures[0]["request_id"]) == list(captures[1]["request_id"]) == ["r0", "r3", "r6"]
    assert [Path(p).read_bytes() for p in captures[1]["image"]] == [b"image 0", b"image 3", b"image 6"]
    assert list(captures[0]["text"]) == list(captures[1]["text"])


def test_retention_and_forget_on_postgres(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_module, "_CAPTURE_GRACE_S", 0.0)
    log = InferenceLog(database, max_rows=3, queue_size=100, max_age_days=90, capture_max_bytes=1000)
    now = time.time()
    for k in range(5):
        log.record(record(f"r{k}", ts=now - 10 + k))
        log.record(CaptureRecord(f"r{k}", now - 10 + k, f"image {k}".encode(), None, None))
    log.close()
    assert read_log(database)["request_id"].tolist() == ["r2", "r3", "r4"]
    media = tmp_path / "captured"
    assert sorted(p.read_bytes() for p in media.glob("??/*")) == [b"image 2", b"image 3", b"image 4"]
    again = InferenceLog(database, max_rows=3, queue_size=100, max_age_days=90, capture_max_bytes=1000)
    assert again.forget("r3") and not again.forget("r3")
    again.close()
    assert read_log(database)["request_id"].tolist() == ["r2", "r4"]
    assert sorted(p.read_bytes() for p in media.glob("??/*")) == [b"image 2", b"image 4"]


def test_replicas_starting_together_create_the_schema_once(database: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: ensure_schema(database), range(4)))  # raises if two creations collide
    assert read_log(database).empty


@pytest.fixture
def replicas(database: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two `bentoml serve` processes (one worker each) logging to the same Postgres."""
    promoted_champion()
    env = {LOG_ENV: database, TOKEN_ENV: "", CAPTURE_ENV: str(tmp_path / "captured")}
    dirs = [tmp_path / "a", tmp_path / "b"]
    for folder in dirs:
        folder.mkdir()
        (folder / "params.yaml").write_text("serve:\n  workers: 1\n")
    with ThreadPoolExecutor(2) as pool:  # both start at once, as replicas of a deployment do
        starting = [pool.submit(start_server, folder, env) for folder in dirs]
        servers = [future.result() for future in starting]
    try:
        yield tuple(server.url for server in servers)
    finally:
        for server in servers:
            server.stop()


def test_two_replicas_share_the_log_and_feedback_lands_on_either(replicas: tuple[str, str], database: str) -> None:
    def predict(k: int) -> tuple[int, dict]:
        files = {"image": ("d.png", png(seed=k), "image/png"), "audio": ("c.wav", wav(freq=300 + k), "audio/wav")}
        answer = httpx.post(f"{replicas[k % 2]}/predict", files=files, data={"text": LABELS[k % 3]}, timeout=30)
        assert answer.status_code == 200, answer.text
        return k, answer.json()

    with ThreadPoolExecutor(8) as pool:  # both replicas write at once
        answers = dict(pool.map(predict, range(24)))
    for k, body in answers.items():  # each label goes to the replica that did not answer
        other = replicas[(k + 1) % 2]
        stored = httpx.post(f"{other}/feedback", json={"request_id": body["request_id"], "label": LABELS[k % 3]})
        assert stored.status_code == 200, stored.text
        assert stored.json()["prediction"] == body["label"]
    logged = read_log(database).set_index("request_id")
    assert set(logged.index) == {body["request_id"] for body in answers.values()}
    assert all(logged.loc[body["request_id"], "true_label"] == LABELS[k % 3] for k, body in answers.items())
    unknown = httpx.post(f"{replicas[0]}/feedback", json={"request_id": "f" * 32, "label": "one"})
    assert unknown.status_code == 404 and unknown.json()["detail"][0]["loc"] == ["request_id"]
