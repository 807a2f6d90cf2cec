"""Synthetic media for unit tests: every test makes its own tiny fixtures (no real data)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from model_store import clear_store
from PIL import Image


def _tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def make_tone() -> Callable[..., np.ndarray]:
    """A float32 sine: make_tone(freq, seconds, rate, amplitude=0.5)."""
    return _tone


@pytest.fixture
def make_wav() -> Callable[..., bytes]:
    """WAV bytes from float samples ([n] mono or [n, channels]) in any soundfile subtype."""

    def _make(samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, subtype=subtype, format="WAV")
        return buffer.getvalue()

    return _make


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    """PNG/JPEG bytes from a uint8 array ([h, w] grey or [h, w, 3] colour)."""

    def _make(pixels: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **save_args)
        return buffer.getvalue()

    return _make


def _digit_like(seed: int, size: int = 28) -> np.ndarray:
    """A random stroke pattern on black, roughly MNIST-like, distinct per seed."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size, size), dtype=np.float64)
    for _ in range(3):
        y0, x0, y1, x1 = rng.integers(4, size - 4, size=4)
        for t in np.linspace(0, 1, 40):
            y, x = int(y0 + t * (y1 - y0)), int(x0 + t * (x1 - x0))
            pixels[y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return (pixels * 255).astype(np.uint8)


@pytest.fixture
def make_digit() -> Callable[..., np.ndarray]:
    """A uint8 stroke image: make_digit(seed, size=28)."""
    return _digit_like


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 26-record dataset with planted problems; returns the manifest path.

    - t-dup is a whole-content copy of t-00 (a duplicate record to drop);
    - t-leak shares its image with v-00 (leakage to remove from train);
    - t-01 and t-02 share one clip with different images (legitimate, both kept);
    - t-img has only an image, t-txt only a text, v-01 no text.
    """
    root = tmp_path_factory.mktemp("tiny") / "ds"
    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = []

    def add(sample_id: str, split: str, label: int, image_seed: int | None, clip_seed: int | None, text: str) -> None:
        image = audio = ""
        if image_seed is not None:
            image = f"images/{sample_id}.png"
            Image.fromarray(_digit_like(image_seed)).save(root / image)
        if clip_seed is not None:
            audio = f"audio/{sample_id}.wav"
            rng = np.random.default_rng(clip_seed)
            wave = np.concatenate([np.zeros(800), _tone(300 + 40 * clip_seed, 0.3, 8000), np.zeros(400)])
            sf.write(root / audio, wave + rng.normal(0, 0.01, wave.shape), 8000, subtype="PCM_16")
        rows.append(
            {"sample_id": sample_id, "label": str(label), "split": split, "image": image, "audio": audio, "text": text}
        )

    words = ["zero", "one", "two", "three"]
    for k in range(14):
        add(f"t-{k:02d}", "train", k % 4, image_seed=k, clip_seed=k if k != 2 else 1, text=f"{words[k % 4]}!")
    for k in range(4):
        add(f"v-{k:02d}", "val", k, image_seed=100 + k, clip_seed=100 + k, text="" if k == 1 else words[k])
        add(f"s-{k:02d}", "test", k, image_seed=200 + k, clip_seed=200 + k, text=words[k].upper())
    add("t-dup", "train", 0, image_seed=0, clip_seed=0, text="zero!")
    add("t-leak", "train", 0, image_seed=100, clip_seed=50, text="zéro")
    add("t-img", "train", 1, image_seed=60, clip_seed=None, text="")
    add("t-txt", "train", 2, image_seed=None, clip_seed=None, text="Deux ???")
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture
def empty_store() -> Iterator[None]:
    """An empty model store, and empty again afterwards (these tests' champions are fakes)."""
    clear_store()
    yield
    clear_store()
