"""Corrupted test sets come from the raw media through the real preprocessing, seeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mmfuse.errors import MMFuseError
from mmfuse.evaluation import corruption as corruption_module
from mmfuse.evaluation.corruption import (
    CORRUPTIONS,
    Corruption,
    RawSplit,
    corrupted_array,
    corrupted_levels,
    corruption_rng,
    one_corrupted,
    split_rows,
)
from mmfuse.models.data import load_split
from mmfuse.params.evaluate import EvaluateParams, RobustnessParams
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.preprocess.build import build_processed
from mmfuse.preprocess.state import PreprocessState

BY_NAME = {c.name: c for c in CORRUPTIONS}
IDENTITY = {"image_noise": 0.0, "audio_snr": float("inf"), "text_typos": 0.0}


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RawSplit, dict, PreprocessState]:
    out = tmp_path_factory.mktemp("processed-eval") / "avd"
    build_processed(tiny_dataset, out, PreprocessParams(workers=1))
    test = load_split(out, "test")
    state = PreprocessState.from_dict(json.loads((out / "meta.json").read_text()))
    raw = RawSplit.load(split_rows(tiny_dataset, test.sample_ids), tiny_dataset.parent, test.tensors["mask"], state)
    return raw, test.tensors, state


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_a_zero_level_reproduces_the_processed_tensors_bit_for_bit(prepared, name: str) -> None:
    raw, tensors, state = prepared
    corruption = BY_NAME[name]
    noisy = corrupted_array(raw, corruption, IDENTITY[name], corruption_rng(0, corruption, 0), state)
    assert torch.equal(torch.from_numpy(noisy), tensors[corruption.modality])


@pytest.mark.parametrize("name", [c.name for c in CORRUPTIONS])
def test_corruption_is_seeded_and_grows_with_the_level(prepared, name: str) -> None:
    raw, tensors, state = prepared
    corruption = BY_NAME[name]
    low, high = corruption.levels(RobustnessParams())[0], corruption.levels(RobustnessParams())[-1]

    def make(level: float, seed: int = 0) -> torch.Tensor:
        return torch.from_numpy(corrupted_array(raw, corruption, level, corruption_rng(seed, corruption, 0), state))

    assert torch.equal(make(low), make(low))
    clean = tensors[corruption.modality]

    def distance(noisy: torch.Tensor) -> float:  # token ids are categories: count changes, not gaps
        return float(
            (noisy != clean).double().mean() if noisy.dtype == torch.int64 else (noisy - clean).abs().double().mean()
        )

    assert 0 <= distance(make(low)) < distance(make(high))  # a mild level may spare all of a tiny test set
    if name not in ("image_blur", "image_inversion", "audio_clipping", "image_jpeg", "audio_bits", "text_truncation"):
        # the others draw randomness
        assert not torch.equal(make(high, seed=0), make(high, seed=1))


def test_the_worker_pool_gives_the_levels_computed_in_process(prepared) -> None:
    raw, _, state = prepared
    params = RobustnessParams(image_noise_std=[0.2, 0.4], audio_snr_db=[0.0, -5.0], text_typo_rate=[0.3, 0.6])
    with corrupted_levels(raw, state, params, seed=3, workers=2) as noisy:
        for corruption in reversed(CORRUPTIONS):  # any consumption order
            for index, level in enumerate(corruption.levels(params)):
                direct = corrupted_array(raw, corruption, level, corruption_rng(3, corruption, index), state)
                assert torch.equal(noisy(corruption, index), torch.from_numpy(direct)), (corruption.name, level)


def test_a_manifest_that_disagrees_with_the_processed_split_is_refused(prepared, tiny_dataset: Path) -> None:
    raw, tensors, state = prepared
    rows = split_rows(tiny_dataset, [f"s-0{i}" for i in range(4)]).copy()
    rows.loc["s-00", "audio"] = ""
    with pytest.raises(MMFuseError, match="carry audio"):
        RawSplit.load(rows, tiny_dataset.parent, tensors["mask"], state)
    with pytest.raises(MMFuseError, match="lacks samples"):
        split_rows(tiny_dataset, ["nope"])


def test_noise_levels_must_grow_in_severity() -> None:
    with pytest.raises(ValidationError, match="audio_snr_db"):
        RobustnessParams(audio_snr_db=[0.0, 10.0])
    with pytest.raises(ValidationError, match="image_blur_sigma"):
        RobustnessParams(image_blur_sigma=[1.0, 1.0])
    with pytest.raises(ValidationError):
        EvaluateParams(unknown=1)
    assert all(len(c.levels(RobustnessParams())) >= 6 for c in CORRUPTIONS)


def test_adding_a_corruption_family_leaves_the_gates_corrupted_copies_as_they_were(prepared, monkeypatch) -> None:
    raw, tensors, state = prepared
    before = one_corrupted(raw, tensors, state, RobustnessParams(), seed=0, copy=1)
    extra = Corruption("image_extra", "image", "share", "image_inversion", BY_NAME["image_inversion"].fn, seen=False)
    monkeypatch.setattr(corruption_module, "CORRUPTIONS", (*CORRUPTIONS, extra))
    after = one_corrupted(raw, tensors, state, RobustnessParams(), seed=0, copy=1)
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not all(torch.equal(before[key], tensors[key]) for key in before)  # it did corrupt something


def test_falling_levels_are_checked_against_their_range() -> None:
    with pytest.raises(ValidationError, match="image_jpeg_quality must be strictly decreasing"):
        RobustnessParams(image_jpeg_quality=[10, 20])
    with pytest.raises(ValidationError, match="audio_bits must lie in 1-16"):
        RobustnessParams(audio_bits=[24, 8])
    with pytest.raises(ValidationError, match="at most 1"):
        RobustnessParams(text_truncation=[0.5, 1.5])


def test_the_added_unseen_families_do_what_they_say() -> None:
    wave = np.sin(np.linspace(0, 40, 800)).astype(np.float32) * 0.9
    assert len(np.unique(BY_NAME["audio_bits"].fn(wave, 3, None))) <= 2**3 + 1
    assert BY_NAME["text_truncation"].fn("seven eights", 0.5, None) == "seven "
    grey = np.zeros((28, 28), dtype=np.float32)
    grey[8:20, 12:16] = 1.0
    blocky = BY_NAME["image_jpeg"].fn(grey, 3, None)
    assert blocky.shape == grey.shape and blocky.dtype == np.float32 and 0.0 <= blocky.min() <= blocky.max() <= 1.0
    assert 0 < float(np.abs(blocky - grey).mean()) and np.array_equal(blocky, BY_NAME["image_jpeg"].fn(grey, 3, None))


def test_occlusion_covers_the_requested_share() -> None:
    grey = np.ones((20, 20), dtype=np.float32)
    out = BY_NAME["image_occlusion"].fn(grey, 0.25, np.random.default_rng(0))
    assert int((out == 0).sum()) == 100
