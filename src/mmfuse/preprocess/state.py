"""The fitted preprocessing state: parameters, train statistics, vocabulary, labels.

It round-trips through meta.json (and the model artifact's config), so the service
rebuilds exactly the normalisation training used. Numpy only: the batch stage's
workers never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmfuse.modality import MODALITIES
from mmfuse.params.preprocess import EXECUTION, PreprocessParams
from mmfuse.preprocess.text import Vocabulary


@dataclass(frozen=True)
class PreprocessState:
    """Everything fitted on train plus the parameters: all a server needs to reproduce features."""

    params: PreprocessParams
    labels: tuple[str, ...]
    vocab: Vocabulary
    image_mean: float
    image_std: float
    audio_mean: tuple[float, ...]  # one per mel band
    audio_std: tuple[float, ...]

    def normalise_image(self, features: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(x - mean) / std on [..., H, W] float32, elementwise (so one sample or a whole
        split in place give the same bits)."""
        centred = np.subtract(features, np.float32(self.image_mean), out=out)
        return np.divide(centred, np.float32(self.image_std), out=out)

    def normalise_audio(self, features: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Per-mel-band (x - mean) / std on [..., n_mels, n_frames] float32, elementwise."""
        mean = np.asarray(self.audio_mean, dtype=np.float32)[:, None]
        std = np.asarray(self.audio_std, dtype=np.float32)[:, None]
        centred = np.subtract(features, mean, out=out)
        return np.divide(centred, std, out=out)

    def encode_text(self, normalised: str) -> np.ndarray:
        return self.vocab.encode(normalised, self.params.text.max_len)

    def shapes(self) -> dict[str, list[int]]:
        """Tensor shapes of one sample, as `preprocess_sample` returns them."""
        size, audio = self.params.image.size, self.params.audio
        return {
            "image": [1, size, size],
            "audio": [audio.n_mels, audio.n_frames],
            "text": [self.params.text.max_len],
            "mask": [len(MODALITIES)],
        }

    def to_dict(self) -> dict[str, Any]:
        """The meta.json fields this state is rebuilt from (JSON floats round-trip exactly)."""
        return {
            "params": self.params.model_dump(mode="json", exclude=set(EXECUTION)),
            "labels": list(self.labels),
            "vocab": self.vocab.to_dict(),
            "normalisation": {
                "image": {"mean": self.image_mean, "std": self.image_std},
                "audio": {"mean": list(self.audio_mean), "std": list(self.audio_std)},
            },
            "shapes": self.shapes(),
            "modalities": list(MODALITIES),
        }

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> "PreprocessState":
        """Rebuild from meta.json (or a model artifact's config holding the same fields)."""
        norm = meta["normalisation"]
        return cls(
            params=PreprocessParams.model_validate(meta["params"]),
            labels=tuple(meta["labels"]),
            vocab=Vocabulary.from_dict(meta["vocab"]),
            image_mean=float(norm["image"]["mean"]),
            image_std=float(norm["image"]["std"]),
            audio_mean=tuple(float(v) for v in norm["audio"]["mean"]),
            audio_std=tuple(float(v) for v in norm["audio"]["std"]),
        )
