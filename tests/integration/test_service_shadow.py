"""Shadow serving: the store's challenger scores the champion's traffic; clients only see the champion."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service_support import build_artifact, png, promoted_champion, running, wav

from mmfuse.inference import registry
from mmfuse.inference.log import shadow_evidence
from mmfuse.inference.predictor import Predictor, RawSample
from mmfuse.serving import service


@pytest.fixture
def challenger(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A challenger without audio (so an audio-only request is one it cannot answer), in shadow."""
    promoted_champion()
    artifact = build_artifact(tmp_path / "challenger", ("image", "text"))
    tag = registry.shadow(artifact, {"source": "service tests"})
    yield tag, artifact
    registry.end_shadow("test over")


def _shadow_rows(log: Path) -> dict[str, tuple]:
    with sqlite3.connect(log) as conn:
        rows = conn.execute("SELECT request_id, model_version, prediction, confidence, error FROM shadow").fetchall()
    return {row[0]: row[1:] for row in rows}


def test_the_challenger_scores_every_answered_request_and_answers_none(challenger, tmp_path):
    tag, artifact = challenger
    champion = promoted_champion()
    log = tmp_path / "log.sqlite"
    samples = [RawSample(image=png(), text="one"), RawSample(audio=wav()), RawSample(text="two")]
    with running(log) as client:
        answers = [
            client.post("/predict", files={"image": ("d.png", png(), "image/png")}, data={"text": "one"}),
            client.post("/predict", files={"audio": ("c.wav", wav(), "audio/wav")}),
            client.post("/predict_batch", json={"samples": [{"text": "two"}]}),
        ]
        refused = client.post("/predict", files={"image": ("x.png", b"nope", "image/png")})
        assert refused.status_code == 422  # refused: scored by neither
    bodies = [answers[0].json(), answers[1].json(), answers[2].json()["predictions"][0]]
    assert all(r.status_code == 200 for r in answers) and {b["model_version"] for b in bodies} == {champion}

    rows = _shadow_rows(log)  # the shutdown let the shadow finish, then wrote the log
    assert set(rows) == {b["request_id"] for b in bodies}
    direct = Predictor(artifact, tag)
    for sample, body in zip(samples, bodies):
        version, label, confidence, error = rows[body["request_id"]]
        assert version == tag
        if sample.audio is not None:  # the challenger reads no audio: no answer, and why
            assert (label, confidence, error) == (None, None, "unsupported")
            continue
        prepared = direct.prepare(sample)
        expected = direct.explain(prepared, direct.forward([prepared])[0], "x")
        assert (label, error) == (expected.label, None) and confidence == pytest.approx(expected.confidence)
    seen = shadow_evidence(log, champion, tag)
    assert (seen.requests, seen.failed) == (3, 1)


def test_with_shadow_off_or_no_challenger_nothing_is_scored_in_shadow(challenger, tmp_path, monkeypatch):
    monkeypatch.setattr(service, "SERVE", service.SERVE.model_copy(update={"shadow": False}))
    with running(tmp_path / "off.sqlite") as client:
        assert client.post("/predict", data={"text": "one"}).status_code == 200
    assert _shadow_rows(tmp_path / "off.sqlite") == {}
    monkeypatch.undo()
    registry.end_shadow("test")
    with running(tmp_path / "none.sqlite") as client:
        assert client.post("/predict", data={"text": "one"}).status_code == 200
    assert _shadow_rows(tmp_path / "none.sqlite") == {}


def test_a_challenger_that_cannot_load_never_stops_the_champion(challenger, tmp_path, caplog):
    tag, _ = challenger
    config = Path(registry.challenger().path) / "config.json"
    config.write_text("{" * config.stat().st_size)  # unreadable, yet the size the store recorded
    assert str(registry.challenger().tag) == tag
    with running(tmp_path / "log.sqlite") as client:
        assert client.post("/predict", data={"text": "one"}).status_code == 200
    assert _shadow_rows(tmp_path / "log.sqlite") == {}
    assert f"the challenger {tag} cannot be loaded" in caplog.text
