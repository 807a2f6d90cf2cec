"""Comparing folders in tests: one digest of a whole tree, or its files by relative path."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_digest(folder: Path) -> str:
    """One sha256 over every file's relative path and bytes under `folder`: equal iff the trees are."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def tree_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path: compared key by key, a difference names the file."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}
