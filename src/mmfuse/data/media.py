"""Where a dataset's media bytes live: packed into tar shards (ingested data) or loose files.

Ingest packs every image and clip a manifest names into `media/shard-NNNNN.tar` files of at
most `files_per_shard` members plus `media/index.csv` (path, shard, byte offset, size), so DVC
stats and hashes a few dozen files instead of one per sample: on avdigits (20,002 media files)
a no-op `dvc status` went from 6.5 s to 2.2 s. The shards are plain POSIX tar files
(`tar tf` lists them, `tar xf` unpacks them), written with fixed headers (mtime 0, root
owner, mode 644) so the same media give the same bytes on every machine.

The manifest contract does not change: rows still name media by their path relative to the
dataset folder, and every reader asks a `MediaStore` for those paths. `open_media` gives the
packed store of an ingested dataset, or the folder itself for a dataset that was never
ingested (your own folder, a harvested window), so every stage reads both the same way.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from mmfuse.data.manifest import resolve_media, unsafe_path_reason
from mmfuse.errors import ManifestError

MEDIA_DIR = "media"
INDEX = "index.csv"
INDEX_COLUMNS = ("path", "shard", "offset", "size")


class MediaStore(Protocol):
    """The media of one dataset, by manifest path. `read` raises FileNotFoundError for a path
    the dataset does not hold, and ManifestError for one that is unsafe or leaves the folder."""

    root: Path

    def read(self, rel: str) -> bytes: ...

    def size(self, rel: str) -> int: ...


@dataclass(frozen=True)
class Entry:
    shard: str
    offset: int
    size: int


class PackedMedia:
    """Media packed by `ShardWriter`: one positioned read per file, shard files opened once."""

    def __init__(self, root: Path, index: dict[str, Entry]) -> None:
        self.root = Path(root)
        self.index = index
        self._handles: dict[str, int] = {}

    def _entry(self, rel: str) -> Entry:
        reason = unsafe_path_reason(rel)
        if reason:
            raise ManifestError(f"media path {rel!r} {reason}; paths must be relative to the dataset root.")
        try:
            return self.index[rel]
        except KeyError:
            raise FileNotFoundError(f"{rel} is not in the dataset's media ({self.root / MEDIA_DIR / INDEX})") from None

    def size(self, rel: str) -> int:
        return self._entry(rel).size

    def read(self, rel: str) -> bytes:
        entry = self._entry(rel)
        if entry.shard not in self._handles:
            self._handles[entry.shard] = os.open(self.root / MEDIA_DIR / entry.shard, os.O_RDONLY)
        data = os.pread(self._handles[entry.shard], entry.size, entry.offset)
        if len(data) != entry.size:
            raise OSError(f"{self.root / MEDIA_DIR / entry.shard} is truncated: rerun the ingest stage")
        return data

    def __del__(self) -> None:
        for handle in self._handles.values():
            os.close(handle)


class LooseMedia:
    """A dataset folder with one file per medium, as users bring it (never ingested)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._folders: dict[str, Path] = {}

    def _path(self, rel: str) -> Path:
        """`resolve_media(root, rel)`, resolving each folder once.

        Fully resolving every file walks the whole path with one lstat per component, ~10% of
        the preprocess stage's time on a loose avdigits; a plain file in an already-checked
        folder needs only a symlink test, and anything else goes through resolve_media itself.
        """
        folder, _, name = rel.rpartition("/")
        if unsafe_path_reason(rel) or name in ("", ".", ".."):
            return resolve_media(self.root, rel)
        if folder not in self._folders:
            self._folders[folder] = resolve_media(self.root, folder) if folder else self.root.resolve()
        path = self._folders[folder] / name
        return resolve_media(self.root, rel) if path.is_symlink() else path

    def size(self, rel: str) -> int:
        return self._path(rel).stat().st_size

    def read(self, rel: str) -> bytes:
        return self._path(rel).read_bytes()


def open_media(root: Path) -> MediaStore:
    """The media of the dataset folder `root`: its packed shards when it has an index, else its files."""
    index = Path(root) / MEDIA_DIR / INDEX
    try:
        stamp = index.stat()
    except FileNotFoundError:
        return LooseMedia(Path(root))
    return _packed(Path(root), stamp.st_mtime_ns, stamp.st_size)


@lru_cache(maxsize=8)
def _packed(root: Path, mtime_ns: int, size: int) -> PackedMedia:
    """One reader per index version and process (Dask and validation workers read many chunks)."""
    del mtime_ns, size  # cache keys only: a rewritten index is read afresh
    path = root / MEDIA_DIR / INDEX
    index: dict[str, Entry] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        if tuple(next(reader, ())) != INDEX_COLUMNS:
            raise ManifestError(f"{path} does not start with the header {','.join(INDEX_COLUMNS)}: rerun ingest.")
        for row in reader:
            index[row[0]] = Entry(row[1], int(row[2]), int(row[3]))
    return PackedMedia(root, index)


class ShardWriter:
    """Pack media into `<folder>/media/`: tar shards of at most `files_per_shard` members, then the index.

    Members are written in the order added; adding the same path twice is an error (the index
    maps each path to one member). Use as a context manager inside an `atomic_dir`: the index
    is written last, on a clean exit only.
    """

    def __init__(self, folder: Path, files_per_shard: int) -> None:
        if files_per_shard < 1:
            raise ValueError("files_per_shard must be at least 1")
        self.folder = Path(folder) / MEDIA_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files_per_shard = files_per_shard
        self.rows: list[tuple[str, str, int, int]] = []
        self._paths: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._name = ""

    def add(self, rel: str, data: bytes) -> None:
        reason = unsafe_path_reason(rel)
        if reason or not rel:
            raise ManifestError(f"media path {rel!r} {reason or 'is empty'}; it cannot be packed.")
        if rel in self._paths:
            raise ManifestError(f"media path {rel!r} is packed twice; each path names one file.")
        self._paths.add(rel)
        if len(self.rows) % self.files_per_shard == 0:
            self._next_shard()
        assert self._tar is not None
        info = tarfile.TarInfo(rel)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "root", "root"
        self._tar.addfile(info, io.BytesIO(data))
        # addfile leaves `info` as it was; the data ends the archive so far, padded to a block
        blocks = -(-len(data) // tarfile.BLOCKSIZE)
        self.rows.append((rel, self._name, self._tar.offset - blocks * tarfile.BLOCKSIZE, len(data)))

    def _next_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._name = f"shard-{len(self.rows) // self.files_per_shard:05d}.tar"
        self._tar = tarfile.open(self.folder / self._name, "w", format=tarfile.PAX_FORMAT)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if self._tar is not None:
            self._tar.close()
        if kind is not None:
            return
        with (self.folder / INDEX).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(self.rows)
