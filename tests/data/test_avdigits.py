"""Building avdigits: pairing keeps splits disjoint, text noise follows its model, builds are deterministic."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from trees import tree_digest

from mmfuse.data.avdigits import DIGIT_WORDS, build_avdigits, noisy_transcript, read_idx
from mmfuse.data.media import open_media
from mmfuse.data.sources import FSDD, MNIST, fetch_source
from mmfuse.errors import ConfigError, SourceError
from mmfuse.params.data import DataParams, TextNoise


@pytest.fixture
def sources(tiny_mirror, tmp_path) -> Path:
    dest = tmp_path / "sources"
    fetch_source(FSDD, dest, mirror=tiny_mirror["root"], expected=tiny_mirror["sums"]["fsdd"])
    fetch_source(MNIST, dest, mirror=tiny_mirror["root"], expected=tiny_mirror["sums"]["mnist"])
    return dest


def _take(clip_name: str) -> int:
    return int(clip_name.removesuffix(".wav").split("_")[2])


def test_standard_split_pairs_within_split_only(sources, tmp_path):
    manifest = build_avdigits(sources, tmp_path / "raw", DataParams(preset="clean"))
    assert manifest["split"].value_counts().to_dict() == {"train": 70, "val": 10, "test": 20}
    assert sorted(manifest.loc[manifest.split == "val", "label"]) == [str(d) for d in range(10)]  # stratified
    takes = manifest["clip"].map(_take)
    assert set(takes[manifest.split == "test"]) == {0}
    assert set(takes[manifest.split == "val"]) == {5}
    assert set(takes[manifest.split == "train"]) == {10}
    assert (manifest["clip"].str[0] == manifest["label"]).all()  # clip digit matches the image label
    clips_by_split = manifest.groupby("split")["clip"].apply(set)
    assert not (clips_by_split["train"] & clips_by_split["test"]) and not (
        clips_by_split["train"] & clips_by_split["val"]
    )
    assert manifest["sample_id"].is_unique


def test_speaker_split_holds_the_speaker_out(sources, tmp_path):
    manifest = build_avdigits(
        sources, tmp_path / "raw", DataParams(preset="clean", split="speaker", holdout_speaker="bob")
    )
    assert set(manifest.loc[manifest.split == "test", "speaker"]) == {"bob"}
    assert "bob" not in set(manifest.loc[manifest.split != "test", "speaker"])


def test_unknown_holdout_speaker_names_the_choices(sources, tmp_path):
    with pytest.raises(ConfigError, match=r"carol.*\['alice', 'bob'\]"):
        build_avdigits(sources, tmp_path / "raw", DataParams(split="speaker", holdout_speaker="carol"))
    assert not (tmp_path / "raw").exists()


def test_build_is_deterministic(sources, tmp_path):
    build_avdigits(sources, tmp_path / "a", DataParams())
    build_avdigits(sources, tmp_path / "b", DataParams())
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    build_avdigits(sources, tmp_path / "c", DataParams(seed=7))
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_hard_preset_degrades_image_and_audio(sources, tmp_path):
    clean = build_avdigits(sources, tmp_path / "clean", DataParams(preset="clean"))
    build_avdigits(sources, tmp_path / "hard", DataParams(preset="hard"))
    row, clean_media, hard_media = clean.iloc[0], open_media(tmp_path / "clean"), open_media(tmp_path / "hard")
    clean_audio, rate = sf.read(io.BytesIO(clean_media.read(row.audio)))
    hard_audio, _ = sf.read(io.BytesIO(hard_media.read(row.audio)))
    assert sf.info(io.BytesIO(hard_media.read(row.audio))).subtype == "FLOAT"
    noise = hard_audio - clean_audio
    snr_db = 10 * np.log10(np.mean(clean_audio**2) / np.mean(noise**2))
    assert snr_db == pytest.approx(-9.0, abs=1.0)
    original = read_idx(sources / "mnist" / "t10k-images-idx3-ubyte.gz", 2051)[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(clean_media.read(row.image)))), original)
    hard_image = np.asarray(Image.open(io.BytesIO(hard_media.read(row.image)))).astype(float)
    assert np.abs(hard_image - original).mean() > 20  # few components: far from the original


def test_a_degraded_build_carries_the_undegraded_twin_of_every_sample(sources, tmp_path):
    clean = build_avdigits(sources, tmp_path / "clean", DataParams(preset="clean"))
    assert not clean["sample_id"].str.endswith("-clean").any()  # nothing to twin: already undegraded
    hard = build_avdigits(sources, tmp_path / "hard", DataParams(preset="hard"))
    twins = hard[hard["sample_id"].str.endswith("-clean")].set_index("sample_id")
    originals = hard[~hard["sample_id"].str.endswith("-clean")].set_index("sample_id")
    assert len(twins) == len(originals) == len(clean)
    assert hard["split"].value_counts().to_dict() == {"train": 140, "val": 20, "test": 20, "test_clean": 20}
    for sample_id, row in originals.iterrows():
        twin = twins.loc[f"{sample_id}-clean"]
        assert (twin.label, twin.text, twin["clip"]) == (row.label, row.text, row["clip"])
        assert twin.split == ("test_clean" if row.split == "test" else row.split)
    row = clean.iloc[0]  # the twin's media are the clean preset's, byte for byte
    twin = twins.loc[f"{row.sample_id}-clean"]
    hard_media, clean_media = open_media(tmp_path / "hard"), open_media(tmp_path / "clean")
    assert hard_media.read(twin.image) == clean_media.read(row.image)
    assert hard_media.read(twin.audio) == clean_media.read(row.audio)
    alone = build_avdigits(sources, tmp_path / "alone", DataParams(preset="hard", clean_twin=False))
    assert alone["sample_id"].tolist() == originals.index.tolist()


def test_text_noise_follows_the_model():
    noise = TextNoise()
    words = {w for table in DIGIT_WORDS.values() for w in table}
    outcomes = {"correct": 0, "wrong": 0, "uninformative": 0}
    for i in range(6000):
        text = noisy_transcript(3, noise, np.random.default_rng((0, i)))
        if text in noise.uninformative:
            outcomes["uninformative"] += 1
        elif text in words and text not in {t[3] for t in DIGIT_WORDS.values()}:
            outcomes["wrong"] += 1
        else:
            outcomes["correct"] += 1
    assert outcomes["wrong"] / 6000 == pytest.approx(0.15, abs=0.02)
    assert outcomes["uninformative"] / 6000 == pytest.approx(0.35, abs=0.03)


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00\x00\x05" + b"\x00" * 8 + b"\x01" * 10))
    with pytest.raises(SourceError, match="truncated"):
        read_idx(path, 2051)


def test_scaled_build_repeats_images_in_their_split_with_other_clips(sources, tmp_path):
    base = build_avdigits(sources, tmp_path / "base", DataParams(preset="clean"))
    scaled = build_avdigits(sources, tmp_path / "scaled", DataParams(preset="clean", samples=250))
    assert len(scaled) == 250 and scaled["sample_id"].is_unique
    assert scaled["mnist_index"].astype(int).tolist() == [i % len(base) for i in range(250)]  # once, then again
    first = base.set_index("mnist_index")
    for row in scaled.itertuples():  # a repeat keeps its image's label and split: no leakage
        assert (row.label, row.split) == (first.loc[row.mnist_index, "label"], first.loc[row.mnist_index, "split"])
    media = open_media(tmp_path / "scaled")
    repeats = scaled[scaled["mnist_index"] == "0"]
    assert len({media.read(path) for path in repeats["image"]}) == 1  # the same image...
    assert repeats["clip"].nunique() > 1  # ...re-paired with other clips
    assert len(list((tmp_path / "scaled" / "media").glob("shard-*.tar"))) == 1  # 500 files, 2000 per shard
    fewer = build_avdigits(sources, tmp_path / "fewer", DataParams(preset="clean", samples=50))
    assert fewer["mnist_index"].astype(int).tolist() == list(range(0, 100, 2))  # spread over every split
    assert set(fewer["split"]) == {"train", "val", "test"}
