"""Malformed media that must be refused the same way everywhere: by validate, preprocess and the service."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from scipy.io import wavfile


def bomb_png(side: int = 30000) -> bytes:
    """A PNG of a few KB whose header declares side x side pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def truncated_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A 16-bit WAV whose header promises twice the sample bytes that follow (cut short in transit)."""
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)
    wavfile.write(buffer, rate, (tone * 32767).astype(np.int16))
    whole = buffer.getvalue()
    return whole[: 44 + (len(whole) - 44) // 2]
