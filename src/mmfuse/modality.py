"""The modalities, named once: manifest columns, and the column order of every modality mask.

The processed splits, the model's `present` mask, the inference log and the service all
index modalities by these positions, so they are written here and nowhere else.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("image", "audio", "text")
IMAGE, AUDIO, TEXT = (MODALITIES.index(m) for m in ("image", "audio", "text"))  # mask column of each
MEDIA: tuple[str, ...] = ("image", "audio")  # the modalities that arrive as files (text arrives inline)
FLAGS: tuple[str, ...] = tuple(f"has_{m}" for m in MODALITIES)  # presence columns of the inference log and reference
