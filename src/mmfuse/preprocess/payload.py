"""Reading a media payload (bytes from a request, or a file) with the same checks for every modality."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmfuse.data.media import MediaStore
from mmfuse.errors import MediaError


def read_payload(source: bytes | Path, modality: str, max_bytes: int) -> bytes:
    """Bytes of a payload or file, refusing empty, missing and oversized input up front."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        data = _read_sized(str(path), lambda: path.stat().st_size, path.read_bytes, modality, max_bytes)
    if not data:
        raise MediaError("the payload is empty (0 bytes).", modality=modality)
    if len(data) > max_bytes:
        raise MediaError(f"the payload is {len(data)} bytes, over the limit of {max_bytes}.", modality=modality)
    return data


def read_media(store: MediaStore, rel: str, modality: str, max_bytes: int) -> bytes:
    """A dataset's medium by manifest path, with `read_payload`'s checks."""
    data = _read_sized(rel, lambda: store.size(rel), lambda: store.read(rel), modality, max_bytes)
    return read_payload(data, modality, max_bytes)


def _read_sized(name: str, size: Callable[[], int], read: Callable[[], bytes], modality: str, max_bytes: int) -> bytes:
    """`read()`, once `size()` says it is within `max_bytes` (an oversized file is never read);
    an OSError of either becomes a MediaError naming `name`."""
    try:
        found = size()
        if found > max_bytes:
            raise MediaError(f"{name} is {found} bytes, over the limit of {max_bytes}.", modality=modality)
        return read()
    except OSError as exc:
        raise MediaError(f"cannot read {name}: {exc.strerror or exc}.", modality=modality) from exc
