"""Text transforms: decode, normalise, and a character-level vocabulary.

Character level because transcripts here are short, multilingual and full of typos:
"cinqe" still shares most of its characters with "cinq", while a word vocabulary
would map it to <unk>.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import numpy as np

from mmfuse.data.manifest import BLANK_CATEGORIES
from mmfuse.errors import ConfigError, MediaError
from mmfuse.params.preprocess import TextParams

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1  # their ids: every vocabulary starts with them


def decode_text(text: str | bytes, params: TextParams) -> str:
    """Accept str or UTF-8 bytes; refuse other encodings and texts over max_chars."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MediaError(
                f"the bytes are not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}).",
                modality="text",
            ) from exc
    if len(text) > params.max_chars:
        raise MediaError(f"{len(text)} characters is over the limit of {params.max_chars}.", modality="text")
    return text


def normalise_text(text: str, params: TextParams) -> str:
    """NFKC, case folding, optional accent stripping; punctuation, symbols and control
    characters become spaces; runs of whitespace collapse to one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    if params.strip_accents:
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if unicodedata.category(ch) != "Mn")
        text = unicodedata.normalize("NFC", text)
    spaced = "".join(" " if unicodedata.category(ch)[0] in BLANK_CATEGORIES else ch for ch in text)
    return " ".join(spaced.split())


def clean_text(text: str | bytes, params: TextParams) -> str:
    """One raw text (str or UTF-8 bytes) -> its normalised form."""
    return normalise_text(decode_text(text, params), params)


@dataclass(frozen=True)
class Vocabulary:
    """Character vocabulary: id 0 is padding, id 1 stands for characters unseen in train."""

    tokens: tuple[str, ...]

    @classmethod
    def fit(cls, texts: Iterable[str], min_freq: int) -> "Vocabulary":
        """Characters seen at least `min_freq` times, in code-point order (stable across runs)."""
        counts = Counter(ch for text in texts for ch in text)
        return cls((PAD, UNK, *sorted(ch for ch, n in counts.items() if n >= min_freq)))

    def encode(self, text: str, max_len: int) -> np.ndarray:
        """Token ids [max_len] int64: truncated, then padded with 0."""
        ids = np.zeros(max_len, dtype=np.int64)
        for position, ch in enumerate(text[:max_len]):
            ids[position] = self._index.get(ch, UNK_ID)
        return ids

    @cached_property
    def _index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def to_dict(self) -> dict[str, Any]:
        return {"level": "char", "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Vocabulary":
        tokens = tuple(payload["tokens"])
        if payload.get("level") != "char" or tokens[:2] != (PAD, UNK):
            raise ConfigError("the stored vocabulary is not a character vocabulary from Vocabulary.to_dict.")
        return cls(tokens)
