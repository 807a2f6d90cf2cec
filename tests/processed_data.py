"""Writing processed splits in tests, by the preprocess stage's own writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmfuse.preprocess.processed import SHARD_ROWS, split_dir, write_index, write_shard


def write_split(
    processed: Path, split: str, arrays: dict[str, np.ndarray], ids: list[str], shard_rows: int = SHARD_ROWS
) -> None:
    """`arrays` as the processed split `split` of `processed`: its index, then its shards."""
    folder = split_dir(processed, split)
    write_index(folder, ids, {key: value[:0] for key, value in arrays.items()}, shard_rows)
    for number, start in enumerate(range(0, len(ids), shard_rows)):
        write_shard(folder, number, {key: value[start : start + shard_rows] for key, value in arrays.items()})
