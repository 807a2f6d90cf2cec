"""Shared fixtures: a tiny source mirror laid out like upstream, with its own checksums."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# The BentoML model store of the tests: never the user's own (read once, at bentoml import).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="mmfuse-test-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

TINY_IMAGES = 100  # 80 train/val (8 per digit, so a 10 % val share is one per digit) + 20 test
TINY_SPEAKERS = ("alice", "bob")
TINY_TAKES = (0, 5, 10)  # one take per standard split pool: test, val, train


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = struct.pack(">II", magic, array.shape[0]) + b"".join(struct.pack(">I", d) for d in array.shape[1:])
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_sums(folder: Path) -> dict[str, str]:
    sums = {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    }
    (folder / "SHA256SUMS").write_text("".join(f"{h}  {rel}\n" for rel, h in sums.items()))
    return sums


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> dict:
    """A mirror with 100 MNIST-like images and 60 FSDD-like tones; returns paths and sums."""
    root = tmp_path / "mirror"
    rng = np.random.default_rng(0)
    mnist = root / "mnist"
    mnist.mkdir(parents=True)
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(_idx(2051, rng.integers(0, 256, (TINY_IMAGES, 28, 28))))
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx(2049, np.arange(TINY_IMAGES) % 10))
    recordings = root / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    t = np.arange(800) / 8000
    for digit in range(10):
        for s, speaker in enumerate(TINY_SPEAKERS):
            for take in TINY_TAKES:
                tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * digit + 7 * s + take) * t)
                sf.write(recordings / f"{digit}_{speaker}_{take}.wav", tone, 8000, subtype="PCM_16")
    return {
        "root": root,
        "sums": {"mnist": write_sums(mnist), "fsdd": write_sums(root / "fsdd")},
    }


def make_tiny_dataset(root: Path, per_class: dict[str, int] | None = None, classes: int = 3) -> Path:
    """A dataset of your own in the manifest contract: PNGs, WAV tones and texts."""
    from PIL import Image

    per_class = per_class or {"train": 6, "val": 2, "test": 2}
    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = []
    t = np.arange(1600) / 8000
    for label in range(classes):
        for split, count in per_class.items():
            for k in range(count):
                sid = f"{split}-{label}-{k}"
                rng = np.random.default_rng(zlib.crc32(sid.encode()))
                pixels = (rng.random((28, 28)) * 60).astype(np.uint8)
                pixels[4 + 6 * label : 10 + 6 * label, 4:24] = 255
                Image.fromarray(pixels).save(root / "images" / f"{sid}.png")
                tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * label) * t) + 0.01 * rng.standard_normal(t.size)
                sf.write(root / "audio" / f"{sid}.wav", tone, 8000, subtype="PCM_16")
                rows.append(f"{sid},{label},{split},images/{sid}.png,audio/{sid}.wav,class {label} number {k}\n")
    manifest = root / "manifest.csv"
    manifest.write_text("sample_id,label,split,image,audio,text\n" + "".join(rows))
    return manifest


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Path to the manifest of a small, valid dataset of your own."""
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def dataset_factory():
    """make_tiny_dataset, for fixtures of wider scope that build their own projects."""
    return make_tiny_dataset
