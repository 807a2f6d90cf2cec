"""The processed-split format on disk: fixed-size safetensors shards plus an index, per split.

`data/processed/<split>/` holds `index.json` (format, rows per shard, the sample ids in row
order) and `00000.safetensors`, `00001.safetensors`, ... of `SHARD_ROWS` rows each (the last
one shorter), every shard carrying all of `KEYS`. Written one shard at a time and read by rows,
so neither the preprocess stage nor a reader ever holds a whole split: held whole, a split
costs about 19 KB per sample (a 28 x 28 image and a 40 x 100 log-mel in float32), and at
100,000 samples training held 1.4 GB of it (benchmarks/results/scale.json).

Reading gathers the rows asked for from each shard they fall in: one seek and read per run of
consecutive rows, straight into the batch's buffer, the file closed again, so a reader's
memory is its batch. Where each tensor lies comes from the shard's header, as the safetensors
format documents it (8 bytes of header length, a JSON header of dtype, shape and byte offsets,
then the data), parsed once per shard. Measured on the default train split (14,362 rows, 8
shards), a random batch of 128 rows: 4.6 ms through safetensors' own `get_slice` (one call per
row and tensor; the text model's epoch went from 0.60 to 1.05 s), 11.6 ms gathered from a
memory map (a page fault per page touched), 2.3 ms read as here. Reading the whole split: 0.38 s.

Numpy only (the preprocess stage's workers never import torch); `mmfuse.models.data` wraps it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from mmfuse.errors import MMFuseError
from mmfuse.io import write_json

FORMAT = "mmfuse.processed-split/1"
INDEX = "index.json"
KEYS = ("image", "audio", "text", "mask", "label")
# 2048 rows are ~40 MB: large enough that a split of the default dataset is a handful of files
# (DVC hashes each), small enough that writing one costs no more memory than a few batches.
SHARD_ROWS = 2048


def split_dir(processed_dir: Path, split: str) -> Path:
    return Path(processed_dir) / split


def shard_name(number: int) -> str:
    return f"{number:05d}.safetensors"


def write_shard(folder: Path, number: int, arrays: dict[str, np.ndarray]) -> None:
    """Shard `number` of a split being written into `folder` (rows number * shard_rows on, see
    `write_index`). The folder must exist: a writer whose output was abandoned (a failed stage
    removed its staging folder) fails instead of leaving a new one behind."""
    missing = sorted(set(KEYS) - set(arrays))
    if missing:
        raise MMFuseError(f"a processed shard needs {list(KEYS)}; {missing} missing.")
    rows = {len(array) for array in arrays.values()}
    if len(rows) != 1 or not rows.pop():
        raise MMFuseError("a processed shard holds at least one row, as many for every key.")
    save_file({key: np.ascontiguousarray(arrays[key]) for key in KEYS}, folder / shard_name(number))


def write_index(folder: Path, sample_ids: list[str], rows: dict[str, np.ndarray], shard_rows: int = SHARD_ROWS) -> None:
    """The split's index, written first: it creates the split's folder that `write_shard` writes
    into (every shard but the last holds `shard_rows` rows); `rows` gives each key's row shape and
    dtype (one row of each, or an empty array)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        folder / INDEX,
        {
            "format": FORMAT,
            "rows": len(sample_ids),
            "shard_rows": shard_rows,
            "shards": -(-len(sample_ids) // shard_rows),
            "tensors": {key: {"shape": list(rows[key].shape[1:]), "dtype": rows[key].dtype.str} for key in KEYS},
            "sample_ids": sample_ids,
        },
    )


_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "BOOL": np.bool_}


