"""Reading a media payload (bytes from a request, or a file) with the same checks for every modality."""

from __future__ import annotations

from pathlib import Path

from mmfuse.data.media import MediaStore
from mmfuse.errors import MediaError


def read_payload(source: bytes | Path, modality: str, max_bytes: int) -> bytes:
    """Bytes of a payload or file, refusing empty, missing and oversized input up front."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise MediaError(f"cannot read {path}: {exc.strerror or exc}.", modality=modality) from exc
        if size > max_bytes:
            raise MediaError(f"{path} is {size} bytes, over the limit of {max_bytes}.", modality=modality)
        data = path.read_bytes()
    if not data:
        raise MediaError("the payload is empty (0 bytes).", modality=modality)
    if len(data) > max_bytes:
        raise MediaError(f"the payload is {len(data)} bytes, over the limit of {max_bytes}.", modality=modality)
    return data


def read_media(store: MediaStore, rel: str, modality: str, max_bytes: int) -> bytes:
    """A dataset's medium by manifest path, with `read_payload`'s checks; the size is checked before reading."""
    try:
        size = store.size(rel)
        if size > max_bytes:
            raise MediaError(f"{rel} is {size} bytes, over the limit of {max_bytes}.", modality=modality)
        return read_payload(store.read(rel), modality, max_bytes)
    except OSError as exc:
        raise MediaError(f"cannot read {rel}: {exc.strerror or exc}.", modality=modality) from exc
