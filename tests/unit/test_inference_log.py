"""The inference log: WAL SQLite written by a background thread, retention, feedback, the reader."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from log_records import record

from mmfuse.inference import log as log_module
from mmfuse.inference.log import (
    CAPTURE_ENV,
    LOG_ENV,
    STAT_COLUMNS,
    CaptureRecord,
    InferenceLog,
    LogLocationError,
    ShadowRecord,
    input_statistics,
    log_path,
    media_root,
    read_log,
    shadow_evidence,
)


@pytest.fixture
def log(tmp_path: Path):
    log = InferenceLog(tmp_path / "inference" / "log.sqlite", max_rows=1000, queue_size=100, max_age_days=90)
    yield log
    log.close()


def test_records_round_trip_through_the_reader(log):
    assert log.record(record("a" * 32))
    assert log.flush()
    frame = read_log(log.path)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["request_id"] == "a" * 32 and row["endpoint"] == "predict" and row["model_version"] == "mmfuse:test"
    assert (row["has_image"], row["has_audio"], row["has_text"]) == (True, False, True)
    assert row["image_bytes"] == 100 and row["image_mean"] == 0.5 and row["image_std"] == 0.0
    assert row["text_chars"] == 3 and row["text_tokens"] == 3 and row["text_unk_share"] == pytest.approx(1 / 3)
    assert np.isnan(row["audio_bytes"]) and np.isnan(row["audio_mean"])
    assert row["embedding"].dtype == np.float32 and row["embedding"].tolist() == list(range(6))
    assert (
        row["probabilities"] == {"zero": 0.25, "one": 0.75} and row["prediction"] == "one" and row["confidence"] == 0.75
    )
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert row["true_label"] is None and frame["feedback_time"].isna().all()


def test_the_file_is_in_wal_mode(log):
    log.record(record("b" * 32))
    log.flush()
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_record_does_not_wait_for_the_disk(log, monkeypatch):
    gate = threading.Event()
    write = log._write
    monkeypatch.setattr(log, "_write", lambda records: (gate.wait(5), write(records)))
    started = time.perf_counter()
    for i in range(50):
        log.record(record(f"{i:032x}"))
    assert time.perf_counter() - started < 0.5  # the writer is blocked, yet recording returned at once
    gate.set()
    assert log.flush()
    assert len(read_log(log.path)) == 50


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path, monkeypatch):
    log = InferenceLog(tmp_path / "log.sqlite", max_rows=1000, queue_size=2, max_age_days=90)
    gate = threading.Event()
    write = log._write
    monkeypatch.setattr(log, "_write", lambda records: (gate.wait(5), write(records)))
    results = [log.record(record(f"{i:032x}")) for i in range(10)]
    assert not all(results) and log.dropped == results.count(False)
    gate.set()
    log.close()
    assert len(read_log(log.path)) == results.count(True)


def test_retention_keeps_the_newest_rows(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite", max_rows=5, queue_size=100, max_age_days=90)
    for i in range(12):
        log.record(record(f"{i:032x}", ts=time.time() - 100 + i))
        log.flush()
    log.close()
    assert read_log(log.path)["request_id"].tolist() == [f"{i:032x}" for i in range(7, 12)]


def test_retention_drops_rows_past_the_age_limit_on_write_and_on_open(tmp_path):
    path = tmp_path / "log.sqlite"
    day = 86_400
    log = InferenceLog(path, max_rows=1000, queue_size=100, max_age_days=2)
    for i, age_days in enumerate((5, 3, 1, 0)):
        log.record(record(f"{i:032x}", ts=time.time() - age_days * day))
    log.flush()
    log.close()
    assert read_log(path)["request_id"].tolist() == [f"{i:032x}" for i in (2, 3)]
    InferenceLog(path, max_rows=1000, queue_size=100, max_age_days=0.5).close()  # a restart with a shorter limit
    assert read_log(path)["request_id"].tolist() == [f"{3:032x}"]


def test_feedback_is_stored_beside_its_request(log):
    log.record(record("c" * 32, prediction="one"))  # still queued: feedback must find it anyway
    assert log.feedback("c" * 32, "zero") == "one"
    row = read_log(log.path).iloc[0]
    assert row["true_label"] == "zero" and pd.notna(row["feedback_time"])


def test_feedback_finds_a_request_another_worker_is_still_writing(log):
    other = InferenceLog(log.path, max_rows=1000, queue_size=100, max_age_days=90)  # a second server worker, same file
    late = threading.Timer(0.1, lambda: (other.record(record("f" * 32, prediction="two")), other.flush()))
    late.start()
    try:
        assert log.feedback("f" * 32, "two") == "two"  # arrives while the other worker's write is pending
    finally:
        late.join()
        other.close()


def test_feedback_for_an_unknown_request_is_none(log):
    assert log.feedback("d" * 32, "zero") is None


def test_since_filters_by_time_and_naive_means_utc(log):
    now = datetime.now(timezone.utc)
    log.record(record("e" * 32, ts=(now - timedelta(hours=2)).timestamp()))
    log.record(record("f" * 32, ts=now.timestamp()))
    log.flush()
    assert read_log(log.path, since=now - timedelta(hours=1))["request_id"].tolist() == ["f" * 32]
    naive = (now - timedelta(hours=1)).replace(tzinfo=None)
    assert read_log(log.path, since=naive)["request_id"].tolist() == ["f" * 32]
    assert len(read_log(log.path)) == 2


def test_the_log_survives_a_restart_and_two_writers_share_it(tmp_path):
    path = tmp_path / "log.sqlite"
    first = InferenceLog(path, max_rows=1000, queue_size=100, max_age_days=90)
    first.record(record("1" * 32))
    first.close()
    second, third = (InferenceLog(path, max_rows=1000, queue_size=100, max_age_days=90) for _ in range(2))  # 2 workers
    for i in range(20):
        second.record(record(f"2{i:031x}"))
        third.record(record(f"3{i:031x}"))
    second.close()
    third.close()
    ids = read_log(path)["request_id"].tolist()
    assert len(ids) == 41 and "1" * 32 in ids


def test_a_record_that_cannot_be_written_does_not_stop_the_writer(log):
    broken = record("9" * 32)
    object.__setattr__(broken, "present", None)  # row() fails in the writer thread
    log.record(broken)
    log.record(record("8" * 32))  # most likely in the same batch: it must still be written
    assert log.flush()
    assert log.failed == 1
    log.record(record("7" * 32))
    assert log.flush()
    assert set(read_log(log.path)["request_id"]) == {"8" * 32, "7" * 32}


def test_a_missing_log_reads_as_an_empty_frame(tmp_path):
    frame = read_log(tmp_path / "nowhere.sqlite")
    assert frame.empty and {"request_id", "time", "embedding", "true_label", *STAT_COLUMNS} <= set(frame.columns)


def test_the_default_location_is_under_the_working_dir_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv(LOG_ENV, raising=False)
    assert log_path() == Path("data/inference/log.sqlite")
    monkeypatch.setenv(LOG_ENV, str(tmp_path / "x.sqlite"))
    assert log_path() == tmp_path / "x.sqlite"


def test_input_statistics_are_none_for_absent_modalities():
    sample = {
        "image": torch.zeros(1, 4, 4),
        "audio": torch.tensor([[1.0, 3.0]]),
        "text": torch.tensor([5, 1, 7, 0, 0]),
        "mask": torch.tensor([False, True, True]),
    }
    stats = input_statistics(sample, image_bytes=None, audio_bytes=44, text_chars=3)
    assert stats["image_bytes"] is None and stats["image_mean"] is None and stats["image_std"] is None
    assert stats["audio_bytes"] == 44 and stats["audio_mean"] == 2.0
    assert stats["text_chars"] == 3 and stats["text_tokens"] == 3 and stats["text_unk_share"] == pytest.approx(1 / 3)
    assert set(stats) == set(STAT_COLUMNS)


def test_a_log_written_before_trust_gains_its_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    """Schema 1 had no trust columns: opening it adds them (NULL for old rows), nothing is lost."""
    inference_log = log_module

    old = tmp_path / "old.sqlite"
    added = (*inference_log.TRUST_COLUMNS, *inference_log.SET_ASIDE_COLUMNS)
    columns_1 = [name for name in inference_log._COLUMNS if name not in added]
    conn = sqlite3.connect(old)
    conn.execute(f"CREATE TABLE inference ({', '.join(columns_1)}, true_label, feedback_ts, PRIMARY KEY (request_id))")
    values = ["old", 1.0, "predict", "v1", 1, 0, 1, *([None] * len(inference_log.STAT_COLUMNS))]
    values += [b"\x00" * 4, "one", 0.9, "{}", 2.0]
    conn.execute(f"INSERT INTO inference ({', '.join(columns_1)}) VALUES ({', '.join('?' * len(values))})", values)
    conn.commit()
    conn.close()
    inference_log.ensure_schema(old)
    frame = inference_log.read_log(old)
    assert list(frame["request_id"]) == ["old"]
    assert frame["audio_trust"].isna().all() and not frame["audio_set_aside"].any()


def test_shadow_evidence_counts_only_this_champion_and_challenger(log):
    """Agreement, failures and live accuracy of both, on exactly the requests both scored."""
    champion, challenger = "mmfuse:a", "mmfuse-shadow:b"
    # (champion's label, challenger's label or None for no answer, true label or None)
    rows = [("one", "one", "one"), ("one", "zero", "zero"), ("zero", "zero", None), ("one", None, "one")]
    for k, (ours, theirs, truth) in enumerate(rows):
        log.record(record(f"r{k}", prediction=ours, version=champion))
        error = None if theirs else "unsupported"
        log.record(ShadowRecord(f"r{k}", time.time(), challenger, theirs, 0.9 if theirs else None, error))
    log.record(record("other-champion", version="mmfuse:old"))  # served by another champion
    log.record(ShadowRecord("other-champion", time.time(), challenger, "one", 0.9))
    log.record(record("unshadowed", version=champion))  # the shadow queue was full
    assert log.flush()
    for k, (_, _, truth) in enumerate(rows):
        if truth:
            assert log.feedback(f"r{k}", truth) is not None
    seen = shadow_evidence(log.path, champion, challenger)
    assert (seen.requests, seen.agreed, seen.failed, seen.labelled) == (4, 2, 1, 3)
    assert (seen.challenger_correct, seen.champion_correct) == (2, 2)
    assert seen.agreement == 50.0 and seen.challenger_accuracy == seen.champion_accuracy == pytest.approx(66.6667)
    assert shadow_evidence(log.path, champion, "mmfuse-shadow:other").requests == 0
    empty = shadow_evidence(log.path.parent / "absent.sqlite", champion, challenger)
    assert empty.requests == 0 and empty.agreement is None and empty.challenger_accuracy is None


def test_shadow_rows_follow_the_retention_of_the_log(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite", max_rows=2, queue_size=100, max_age_days=90)
    for k in range(4):
        log.record(ShadowRecord(f"r{k}", time.time(), "mmfuse-shadow:b", "one", 0.5))
    log.close()
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        assert [r[0] for r in conn.execute("SELECT request_id FROM shadow ORDER BY rowid")] == ["r2", "r3"]


def _captured(path: Path) -> dict[str, tuple]:
    with sqlite3.connect(path) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT request_id, image, audio, text FROM captured")}


def _media(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in media_root(path).glob("??/*")}


def test_captured_inputs_are_stored_once_per_content_and_forget_removes_what_only_one_request_had(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite", 1000, 100, 90, capture_max_bytes=10_000)
    for request_id, image, audio in (("a", b"img-1", b"wav-1"), ("b", b"img-1", b"wav-2")):
        log.record(record(request_id))
        log.record(CaptureRecord(request_id, time.time(), image, audio, "seven"))
    log.record(record("c"))  # not captured
    assert log.flush()
    rows = _captured(log.path)
    assert set(rows) == {"a", "b"} and rows["a"][0] == rows["b"][0]  # the same image, stored once
    media = _media(log.path)
    assert sorted(media.values()) == [b"img-1", b"wav-1", b"wav-2"] and rows["a"][2] == "seven"
    assert all(hashlib.sha256(data).hexdigest() == name for name, data in media.items())

    assert log.forget("a") and not log.forget("a")
    assert sorted(_media(log.path).values()) == [b"img-1", b"wav-2"]  # b still names the image
    assert set(_captured(log.path)) == {"b"} and "a" not in set(read_log(log.path)["request_id"])
    log.close()


def test_captures_past_the_size_cap_are_skipped_and_counted(tmp_path):
    log = InferenceLog(tmp_path / "log.sqlite", 1000, 100, 90, capture_max_bytes=10)
    for request_id, image in (("a", b"123456"), ("b", b"abcdefgh")):
        log.record(record(request_id))
        log.record(CaptureRecord(request_id, time.time(), image, None, None))
    log.close()
    assert set(_captured(log.path)) == {"a"} and log.capture_skipped == 1
    assert list(_media(log.path).values()) == [b"123456"]


def test_retention_takes_captured_inputs_and_their_media_with_the_request(tmp_path, monkeypatch):
    monkeypatch.setattr(log_module, "_CAPTURE_GRACE_S", 0.0)
    log = InferenceLog(tmp_path / "log.sqlite", max_rows=2, queue_size=100, max_age_days=90, capture_max_bytes=1000)
    for k in range(3):
        log.record(record(f"r{k}"))
        log.record(CaptureRecord(f"r{k}", time.time(), f"image {k}".encode(), None, None))
        assert log.flush()
    log.close()
    assert set(_captured(log.path)) == {"r1", "r2"}
    assert sorted(_media(log.path).values()) == [b"image 1", b"image 2"]


@pytest.mark.parametrize(
    ("location", "words"),
    [
        ("mysql://u@127.0.0.1/db", "unsupported database 'mysql'"),
        (
            "postgresql://u:s3cret@127.0.0.1:1/db",
            "cannot open the inference log postgresql+psycopg://u:***@127.0.0.1:1/db",
        ),
    ],
)
def test_a_log_location_that_cannot_be_used_is_named_without_its_password(location, words):
    with pytest.raises(LogLocationError) as caught:
        InferenceLog(location, max_rows=10, queue_size=10, max_age_days=1)
    assert words in str(caught.value) and "s3cret" not in str(caught.value)


def test_a_database_url_is_taken_as_given_and_its_media_go_to_the_capture_dir(monkeypatch, tmp_path):
    url = "postgresql://u@db.example:5432/mmfuse"
    monkeypatch.setenv(LOG_ENV, url)
    assert log_path(project=tmp_path) == url
    monkeypatch.setenv(CAPTURE_ENV, str(tmp_path / "shared"))
    assert media_root(url) == tmp_path / "shared" and media_root(tmp_path / "x.sqlite") == tmp_path / "captured"


def test_rows_that_share_a_time_come_back_in_the_order_written(log):
    """A batch's predictions share one timestamp: the reader keeps the order the service logged them."""
    ids = [f"{(k * 7) % 12:032x}" for k in range(12)]  # not in sorted order
    for request_id in ids:
        log.record(record(request_id, ts=1_800_000_000.0))
    assert log.flush()
    assert read_log(log.path)["request_id"].tolist() == ids
