"""Reading the processed-split contract for training and evaluation, by rows.

A split on disk is a folder of shards (`mmfuse.preprocess.processed`). `Split` keeps only its
mask, labels and sample ids in memory and reads image, audio and text per batch, so training's
memory does not grow with the dataset; batches are index tensors drawn from the seed alone (no
DataLoader workers, no pickling), and the rows a batch reads are the same bits a whole split
held in memory gave, so the weights are too. `tensors` reads a whole split at once where a
small one is wanted whole (evaluation's test split, tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import torch

from mmfuse.errors import MMFuseError
from mmfuse.modality import MODALITIES
from mmfuse.preprocess.processed import INDEX, ShardedSplit, shard_name, split_dir


@dataclass(frozen=True)
class Split:
    """One processed split, or a subset of its rows: `mask` [N, 3], `label` [N] and `sample_ids`
    in memory; image, audio and text read per `batch` from `source` (shards on disk, or a dict
    of tensors already in memory)."""

    source: ShardedSplit | dict[str, torch.Tensor]
    sample_ids: list[str]
    rows: torch.Tensor | None = None  # the source rows this split holds, in order; None: all of them

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor], sample_ids: list[str]) -> "Split":
        """A split of tensors already in memory (evaluation's re-preprocessed copies, tests)."""
        return cls(dict(tensors), list(sample_ids))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def _read(self, rows: torch.Tensor, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if isinstance(self.source, dict):
            return {key: self.source[key][rows] for key in keys}
        arrays = self.source.read(rows.numpy(), keys)
        return {key: torch.from_numpy(value) for key, value in arrays.items()}

    def _source_rows(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        return index if self.rows is None else self.rows[index]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows `index` of every tensor, as the model's batch dict."""
        rows = self._source_rows(index)
        out = self._read(rows, ("image", "audio", "text"))
        return {**out, "mask": self._whole["mask"][rows], "label": self._whole["label"][rows]}

    def in_order(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every row in order, `batch_size` at a time (each batch read as it is needed)."""
        return (self.batch(index) for index in torch.arange(len(self)).split(batch_size))

    @cached_property
    def _whole(self) -> dict[str, torch.Tensor]:
        """Mask and label of every source row: small (11 bytes a row), read once."""
        source_len = len(self.source["label"]) if isinstance(self.source, dict) else len(self.source)
        out = self._read(torch.arange(source_len), ("mask", "label"))
        out["mask"] = out["mask"].bool()
        return out

    @property
    def mask(self) -> torch.Tensor:
        return self._whole["mask"] if self.rows is None else self._whole["mask"][self.rows]

    @property
    def label(self) -> torch.Tensor:
        return self._whole["label"] if self.rows is None else self._whole["label"][self.rows]

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the split at once (reads it whole: for val/test-sized splits)."""
        return self.batch(torch.arange(len(self)))

    def with_any(self, columns: list[int]) -> "Split":
        """Only the samples carrying at least one of the mask `columns` (a model for
        image+audio has nothing to learn from a text-only sample)."""
        keep = self.mask[:, columns].any(dim=1)
        if bool(keep.all()):
            return self
        index = keep.nonzero().squeeze(1)
        return Split(self.source, [self.sample_ids[i] for i in index.tolist()], self._source_rows(index))


def split_files(processed_dir: Path, split: str) -> list[Path]:
    """The files of a processed split (its index, then its shards): what a checkpoint's fingerprint hashes."""
    folder = split_dir(processed_dir, split)
    return [folder / INDEX, *(folder / shard_name(k) for k in range(ShardedSplit.open(folder).shards))]


def has_split(processed_dir: Path, split: str) -> bool:
    return (split_dir(processed_dir, split) / INDEX).exists()


def load_split(processed_dir: Path, split: str) -> Split:
    """Open `<processed_dir>/<split>/`; a missing or broken index or shard is a clear MMFuseError."""
    sharded = ShardedSplit.open(split_dir(processed_dir, split))
    return Split(sharded, sharded.sample_ids)


def load_meta(processed_dir: Path) -> dict[str, Any]:
    """`meta.json` of the processed data: labels, vocabulary, shapes, preprocessing params."""
    path = Path(processed_dir) / "meta.json"
    if not path.exists():
        raise MMFuseError(f"{path} not found: run the preprocess stage (`mmfuse preprocess`) first.")
    meta = json.loads(path.read_text())
    if not meta.get("labels"):
        raise MMFuseError(f"{path} has no `labels` list; rerun the preprocess stage.")
    return meta


def vocab_size(meta: dict[str, Any]) -> int:
    """Size of the token vocabulary (ids 0..size-1), from meta.json's character vocabulary."""
    try:
        return len(meta["vocab"]["tokens"])
    except (KeyError, TypeError) as exc:
        raise MMFuseError("meta.json has no vocab.tokens list; rerun the preprocess stage.") from exc


def sample_shapes(split: Split) -> dict[str, list[int]]:
    """Per-sample input shape of each modality, from the tensors (or the shards' index) themselves."""
    if isinstance(split.source, dict):
        return {m: list(split.source[m].shape[1:]) for m in MODALITIES}
    return {m: list(split.source.shapes[m][0]) for m in MODALITIES}
