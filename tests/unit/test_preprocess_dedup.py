"""Duplicate records, near-duplicates and cross-split leakage, on planted examples."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmfuse.params.preprocess import AudioParams, DedupParams, ImageParams, TextParams
from mmfuse.preprocess.audio import log_mel
from mmfuse.preprocess.dedup import (
    Fingerprints,
    band_bits,
    band_keys,
    content_hash,
    find_duplicates,
    lsh_candidates,
    miss_probability,
    near_pairs,
    signature,
)
from mmfuse.preprocess.image import decode_image
from mmfuse.preprocess.text import normalise_text

GRID = DedupParams().grid


def fingerprints(records: list[dict]) -> Fingerprints:
    """Fingerprints as the stage computes them, from (sample_id, split, image, audio, text) dicts."""
    image_sig = np.zeros((len(records), GRID * GRID))
    audio_sig = np.zeros((len(records), GRID * GRID))
    for k, record in enumerate(records):
        if record.get("image") is not None:
            image_sig[k] = signature(record["image"], GRID)
        if record.get("audio") is not None:
            audio_sig[k] = signature(log_mel(record["audio"], AudioParams()), GRID)
    return Fingerprints(
        sample_ids=[r["id"] for r in records],
        splits=[r["split"] for r in records],
        image_sha=[content_hash(r["image"]) if r.get("image") is not None else None for r in records],
        audio_sha=[content_hash(r["audio"]) if r.get("audio") is not None else None for r in records],
        text_raw=[r.get("text") or None for r in records],
        text_norm=[normalise_text(r["text"], TextParams()) if r.get("text") else None for r in records],
        image_signature=image_sig,
        audio_signature=audio_sig,
    )


@pytest.fixture
def grey(make_digit):
    return lambda seed: make_digit(seed).astype(np.float32) / np.float32(255)


@pytest.fixture
def clip(make_tone):
    def _clip(freq: float) -> np.ndarray:
        wave = np.concatenate(
            [np.zeros(800, dtype=np.float32), make_tone(freq, 0.3, 8000), np.zeros(400, dtype=np.float32)]
        )
        return wave + np.random.default_rng(int(freq)).normal(0, 0.01, wave.shape).astype(np.float32)

    return _clip


def removed(result) -> dict[str, dict]:
    return {entry["sample_id"]: entry for entry in result.report["removed"]}


def test_a_known_duplicate_pair_is_found_and_the_first_kept(grey, clip):
    records = [
        {"id": "b", "split": "train", "image": grey(1), "audio": clip(400), "text": "five"},
        {"id": "a", "split": "train", "image": grey(1), "audio": clip(400), "text": "five"},
        {"id": "c", "split": "train", "image": grey(2), "audio": clip(500), "text": "five"},
        {"id": "t", "split": "test", "image": grey(3), "audio": clip(600), "text": "five"},
    ]
    result = find_duplicates(fingerprints(sorted(records, key=lambda r: r["id"])), DedupParams())
    gone = removed(result)
    assert list(gone) == ["b"]
    assert gone["b"]["reason"] == "duplicate record within train"
    assert gone["b"]["match"] == "exact" and gone["b"]["other_id"] == "a"
    assert result.report["counts"]["kept"] == {"train": 2, "val": 0, "test": 1}


def test_same_clip_with_different_images_is_not_a_duplicate(grey, clip):
    records = [
        {"id": "a", "split": "train", "image": grey(1), "audio": clip(400), "text": "five"},
        {"id": "b", "split": "train", "image": grey(2), "audio": clip(400), "text": "five"},
    ]
    assert find_duplicates(fingerprints(records), DedupParams()).keep.all()


def test_near_duplicate_record_differs_only_by_encoding_and_punctuation(grey, clip, make_digit):
    buffer = io.BytesIO()
    Image.fromarray(make_digit(1)).save(buffer, "JPEG", quality=95)
    recompressed = decode_image(buffer.getvalue(), ImageParams())
    records = [
        {"id": "a", "split": "train", "image": grey(1), "audio": clip(400), "text": "Five!"},
        {"id": "b", "split": "train", "image": recompressed, "audio": clip(400) * 0.5, "text": "five"},
    ]
    gone = removed(find_duplicates(fingerprints(records), DedupParams()))
    assert gone["b"]["match"] == "near" and gone["b"]["other_id"] == "a"


@pytest.mark.parametrize(
    "variant",
    [
        lambda x: np.clip(x * 0.8 + 0.1, 0, 1),  # contrast and brightness
        lambda x: np.clip(x + np.random.default_rng(0).normal(0, 1 / 255, x.shape), 0, 1),  # sensor noise
        lambda x: np.kron(x, np.ones((2, 2), dtype=np.float32)),  # enlarged x2 by pixel repetition
    ],
    ids=["contrast", "noise", "enlarged"],
)
def test_a_near_duplicate_image_across_splits_is_caught_as_leakage(grey, variant):
    records = [
        {"id": "s", "split": "test", "image": grey(4)},
        {"id": "t", "split": "train", "image": variant(grey(4)).astype(np.float32)},
        {"id": "u", "split": "train", "image": grey(5)},
    ]
    result = find_duplicates(fingerprints(records), DedupParams())
    gone = removed(result)
    assert list(gone) == ["t"]
    assert gone["t"]["modality"] == "image" and gone["t"]["match"] == "near" and gone["t"]["other_id"] == "s"


def test_distinct_images_are_far_above_the_threshold(grey):
    distances = [1 - signature(grey(0), GRID) @ signature(grey(seed), GRID) for seed in range(1, 30)]
    assert min(distances) > 100 * DedupParams().image_max_distance


def test_any_shared_modality_across_splits_is_leakage_but_val_test_only_warns(grey, clip):
    records = [
        {"id": "t1", "split": "train", "image": grey(1), "audio": clip(700), "text": "one"},
        {"id": "t2", "split": "train", "image": grey(2), "audio": clip(800), "text": "two"},
        {"id": "v1", "split": "val", "image": grey(3), "audio": clip(700), "text": "nine"},
        {"id": "s1", "split": "test", "image": grey(3), "audio": clip(900), "text": "eight"},
    ]
    result = find_duplicates(fingerprints(records), DedupParams())
    gone = removed(result)
    assert list(gone) == ["t1"]
    assert (gone["t1"]["modality"], gone["t1"]["match"], gone["t1"]["other_id"]) == ("audio", "exact", "v1")
    assert [w["sample_id"] for w in result.report["warnings"]] == ["v1"]
    assert result.keep.tolist() == [False, True, True, True]


def test_only_long_texts_count_as_leakage():
    sentence = "the operator heard a loud bang near gate four"
    records = [
        {"id": "t1", "split": "train", "text": "five"},
        {"id": "t2", "split": "train", "text": sentence.upper()},
        {"id": "s1", "split": "test", "text": "five"},
        {"id": "s2", "split": "test", "text": sentence},
    ]
    gone = removed(find_duplicates(fingerprints(records), DedupParams()))
    assert list(gone) == ["t2"] and gone["t2"]["modality"] == "text"


def test_text_only_records_duplicate_when_their_normalised_text_matches():
    records = [
        {"id": "a", "split": "train", "text": "Deux"},
        {"id": "b", "split": "train", "text": "deux!"},
        {"id": "c", "split": "train", "text": "trois"},
    ]
    gone = removed(find_duplicates(fingerprints(records), DedupParams()))
    assert list(gone) == ["b"] and gone["b"]["match"] == "near"


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_lsh_finds_exactly_the_pairs_all_pairs_would_find():
    """Correlated signatures (like one digit's) with planted pairs just inside and just outside
    the audio limit: LSH returns every pair the all-pairs search finds, with its distance, and
    compares a small share of all pairs."""
    rng = np.random.default_rng(3)
    limit = DedupParams().audio_max_distance
    prototypes = rng.standard_normal((5, GRID * GRID))
    base = _unit(prototypes[rng.integers(5, size=3000)] + 0.8 * rng.standard_normal((3000, GRID * GRID)))
    planted = []
    for k, target in enumerate((0.2, 0.6, 0.95, 0.999, 1.05, 3.0) * 20):  # distance as a share of the limit
        a = base[k]
        direction = _unit(rng.standard_normal((1, GRID * GRID)))[0]
        direction -= (direction @ a) * a
        direction /= np.linalg.norm(direction)
        angle = np.arccos(1.0 - target * limit)
        planted.append(np.cos(angle) * a + np.sin(angle) * direction)
    b = np.vstack([base[1000:], planted, np.zeros((1, GRID * GRID))])  # a flat signature is near nothing
    distances = 1.0 - base @ b.T
    want = np.argwhere(distances <= limit)
    left, right, found = near_pairs(base, b, limit)
    assert len(want) >= 80  # the planted pairs inside the limit (and nothing else)
    assert np.array_equal(np.column_stack([left, right]), want)
    assert np.allclose(found, distances[left, right], atol=1e-12)
    assert band_bits(limit) == 32 and miss_probability(limit, 32) < 1e-8
    assert band_bits(DedupParams().image_max_distance) == 64 and band_bits(0.5) is None  # 0.5: all pairs
    loose = near_pairs(base[:50], b[:300], 0.5)
    assert np.array_equal(np.column_stack(loose[:2]), np.argwhere(1.0 - base[:50] @ b[:300].T <= 0.5))


def test_lsh_on_very_alike_records_falls_back_to_all_pairs_block_by_block():
    """Signatures close to one another (like images rebuilt from a few PCA components) share most
    band keys: the candidates would be most pairs, so blocks are compared densely, with the same
    pairs found, a block at a time."""
    rng = np.random.default_rng(4)
    spread = rng.standard_normal((600, 3)) @ rng.standard_normal((3, GRID * GRID))
    alike = _unit(rng.standard_normal(GRID * GRID) + 0.2 * spread)
    bits = band_bits(DedupParams().audio_max_distance)
    keys = band_keys(alike, bits)
    orders = [np.argsort(keys[:, band], kind="stable") for band in range(keys.shape[1])]
    assert lsh_candidates(alike[:128], alike, bits, orders, [keys[o, band] for band, o in enumerate(orders)]) is None
    limit = DedupParams().audio_max_distance
    left, right, _ = near_pairs(alike, alike, limit)
    assert np.array_equal(np.column_stack([left, right]), np.argwhere(1.0 - alike @ alike.T <= limit))
    assert len(left) > 2000  # each with itself, and many alike neighbours
