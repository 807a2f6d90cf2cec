"""Harvest: labelled captures become a validated dataset; ingest merges it through data.extra."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from log_records import record
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data.manifest import RECENT_SPLIT, dataset_manifest, read_manifest, resolve_media
from mmfuse.data.media import open_media
from mmfuse.errors import ConfigError, ManifestError
from mmfuse.inference.log import CaptureRecord, InferenceLog, labelled_captures
from mmfuse.monitoring.harvest import SUMMARY, harvest, holdout_ids, windows
from mmfuse.params import load_params
from mmfuse.params.data import DataParams
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.validate import ValidateParams
from mmfuse.stages.ingest import run as ingest
from mmfuse.validation.runner import run_validation


def _png(label: int, seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((28, 28)) * 60).astype(np.uint8)
    pixels[4 + 6 * label : 10 + 6 * label, 4:24] = 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _wav(label: int, seed: int) -> bytes:
    t = np.arange(1600) / 8000
    tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * label) * t) + 0.05 * np.random.default_rng(seed).standard_normal(
        t.size
    )
    out = io.BytesIO()
    sf.write(out, tone, 8000, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture
def ingested(tiny_dataset, tmp_path) -> Path:
    return ingest(sources=tmp_path / "sources", raw=tmp_path / "raw", params=DataParams(dataset=str(tiny_dataset)))


def _traffic(tmp_path: Path, ingested: Path) -> tuple[Path, dict[str, str]]:
    """A log with captured, labelled requests: new samples, and each kind of sample harvest must refuse."""
    test_image = open_media(ingested.parent).read(read_manifest(ingested).query("split == 'test'")["image"].iloc[0])
    log = InferenceLog(tmp_path / "inference" / "log.sqlite", 1000, 100, 90, capture_max_bytes=10_000_000)
    requests = {f"new{k}": (_png(k % 3, k), _wav(k % 3, k), f"class {k % 3}", str(k % 3)) for k in range(10)}
    requests["unknown-class"] = (_png(1, 50), _wav(1, 50), "nine", "9")
    requests["test-image"] = (test_image, _wav(0, 51), "", "0")
    requests["corrupt"] = (b"\x89PNG\r\n\x1a\n broken", None, "class 2", "2")
    requests["repeat"] = requests["new0"]
    reasons = {"unknown-class": "label_seen_in_train", "test-image": "image_not_in_other_split"}
    reasons |= {"corrupt": "image_decodable", "repeat": "sample_not_duplicated"}
    try:
        for k, (request_id, (image, audio, text, label)) in enumerate(requests.items()):
            log.record(record(request_id, ts=time.time() + k))
            log.record(CaptureRecord(request_id, time.time() + k, image, audio, text or None))
        log.record(record("unlabelled"))
        log.record(CaptureRecord("unlabelled", time.time(), _png(0, 99), None, None))
        log.record(record("not-captured"))
        assert log.flush()
        for request_id, (*_, label) in requests.items():
            assert log.feedback(request_id, label) is not None
        assert log.feedback("not-captured", "1") is not None
    finally:
        log.close()
    return log.path, reasons


def _harvest(log: Path, tmp_path: Path, ingested: Path, second: int = 0):
    return harvest(
        log,
        tmp_path / "feedback",
        ingested,
        holdout=0.3,
        validate=ValidateParams(),
        contract=PreprocessParams(),
        docs_dir=tmp_path / "docs",
        now=datetime(2026, 11, 30, 18, 0, second, tzinfo=timezone.utc),
    )


def test_labelled_captures_become_a_dataset_and_bad_rows_are_refused_with_the_validate_stage_words(tmp_path, ingested):
    log, reasons = _traffic(tmp_path, ingested)
    result = _harvest(log, tmp_path, ingested)
    assert result.candidates == 14  # labelled and captured; not the unlabelled or uncaptured requests
    assert set(result.refused) == set(reasons)
    for request_id, check in reasons.items():
        assert any(check in line for line in result.refused[request_id]), result.refused[request_id]
    frame = read_manifest(result.manifest)
    assert sorted(frame["request_id"]) == sorted(f"new{k}" for k in range(10))
    assert result.kept == {RECENT_SPLIT: 3, "train": 7}
    recent = set(frame.loc[frame["split"].eq(RECENT_SPLIT), "request_id"])
    assert recent == holdout_ids(labelled_captures(log), 0.3) - set(reasons)
    assert (frame["sample_id"] == "fb-" + frame["request_id"]).all()
    for row in frame.itertuples():  # media are the captured bytes, under names the content chose
        assert row.image.endswith(".png") and row.audio.endswith(".wav")
        k = int(row.request_id.removeprefix("new"))
        assert resolve_media(result.path, row.image).read_bytes() == _png(k % 3, k)
    named = {*frame["image"], *frame["audio"]}
    stored = {p.relative_to(result.path).as_posix() for p in result.path.rglob("*") if p.is_file()}
    assert stored == named | {"manifest.csv", SUMMARY}  # no media of a refused row
    assert not list((tmp_path / "feedback").glob(".*"))  # no staging left behind

    again = _harvest(log, tmp_path, ingested, second=1)  # judged against the first harvest too
    assert again.candidates == 4 and again.path is None and set(again.refused) == set(reasons)
    assert windows(tmp_path / "feedback") == [result.manifest]


def test_a_harvest_merged_through_data_extra_passes_the_validate_stage(tmp_path, tiny_dataset, ingested):
    log, _ = _traffic(tmp_path, ingested)
    result = _harvest(log, tmp_path, ingested)
    params = DataParams(dataset=str(tiny_dataset), extra=[str(result.manifest)])
    merged = ingest(sources=tmp_path / "sources", raw=tmp_path / "raw", params=params)
    frame = read_manifest(merged)
    extra = frame[frame["sample_id"].str.startswith("fb-")]
    assert len(frame) == len(read_manifest(tiny_dataset)) + 10 and len(extra) == 10
    assert extra["image"].str.startswith(f"extra/{result.path.name}/images/").all()
    media = open_media(merged.parent)
    for row in extra.itertuples():
        assert media.read(row.image) == (result.path / row.image.split("/", 2)[2]).read_bytes()
    index = (merged.parent / "media" / "index.csv").read_text().splitlines()[1:]
    named = {p for column in ("image", "audio") for p in frame[column] if p}
    assert sorted(line.split(",")[0] for line in index) == sorted(named)  # each medium packed once
    summary = run_validation(merged, ValidateParams(), PreprocessParams(), tmp_path / "docs2", tmp_path / "v.json")
    assert summary["success"] and summary["rows_per_split"][RECENT_SPLIT] == 3


def test_an_extra_dataset_may_not_add_test_rows_and_nothing_is_written(tmp_path, tiny_dataset, ingested):
    before = dataset_manifest(DataParams(dataset=str(tiny_dataset)), tmp_path / "raw").read_bytes()
    sneaky = tmp_path / "sneaky" / "manifest.csv"
    sneaky.parent.mkdir()
    pd.DataFrame([{"sample_id": "s", "label": "0", "split": "test", "image": "", "audio": "", "text": "zero"}]).to_csv(
        sneaky, index=False
    )
    params = DataParams(dataset=str(tiny_dataset), extra=[str(sneaky)])
    with pytest.raises(ManifestError, match="extra rows must be train or test_recent"):
        ingest(sources=tmp_path / "sources", raw=tmp_path / "raw", params=params)
    with pytest.raises(ConfigError, match="does not exist"):
        ingest(
            sources=tmp_path / "sources",
            raw=tmp_path / "raw",
            params=DataParams(dataset=str(tiny_dataset), extra=[str(tmp_path / "gone" / "manifest.csv")]),
        )
    dangling = tmp_path / "dangling" / "manifest.csv"
    (dangling.parent / "images").mkdir(parents=True)
    (dangling.parent / "images" / "ghost.png").symlink_to(tmp_path / "nowhere.png")
    pd.DataFrame(
        [{"sample_id": "g", "label": "0", "split": "train", "image": "images/ghost.png", "audio": "", "text": ""}]
    ).to_csv(dangling, index=False)
    index = dataset_manifest(DataParams(dataset=str(tiny_dataset)), tmp_path / "raw").parent / "media" / "index.csv"
    media_before = index.read_bytes()
    with open(tiny_dataset, "a") as handle:
        handle.write("late,0,train,images/train-0-0.png,,\n")  # a change to the base that must not half-land
    with pytest.raises(ManifestError, match=r"ghost\.png is a link to .*nowhere\.png"):
        ingest(
            sources=tmp_path / "sources",
            raw=tmp_path / "raw",
            params=DataParams(dataset=str(tiny_dataset), extra=[str(dangling)]),
        )
    assert dataset_manifest(DataParams(dataset=str(tiny_dataset)), tmp_path / "raw").read_bytes() == before
    assert index.read_bytes() == media_before


def test_the_cli_harvests_into_a_dvc_versioned_window_staged_in_git(tmp_path, tiny_dataset, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_dataset.parent, project / "data" / "external" / "tiny")
    (project / "params.yaml").write_text("data:\n  dataset: data/external/tiny/manifest.csv\n")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=project, env=env, check=True)
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", env["PATH"])
    ingested = ingest(sources=project / "data" / "sources", raw=project / "data" / "raw", params=load_params().data)
    log, reasons = _traffic(tmp_path, ingested)
    shown = CliRunner().invoke(app, ["harvest", "--log", str(log)], terminal_width=300)
    assert shown.exit_code == 0, shown.output
    assert "harvested data/external/feedback/" in shown.output and "3 test_recent, 7 train; 4 refused" in shown.output
    assert all(f"refused {request_id}" in shown.output for request_id in reasons)
    assert "dvc exp run -S 'data.extra=" in shown.output
    (window,) = (project / "data" / "external" / "feedback").glob("*.dvc")
    staged = subprocess.run(
        ["git", "diff", "--cached", "--name-only"], cwd=project, env=env, capture_output=True, text=True
    )
    assert f"data/external/feedback/{window.name}" in staged.stdout.split()
    again = CliRunner().invoke(app, ["harvest", "--log", str(log)], terminal_width=300)
    assert again.exit_code == 0 and "nothing harvested: 4 new labelled capture(s), none kept" in again.output
