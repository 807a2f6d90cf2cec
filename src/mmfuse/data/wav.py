"""A check on WAV containers that the decoders do not make: shared by validate, preprocessing and serving."""

from __future__ import annotations

_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset


def truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE payload is cut short (its data chunk declares more bytes than follow), or None.

    libsndfile reads what is there and reports the shorter length without a word, so a
    clip that lost its end in transit would pass as a short clip.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        if chunk == b"data":
            available = len(data) - offset - 8
            if size not in _UNKNOWN_SIZES and size > available:
                return f"the WAV is truncated: its header promises {size} bytes of samples, {available} follow."
            return None
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None
