"""The validate stage: clean data passes; each kind of bad data fails naming the rows; warnings do not fail."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from payloads import bomb_png, truncated_wav
from PIL import Image

from mmfuse.data.manifest import REQUIRED_COLUMNS, read_manifest
from mmfuse.data.media import LooseMedia
from mmfuse.errors import MediaError, ValidationFailed
from mmfuse.params.preprocess import PreprocessParams, TextParams
from mmfuse.params.validate import ValidateParams
from mmfuse.preprocess.text import clean_text
from mmfuse.validation import run_validation
from mmfuse.validation.facts import audio_facts, collect_facts, image_facts

SR = 8000


def tone(freq: float, seconds: float = 0.5, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return amplitude * np.sin(2 * np.pi * freq * t)


def write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)


def write_wav(path: Path, signal: np.ndarray, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal, SR, subtype=subtype)


@dataclass
class Dataset:
    """A tiny dataset on disk; tests edit `rows` or the files, then validate."""

    root: Path
    reports: Path
    rows: list[dict[str, str]] = field(default_factory=list)
    contract: PreprocessParams = PreprocessParams()

    def row(self, sample_id: str) -> dict[str, str]:
        return next(r for r in self.rows if r["sample_id"] == sample_id)

    def manifest(self) -> Path:
        path = self.root / "manifest.csv"
        pd.DataFrame(self.rows, columns=[*REQUIRED_COLUMNS, "speaker"]).to_csv(path, index=False)
        return path

    @property
    def summary_path(self) -> Path:
        return self.reports / "validation.json"

    def validate(self) -> dict:
        return run_validation(
            self.manifest(), ValidateParams(), self.contract, self.reports / "data_docs", self.summary_path
        )

    def fail(self) -> tuple[str, dict]:
        """Validate expecting a critical failure: the message and the summary written before raising."""
        with pytest.raises(ValidationFailed) as info:
            self.validate()
        return str(info.value), json.loads(self.summary_path.read_text())


def entry(summary: dict, name: str) -> dict:
    return next(e for e in summary["expectations"] if e["name"] == name)


def failed_names(summary: dict) -> set[str]:
    return {e["name"] for e in summary["expectations"] if not e["success"]}


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """Six samples, two labels, every split; each with its own image, clip and text."""
    ds = Dataset(root=tmp_path / "ds", reports=tmp_path / "reports")
    plan = [("train", "0"), ("train", "1"), ("train", "0"), ("train", "1"), ("val", "0"), ("test", "1")]
    for i, (split, label) in enumerate(plan):
        write_png(ds.root / "images" / f"{i}.png", seed=i)
        write_wav(ds.root / "audio" / f"{i}.wav", tone(300 + 50 * i))
        ds.rows.append(
            {
                "sample_id": f"s{i}",
                "label": label,
                "split": split,
                "image": f"images/{i}.png",
                "audio": f"audio/{i}.wav",
                "text": f"digit {label}",
                "speaker": "alice",
            }
        )
    return ds


def test_clean_dataset_passes_and_writes_docs(dataset):
    summary = dataset.validate()
    assert summary["success"] is True
    assert (summary["critical_failures"], summary["warnings"]) == (0, 0)
    assert summary["rows"] == 6
    assert summary["rows_per_split"] == {"train": 4, "val": 1, "test": 1}
    assert summary["modalities"] == {"image": 6, "audio": 6, "text": 6}
    assert json.loads(dataset.summary_path.read_text()) == summary
    assert (dataset.reports / "data_docs" / "index.html").is_file()
    assert {e["suite"] for e in summary["expectations"]} == {"manifest", "media", "leakage"}
    assert entry(summary, "audio_clipping_low")["critical"] is False
    assert entry(summary, "audio_decodable")["critical"] is True
    docs = list((dataset.reports / "data_docs").rglob("*.html"))
    assert any("CRITICAL: Every referenced clip must decode." in p.read_text() for p in docs)


def test_corrupt_wav_fails_naming_the_sample(dataset):
    (dataset.root / "audio" / "2.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    message, summary = dataset.fail()
    assert summary["success"] is False
    assert failed_names(summary) == {"audio_decodable"}
    hit = entry(summary, "audio_decodable")
    assert hit["unexpected_count"] == 1
    assert hit["examples"] == [{"row": 3, "sample_id": "s2", "value": "Format not recognised."}]
    assert "media/audio_decodable" in message and "s2 (row 3)" in message and "Format not recognised" in message
    assert str(dataset.reports / "data_docs" / "index.html") in message
    assert (dataset.reports / "data_docs" / "index.html").is_file()  # docs are written before raising


def test_truncated_png_fails_naming_the_sample(dataset):
    png = dataset.root / "images" / "4.png"
    png.write_bytes(png.read_bytes()[:200])
    message, summary = dataset.fail()
    assert failed_names(summary) == {"image_decodable"}
    [example] = entry(summary, "image_decodable")["examples"]
    assert example["sample_id"] == "s4" and "truncated" in example["value"]
    assert "media/image_decodable" in message and "s4 (row 5)" in message


def test_a_decompression_bomb_and_a_cut_short_wav_fail_as_they_do_in_serving(dataset):
    (dataset.root / "images" / "1.png").write_bytes(bomb_png())
    (dataset.root / "audio" / "3.wav").write_bytes(truncated_wav())
    message, summary = dataset.fail()
    assert failed_names(summary) == {"image_decodable", "audio_decodable"}
    [image] = entry(summary, "image_decodable")["examples"]
    assert image["sample_id"] == "s1" and "decompression bomb" in image["value"]
    [audio] = entry(summary, "audio_decodable")["examples"]
    assert audio["sample_id"] == "s3" and "truncated" in audio["value"]


def test_missing_file_is_reported_as_missing(dataset):
    (dataset.root / "images" / "1.png").unlink()
    message, summary = dataset.fail()
    assert entry(summary, "image_decodable")["examples"] == [{"row": 2, "sample_id": "s1", "value": "missing"}]
    assert "'missing'" in message


def test_unsafe_paths_fail_and_are_never_opened(dataset, tmp_path):
    outside = tmp_path / "x.png"
    outside.write_bytes(b"not an image")  # were it opened, image_decodable would fail too
    dataset.row("s1")["image"] = "../x.png"
    dataset.row("s3")["image"] = str(outside)
    message, summary = dataset.fail()
    assert failed_names(summary) == {"image_path_safe"}
    examples = entry(summary, "image_path_safe")["examples"]
    assert examples == [
        {"row": 2, "sample_id": "s1", "value": "'../x.png' leaves the dataset root"},
        {"row": 4, "sample_id": "s3", "value": f"{str(outside)!r} is absolute"},
    ]
    assert entry(summary, "image_decodable")["unexpected_count"] == 0
    assert "manifest/image_path_safe" in message and "2 row(s) failed" in message


def test_row_without_any_modality_fails(dataset):
    dataset.row("s5").update(image="", audio="", text="")
    message, summary = dataset.fail()
    # s5 is the only test row: the test split is now also left without any modality
    assert failed_names(summary) == {
        "has_modality",
        "image_in_every_split",
        "audio_in_every_split",
        "text_in_every_split",
    }
    assert entry(summary, "has_modality")["examples"][0]["sample_id"] == "s5"
    assert summary["modalities"] == {"image": 5, "audio": 5, "text": 5}
    assert "manifest/has_modality" in message and "s5 (row 6)" in message


@pytest.mark.parametrize("text", [" \t ", "??", "\u200b"], ids=["whitespace", "punctuation", "zero-width space"])
def test_a_text_that_normalises_to_nothing_is_no_text(dataset, text):
    dataset.row("s5").update(image="", audio="", text=text)
    _, summary = dataset.fail()
    assert "has_modality" in failed_names(summary)
    assert entry(summary, "has_modality")["examples"][0]["sample_id"] == "s5"
    assert summary["modalities"]["text"] == 5


def test_a_modality_missing_from_a_split_fails_naming_it(dataset):
    """E.g. a dataset of images and audio only: mmfuse needs each modality in every split."""
    for row in dataset.rows:
        if row["split"] != "train":
            row["text"] = ""
    message, summary = dataset.fail()
    assert failed_names(summary) == {"text_in_every_split"}
    assert entry(summary, "text_in_every_split")["missing"] == ["test", "val"]
    assert not entry(summary, "image_in_every_split")["missing"]
    assert "manifest/text_in_every_split" in message and "missing: test, val" in message


def test_same_clip_in_train_and_test_is_leakage(dataset):
    (dataset.root / "audio" / "5.wav").write_bytes((dataset.root / "audio" / "0.wav").read_bytes())
    message, summary = dataset.fail()
    assert failed_names(summary) == {"audio_not_in_other_split"}
    leak = entry(summary, "audio_not_in_other_split")
    assert leak["unexpected_count"] == 2
    assert [e["sample_id"] for e in leak["examples"]] == ["s0", "s5"]
    assert leak["examples"][0]["value"].endswith("as test sample s5")
    assert leak["examples"][1]["value"].endswith("as train sample s0")
    assert "leakage/audio_not_in_other_split" in message


def test_shared_clip_within_a_split_is_not_leakage(dataset):
    dataset.row("s2")["audio"] = dataset.row("s0")["audio"]
    assert dataset.validate()["success"] is True


def test_label_unseen_in_train_fails(dataset):
    dataset.row("s5")["label"] = "7"
    message, summary = dataset.fail()
    assert failed_names(summary) == {"label_seen_in_train"}
    assert entry(summary, "label_seen_in_train")["examples"] == [{"row": 6, "sample_id": "s5", "value": "7"}]
    assert "manifest/label_seen_in_train" in message and "'7'" in message


def test_duplicate_sample_id_fails(dataset):
    dataset.row("s3")["sample_id"] = "s1"
    message, summary = dataset.fail()
    assert failed_names(summary) == {"sample_id_unique"}
    assert entry(summary, "sample_id_unique")["unexpected_count"] == 2
    assert "manifest/sample_id_unique" in message and "s1 (row 2)" in message and "s1 (row 4)" in message


def test_unknown_split_and_out_of_range_media_fail(dataset):
    dataset.row("s1")["split"] = "dev"
    sf.write(dataset.root / "audio" / "3.wav", tone(400), 4000)  # below preprocess.audio.min_input_rate
    dataset.row("s4")["text"] = "x" * 1001  # over preprocess.text.max_chars
    _, summary = dataset.fail()
    assert failed_names(summary) == {"split_known", "audio_sample_rate_allowed", "text_length_in_range"}
    assert entry(summary, "audio_sample_rate_allowed")["examples"] == [{"row": 4, "sample_id": "s3", "value": 4000}]
    assert entry(summary, "text_length_in_range")["examples"] == [{"row": 5, "sample_id": "s4", "value": 1001}]
    assert summary["critical_failures"] == 3


def test_the_limits_are_the_input_contract_that_preprocessing_and_the_service_read(dataset):
    """One contract: a tighter preprocess.text.max_chars is what validation enforces too."""
    dataset.contract = PreprocessParams(text=TextParams(max_chars=7))  # the other rows' texts are 7 long
    dataset.row("s4")["text"] = "x" * 8
    _, summary = dataset.fail()
    assert failed_names(summary) == {"text_length_in_range"}
    assert entry(summary, "text_length_in_range")["examples"] == [{"row": 5, "sample_id": "s4", "value": 8}]
    with pytest.raises(MediaError, match="8 characters is over the limit of 7"):
        clean_text("x" * 8, dataset.contract.text)


def test_mostly_silent_clip_is_only_a_warning(dataset, capsys):
    write_wav(dataset.root / "audio" / "1.wav", np.concatenate([tone(500, 0.02), np.zeros(SR)]))
    summary = dataset.validate()
    assert summary["success"] is True and summary["critical_failures"] == 0
    assert summary["warnings"] == 1
    warning = entry(summary, "audio_silence_low")
    assert warning["success"] is False and warning["critical"] is False
    assert warning["examples"][0]["sample_id"] == "s1" and warning["examples"][0]["value"] > 0.95
    assert "warning: media/audio_silence_low" in capsys.readouterr().err


@pytest.mark.parametrize("break_it", [False, True], ids=["clean", "failing"])
def test_summary_is_byte_identical_across_runs(dataset, break_it):
    if break_it:
        (dataset.root / "audio" / "2.wav").write_bytes(b"RIFF garbage")
        (dataset.root / "images" / "3.png").write_bytes(b"\x89PNG garbage")
    runs = []
    for _ in range(2):
        try:
            dataset.validate()
        except ValidationFailed:
            assert break_it
        runs.append(dataset.summary_path.read_bytes())
    assert runs[0] == runs[1]
    assert b"0x" not in runs[0]  # no object addresses in error texts


def test_process_pool_gives_the_same_facts(dataset):
    frame = read_manifest(dataset.manifest())
    in_process = collect_facts(frame, dataset.root, -50.0, workers=1)
    pooled = collect_facts(frame, dataset.root, -50.0, workers=2, chunk_size=2)
    pd.testing.assert_frame_equal(in_process, pooled)
    assert in_process["image_decodable"].tolist() == [True] * 6


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_link_out_of_the_root_is_refused(dataset, tmp_path):
    write_png(tmp_path / "elsewhere.png", seed=9)
    (dataset.root / "images" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    dataset.row("s0")["image"] = "images/link.png"
    _, summary = dataset.fail()
    assert failed_names(summary) == {"image_decodable"}
    assert "through a link" in entry(summary, "image_decodable")["examples"][0]["value"]


def test_clipping_counts_full_scale_by_subtype(tmp_path):
    signal = tone(440, amplitude=0.5)
    signal[:80] = 1.0  # 80 of 4000 samples at full scale
    write_wav(tmp_path / "int.wav", signal, subtype="PCM_16")
    assert audio_facts(LooseMedia(tmp_path), "int.wav", -50.0)["clipping_share"] == pytest.approx(0.02)
    loud = signal.copy()
    loud[:80] = 0.9995  # the integer rail, but not full scale for float data
    loud[80:120] = -1.5  # float data may exceed full scale; it clips once played
    write_wav(tmp_path / "float.wav", loud, subtype="FLOAT")
    facts = audio_facts(LooseMedia(tmp_path), "float.wav", -50.0)
    assert facts["clipping_share"] == pytest.approx(0.01)
    assert facts["peak"] == pytest.approx(1.5)


def test_image_facts(tmp_path):
    write_png(tmp_path / "a.png", seed=0)
    facts = image_facts(LooseMedia(tmp_path), "a.png")
    assert (facts["decodable"], facts["width"], facts["height"], facts["mode"]) == (True, 28, 28, "L")
    assert len(facts["sha256"]) == 64
    assert image_facts(LooseMedia(tmp_path), "nope.png") == {"decodable": False, "error": "missing"}
