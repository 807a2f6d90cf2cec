"""Fixtures for model tests: a tiny processed dataset and small, fast training params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from processed_data import write_split
from synthetic_data import FRAMES, IMAGE, MELS, N_CLASSES, TEXT_LEN, make_split

from mmfuse.params.train import ArchParams, AugmentParams, EncoderParams, TrainParams


@pytest.fixture(scope="session")
def processed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/processed/ laid out per the contract: train/, val/, test/ (shards, three in train) + meta.json."""
    root = tmp_path_factory.mktemp("processed")
    for offset, (split, count) in enumerate((("train", 256), ("val", 64), ("test", 96))):
        tensors = make_split(count, seed=offset)
        ids = [f"{split}-{i:04d}" for i in range(count)]
        write_split(root, split, {key: value.numpy() for key, value in tensors.items()}, ids, shard_rows=100)
    meta = {
        "labels": [f"class{i}" for i in range(N_CLASSES)],
        "vocab": {"level": "char", "tokens": ["<pad>", "<unk>", *"abcdefghij"]},
        "shapes": {"image": [1, IMAGE, IMAGE], "audio": [MELS, FRAMES], "text": [TEXT_LEN]},
        "params": {"note": "synthetic"},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def tiny_params() -> TrainParams:
    """Small and fast, but the same code path as the real configuration."""
    return TrainParams(
        arch=ArchParams(
            embed_dim=16,
            token_dim=8,
            fusion_hidden=16,
            lmf_rank=2,
            image=EncoderParams(channels=[8, 8]),
            audio=EncoderParams(channels=[16, 16]),
            text=EncoderParams(channels=[16]),
        ),
        epochs=4,
        patience=10,
        batch_size=32,
        eval_batch_size=50,
        lr=1e-2,
        threads=1,
        augment=AugmentParams(time_shift=2, time_mask=3, freq_mask=1),
    )
