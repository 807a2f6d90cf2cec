"""The processed-split format: shards and index written, read back by rows, and broken ones refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from processed_data import write_split

from mmfuse.errors import MMFuseError
from mmfuse.models.data import load_split, split_files
from mmfuse.preprocess.processed import INDEX, ShardedSplit, split_dir, write_shard

ROWS, SHARD = 23, 5


def _arrays(count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(count)
    return {
        "image": rng.standard_normal((count, 1, 4, 4)).astype(np.float32),
        "audio": rng.standard_normal((count, 3, 6)).astype(np.float32),
        "text": rng.integers(0, 9, (count, 5)),
        "mask": rng.random((count, 3)) < 0.7,
        "label": rng.integers(0, 4, count),
    }


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = _arrays(ROWS)
    write_split(tmp_path, "train", arrays, [f"s{i:02d}" for i in range(ROWS)], SHARD)
    return tmp_path, arrays


def test_rows_read_back_in_the_order_asked_across_shards(written) -> None:
    root, arrays = written
    sharded = ShardedSplit.open(split_dir(root, "train"))
    assert len(sharded) == ROWS and sharded.sample_ids[7] == "s07"
    for rows in (np.arange(ROWS), np.array([22, 0, 5, 4, 4, 19, 11, 10, 12]), np.array([], dtype=np.int64)):
        read = sharded.read(rows)
        for key, value in arrays.items():
            assert np.array_equal(read[key], value[rows]), key


def test_a_split_reads_batches_and_subsets_lazily_as_the_whole_tensors(written) -> None:
    root, arrays = written
    split = load_split(root, "train")
    whole = {key: torch.from_numpy(value) for key, value in arrays.items()}
    index = torch.tensor([3, 20, 9, 9])
    batch = split.batch(index)
    assert all(torch.equal(batch[key], whole[key][index]) for key in whole)
    audio_only = split.with_any([1])
    kept = whole["mask"][:, 1].nonzero().squeeze(1)
    assert audio_only.sample_ids == [f"s{i:02d}" for i in kept.tolist()]
    assert torch.equal(audio_only.batch(torch.tensor([1, 0]))["audio"], whole["audio"][kept[[1, 0]]])
    assert torch.equal(audio_only.label, whole["label"][kept])
    assert [len(b["label"]) for b in split.in_order(10)] == [10, 10, 3]
    assert [p.name for p in split_files(root, "train")] == [INDEX, *(f"{k:05d}.safetensors" for k in range(5))]


def test_a_missing_index_or_shard_is_a_clear_error(written) -> None:
    root, _ = written
    folder = split_dir(root, "train")
    (folder / "00003.safetensors").unlink()
    with pytest.raises(MMFuseError, match=r"lacks shards \['00003.safetensors'\]; rerun the preprocess stage"):
        ShardedSplit.open(folder)
    (folder / INDEX).unlink()
    with pytest.raises(MMFuseError, match="index.json not found: run the preprocess stage"):
        load_split(root, "train")


def test_a_shard_unlike_its_index_or_a_foreign_index_is_refused(written) -> None:
    root, arrays = written
    folder = split_dir(root, "train")
    write_shard(folder, 1, {key: value[:2] for key, value in arrays.items()})  # cut short: 2 rows, not 5
    with pytest.raises(MMFuseError, match=r"00001.safetensors does not match .*index.json"):
        ShardedSplit.open(folder).read(np.array([8]))
    (folder / "00002.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MMFuseError, match=r"00002.safetensors is not a readable safetensors file"):
        ShardedSplit.open(folder).read(np.array([12]))
    with pytest.raises(MMFuseError, match=r"rows outside 0..22"):
        ShardedSplit.open(folder).read(np.array([23]))
    index = json.loads((folder / INDEX).read_text())
    (folder / INDEX).write_text(json.dumps({**index, "format": "mmfuse.processed-split/0"}))
    with pytest.raises(MMFuseError, match="not a mmfuse.processed-split/1 index"):
        ShardedSplit.open(folder)
    (folder / INDEX).write_text("{")
    with pytest.raises(MMFuseError, match="is not a processed-split index"):
        ShardedSplit.open(folder)