@dataclass(frozen=True)
class _Tensor:
    """Where one tensor of a shard lies: byte offset from the file's start, dtype and shape."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]


def _layout(path: Path) -> dict[str, _Tensor]:
    """The tensors of a safetensors file and where their bytes lie, from its header."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= os.fstat(handle.fileno()).st_size - 8:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(handle.read(size))
        base = 8 + size
        return {
            key: _Tensor(base + int(info["data_offsets"][0]), np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"]))
            for key, info in header.items()
            if key != "__metadata__"
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MMFuseError(f"{path} is not a readable safetensors file ({exc}); rerun the preprocess stage.") from exc


@dataclass(frozen=True)
class ShardedSplit:
    """A processed split on disk, read by rows (`read`) without loading it whole."""

    folder: Path
    sample_ids: list[str]
    shard_rows: int
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]]  # per key: one row's shape and the dtype
    layouts: dict[int, dict[str, _Tensor]]  # per shard read so far: its header

    @classmethod
    def open(cls, folder: Path) -> "ShardedSplit":
        """Check the index, the shard files and the first shard's tensors; errors say what to rerun."""
        folder = Path(folder)
        path = folder / INDEX
        if not path.exists():
            raise MMFuseError(f"{path} not found: run the preprocess stage (`mmfuse preprocess`) first.")
        try:
            index = json.loads(path.read_text())
            ids, shard_rows, shards = list(index["sample_ids"]), int(index["shard_rows"]), int(index["shards"])
            shapes = {
                key: (tuple(int(n) for n in index["tensors"][key]["shape"]), np.dtype(index["tensors"][key]["dtype"]))
                for key in KEYS
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise MMFuseError(f"{path} is not a processed-split index ({exc}); rerun the preprocess stage.") from exc
        if index.get("format") != FORMAT or shard_rows < 1 or shards != -(-len(ids) // shard_rows):
            raise MMFuseError(f"{path}: not a {FORMAT} index; rerun the preprocess stage.")
        absent = [shard_name(k) for k in range(shards) if not (folder / shard_name(k)).exists()]
        if absent:
            raise MMFuseError(f"{folder} lacks shards {absent[:5]}; rerun the preprocess stage.")
        if shards:
            missing = [key for key in KEYS if key not in _layout(folder / shard_name(0))]
            if missing:
                raise MMFuseError(
                    f"{folder / shard_name(0)} lacks tensors {missing}; the processed-split contract needs "
                    f"{list(KEYS)}; rerun the preprocess stage."
                )
        return cls(folder, ids, shard_rows, shapes, {})

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def shards(self) -> int:
        return -(-len(self) // self.shard_rows)

    def read(self, rows: np.ndarray, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
        """The tensors `keys` of `rows` (any order, repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise MMFuseError(f"{self.folder}: rows outside 0..{len(self) - 1} asked for.")
        out = {key: np.empty((len(rows), *self.shapes[key][0]), self.shapes[key][1]) for key in keys}
        order = np.argsort(rows, kind="stable")
        shard_of = rows[order] // self.shard_rows
        for shard in np.unique(shard_of):
            held = order[shard_of == shard]
            self._gather(int(shard), rows[held] - shard * self.shard_rows, held, keys, out)
        return out

    def _gather(
        self, shard: int, local: np.ndarray, held: np.ndarray, keys: tuple[str, ...], out: dict[str, np.ndarray]
    ) -> None:
        """Copy rows `local` (ascending) of shard `shard` into positions `held` of `out`, for each of `keys`:
        one read per run of consecutive rows, straight into a buffer."""
        path = self.folder / shard_name(shard)
        if shard not in self.layouts:
            self.layouts[shard] = _layout(path)
        rows = min(self.shard_rows, len(self) - shard * self.shard_rows)
        starts = np.flatnonzero(np.diff(local, prepend=-2) != 1).tolist()  # runs of consecutive rows
        bounds = list(zip(starts, [*starts[1:], len(local)]))
        try:
            with open(path, "rb", buffering=0) as handle:
                for key in keys:
                    place, (shape, dtype) = self.layouts[shard][key], self.shapes[key]
                    if place.shape != (rows, *shape) or place.dtype != dtype:
                        raise ValueError(f"{key} is {place.dtype}{list(place.shape)}")
                    row_bytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
                    buffer = np.empty((len(local), *shape), dtype)
                    for start, stop in bounds:
                        handle.seek(place.offset + int(local[start]) * row_bytes)
                        if handle.readinto(buffer[start:stop]) != (stop - start) * row_bytes:
                            raise ValueError("the file ends early")
                    out[key][held] = buffer
        except (OSError, ValueError, KeyError) as exc:  # a shard unlike its index: cut short, other shapes
            index = self.folder / INDEX
            raise MMFuseError(f"{path} does not match {index} ({exc}); rerun the preprocess stage.") from exc
