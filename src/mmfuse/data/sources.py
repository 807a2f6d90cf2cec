"""Fetch upstream sources into `data/sources/`, every file verified by sha256.

Sources come from the network, or from a local mirror laid out like upstream when
MMFUSE_DATA_MIRROR names one. The expected sums ship with the code, so a mirror is
trusted no more than the network. A source folder is built in a temp dir and renamed
into place only when every file verified: a partial or corrupt fetch never leaves a
usable-looking folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import requests
from rich.progress import Progress

from mmfuse.errors import ChecksumError, SourceError
from mmfuse.io import atomic_dir

MIRROR_ENV = "MMFUSE_DATA_MIRROR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One upstream dataset: where it lives and how it is packaged."""

    name: str
    url: str
    kind: Literal["archive", "files"]
    archive_prefix: str = ""  # folder inside the archive that mirrors the layout

    def expected_sums(self) -> dict[str, str]:
        text = resources.files("mmfuse.data").joinpath(f"checksums/{self.name}.sha256").read_text()
        return parse_sums(text)


FSDD = Source(
    name="fsdd",
    url="https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz",
    kind="archive",
    archive_prefix="free-spoken-digit-dataset-1.0.10/",
)
MNIST = Source(name="mnist", url="https://ossci-datasets.s3.amazonaws.com/mnist/", kind="files")
SOURCES = (FSDD, MNIST)


def parse_sums(text: str) -> dict[str, str]:
    """Parse `sha256sum` output (`<hex>  <relative path>` per line)."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise SourceError(f"checksum list line {number} is not '<sha256>  <path>': {line!r}")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: str, label: str) -> None:
    """Raise ChecksumError naming the file when its content is not the expected one."""
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {label}: expected sha256 {expected}, got {actual}. "
            "The file is corrupt or not the published version; delete it and fetch again "
            f"(or repair the mirror named by {MIRROR_ENV})."
        )


def is_complete(folder: Path, expected: dict[str, str]) -> bool:
    """True when every expected file is present with the expected sum."""
    try:
        for rel, digest in expected.items():
            verify_file(folder / rel, digest, rel)
    except (ChecksumError, OSError):
        return False
    return True


def fetch_source(
    source: Source,
    dest_root: Path,
    mirror: Path | None = None,
    expected: dict[str, str] | None = None,
    url: str | None = None,
) -> Path:
    """Make `dest_root/<name>` hold exactly the verified files of `source`; return it.

    `expected` and `url` default to what ships with the code; tests pass their own.
    """
    expected = source.expected_sums() if expected is None else expected
    target = Path(dest_root) / source.name
    if target.exists() and is_complete(target, expected):
        return target
    with atomic_dir(target) as staging:
        if mirror is not None:
            _copy_from_mirror(source, Path(mirror), staging, expected)
        elif source.kind == "archive":
            _from_archive(source, url or source.url, staging, expected)
        else:
            _from_files(source, url or source.url, staging, expected)
    return target


def fetch_all(dest_root: Path, mirror: Path | None = None) -> list[Path]:
    """Fetch every source of the default dataset (from the mirror when one is named)."""
    if mirror is None and os.environ.get(MIRROR_ENV):
        mirror = Path(os.environ[MIRROR_ENV])
    if mirror is not None and not mirror.is_dir():
        raise SourceError(f"{MIRROR_ENV}={mirror} is not a folder; point it at a dataset mirror.")
    return [fetch_source(source, dest_root, mirror=mirror) for source in SOURCES]


def _copy_from_mirror(source: Source, mirror: Path, staging: Path, expected: dict[str, str]) -> None:
    root = mirror / source.name
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{source.name} from mirror", total=len(expected))
        for rel, digest in expected.items():
            origin = root / rel
            if not origin.is_file():
                raise SourceError(f"{origin} is missing from the mirror ({MIRROR_ENV}={mirror}).")
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, dest)
            verify_file(dest, digest, f"{source.name}/{rel} (from {origin})")
            progress.advance(task)


def _download(url: str, dest: Path, label: str) -> None:
    """Stream `url` to `dest`; a broken or short transfer is an error, never a file."""
    try:
        if url.startswith("file://"):
            shutil.copyfile(url.removeprefix("file://"), dest)
            return
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            written = 0
            with open(dest, "wb") as handle, Progress(transient=True) as progress:
                task = progress.add_task(f"download {label}", total=total)
                for chunk in response.iter_content(_CHUNK):
                    handle.write(chunk)
                    written += len(chunk)
                    progress.advance(task, len(chunk))
            if total is not None and written != total:
                raise SourceError(f"download of {url} stopped after {written} of {total} bytes; retry.")
    except (requests.RequestException, OSError) as exc:
        dest.unlink(missing_ok=True)
        raise SourceError(
            f"could not download {label} from {url}: {exc}. Offline? Set {MIRROR_ENV} to a local mirror."
        ) from exc


def _from_files(source: Source, base_url: str, staging: Path, expected: dict[str, str]) -> None:
    for rel, digest in expected.items():
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _download(base_url.rstrip("/") + "/" + rel, dest, f"{source.name}/{rel}")
        verify_file(dest, digest, f"{source.name}/{rel}")


def _from_archive(source: Source, url: str, staging: Path, expected: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(dir=staging.parent) as scratch:
        archive = Path(scratch) / "source.tar.gz"
        _download(url, archive, source.name)
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = {m.name: m for m in tar.getmembers()}
                for rel, digest in expected.items():
                    member = members.get(source.archive_prefix + rel)
                    if member is None or not member.isfile():
                        raise SourceError(f"{source.name} archive from {url} lacks {rel}.")
                    dest = staging / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as data, open(dest, "wb") as out:  # type: ignore[union-attr]
                        shutil.copyfileobj(data, out)
                    verify_file(dest, digest, f"{source.name}/{rel}")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SourceError(
                f"the {source.name} archive from {url} is truncated or corrupt ({exc}); fetch it again."
            ) from exc
