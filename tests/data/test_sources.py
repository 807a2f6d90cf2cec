"""Fetching sources: every file verified, nothing half-written on any failure."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from mmfuse.data.sources import FSDD, MNIST, fetch_source, is_complete, parse_sums
from mmfuse.errors import ChecksumError, SourceError


def test_mirror_fetch_verifies_every_file(tiny_mirror, tmp_path):
    dest = tmp_path / "sources"
    folder = fetch_source(FSDD, dest, mirror=tiny_mirror["root"], expected=tiny_mirror["sums"]["fsdd"])
    assert is_complete(folder, tiny_mirror["sums"]["fsdd"])
    assert len(list((folder / "recordings").glob("*.wav"))) == 60


def test_checksum_mismatch_names_file_and_leaves_nothing(tiny_mirror, tmp_path):
    victim = tiny_mirror["root"] / "mnist" / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")
    dest = tmp_path / "sources"
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        fetch_source(MNIST, dest, mirror=tiny_mirror["root"], expected=tiny_mirror["sums"]["mnist"])
    assert not (dest / "mnist").exists()
    assert [p.name for p in dest.iterdir()] == []  # no temp folder left either


def test_failed_refetch_keeps_previous_good_copy(tiny_mirror, tmp_path):
    dest = tmp_path / "sources"
    sums = tiny_mirror["sums"]["mnist"]
    fetch_source(MNIST, dest, mirror=tiny_mirror["root"], expected=sums)
    (dest / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"damaged locally")
    (tiny_mirror["root"] / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(SourceError, match="missing from the mirror"):
        fetch_source(MNIST, dest, mirror=tiny_mirror["root"], expected=sums)
    # the damaged copy is still there to inspect, and is still recognised as incomplete
    assert not is_complete(dest / "mnist", sums)


def _archive(mirror: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(mirror / "fsdd" / "recordings", arcname=FSDD.archive_prefix + "recordings")
    return target


def test_archive_download_extracts_and_verifies(tiny_mirror, tmp_path):
    archive = _archive(tiny_mirror["root"], tmp_path / "fsdd.tar.gz")
    folder = fetch_source(FSDD, tmp_path / "sources", expected=tiny_mirror["sums"]["fsdd"], url=f"file://{archive}")
    assert is_complete(folder, tiny_mirror["sums"]["fsdd"])


def test_truncated_archive_is_a_clear_error(tiny_mirror, tmp_path):
    archive = _archive(tiny_mirror["root"], tmp_path / "fsdd.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    dest = tmp_path / "sources"
    with pytest.raises(SourceError, match="truncated or corrupt"):
        fetch_source(FSDD, dest, expected=tiny_mirror["sums"]["fsdd"], url=f"file://{archive}")
    assert not (dest / "fsdd").exists()


def test_unreachable_network_says_to_use_a_mirror(tmp_path):
    with pytest.raises(SourceError, match="MMFUSE_DATA_MIRROR"):
        fetch_source(MNIST, tmp_path, expected={"x.gz": "0" * 64}, url="http://127.0.0.1:9/")


def test_shipped_sums_cover_both_sources():
    assert len(FSDD.expected_sums()) == 3000
    assert set(MNIST.expected_sums()) == {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}


def test_malformed_sum_line_is_rejected():
    with pytest.raises(SourceError, match="line 2"):
        parse_sums(f"{'a' * 64}  ok.wav\nnot a checksum line\n")
