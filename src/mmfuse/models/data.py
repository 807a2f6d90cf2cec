"""Reading the processed-split contract into memory for training and evaluation.

A split is small (thousands of samples), so it is held as whole tensors and batched by
index: no DataLoader workers, no pickling, and a batch order that depends only on the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from mmfuse.errors import MMFuseError
from mmfuse.modality import MODALITIES

SPLIT_KEYS = (*MODALITIES, "mask", "label")


@dataclass(frozen=True)
class Split:
    """One processed split: `tensors` holds image, audio, text, mask [N,3] and label; ids are the sample ids."""

    tensors: dict[str, torch.Tensor]
    sample_ids: list[str]

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows `index` of every tensor, as the model's batch dict."""
        return {key: value[index] for key, value in self.tensors.items()}

    def with_any(self, columns: list[int]) -> "Split":
        """Only the samples carrying at least one of the mask `columns` (a model for
        image+audio has nothing to learn from a text-only sample)."""
        keep = self.tensors["mask"][:, columns].any(dim=1)
        if bool(keep.all()):
            return self
        rows = keep.nonzero().squeeze(1)
        return Split({k: v[rows] for k, v in self.tensors.items()}, [self.sample_ids[i] for i in rows.tolist()])


def split_path(processed_dir: Path, split: str) -> Path:
    return Path(processed_dir) / f"{split}.safetensors"


def load_split(processed_dir: Path, split: str) -> Split:
    """Read `<processed_dir>/<split>.safetensors`; a missing file or key is a clear MMFuseError."""
    path = split_path(processed_dir, split)
    if not path.exists():
        raise MMFuseError(f"{path} not found: run the preprocess stage (`mmfuse preprocess`) first.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            missing = [key for key in SPLIT_KEYS if key not in handle.keys()]
            if missing:
                raise MMFuseError(
                    f"{path} lacks tensors {missing}; the processed-split contract needs {list(SPLIT_KEYS)}."
                )
            tensors = {key: handle.get_tensor(key) for key in SPLIT_KEYS}
            ids = json.loads((handle.metadata() or {}).get("sample_ids", "[]"))
    except SafetensorError as exc:
        raise MMFuseError(f"{path} is not a readable safetensors file ({exc}); rerun the preprocess stage.") from exc
    tensors["mask"] = tensors["mask"].bool()
    return Split(tensors, ids)


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
    """Per-sample input shape of each modality, read from the tensors themselves."""
    return {m: list(split.tensors[m].shape[1:]) for m in MODALITIES}
