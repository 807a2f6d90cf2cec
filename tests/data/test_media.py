"""Packed media: tar shards plus an index, read back byte for byte, written the same everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from mmfuse.data.media import LooseMedia, PackedMedia, ShardWriter, open_media
from mmfuse.errors import ManifestError
from mmfuse.io import atomic_dir

FILES = {f"images/{k}.png": bytes([k]) * (k * 97 % 1500) for k in range(7)} | {"audio/x y,é.wav": b"RIFF" * 300}


def _pack(folder, files_per_shard=3):
    with atomic_dir(folder) as staging, ShardWriter(staging, files_per_shard) as writer:
        for rel, data in FILES.items():
            writer.add(rel, data)


def test_packed_media_read_back_exactly_and_shards_are_plain_tar(tmp_path):
    _pack(tmp_path / "ds")
    media = open_media(tmp_path / "ds")
    assert isinstance(media, PackedMedia)
    assert {rel: media.read(rel) for rel in FILES} == FILES
    assert all(media.size(rel) == len(data) for rel, data in FILES.items())
    shards = sorted((tmp_path / "ds" / "media").glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]  # 8 files, 3 each
    unpacked = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert (member.mtime, member.mode, member.uid) == (0, 0o644, 0)
                unpacked[member.name] = tar.extractfile(member).read()
    assert unpacked == FILES  # any tar tool reads them: nothing mmfuse-specific inside


def test_the_same_media_give_the_same_bytes(tmp_path):
    _pack(tmp_path / "a")
    time.sleep(1.1)  # a timestamp in a header would now differ
    _pack(tmp_path / "b")
    for name in sorted(os.listdir(tmp_path / "a" / "media")):
        assert (tmp_path / "a" / "media" / name).read_bytes() == (tmp_path / "b" / "media" / name).read_bytes()


def test_missing_unsafe_and_twice_packed_paths_are_refused(tmp_path):
    _pack(tmp_path / "ds")
    media = open_media(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match=r"images/nope\.png is not in the dataset's media"):
        media.read("images/nope.png")
    with pytest.raises(ManifestError, match="leaves the dataset root"):
        media.read("../images/0.png")
    with pytest.raises(ManifestError, match="packed twice"), ShardWriter(tmp_path / "other", 5) as writer:
        writer.add("a.png", b"1")
        writer.add("a.png", b"2")
    assert not (tmp_path / "other" / "media" / "index.csv").exists()  # a failed pack publishes no index
    with pytest.raises(ManifestError, match="leaves the dataset root"), ShardWriter(tmp_path / "other", 5) as writer:
        writer.add("../a.png", b"1")


def test_a_truncated_shard_is_an_error_not_short_bytes(tmp_path):
    _pack(tmp_path / "ds")
    last = tmp_path / "ds" / "media" / "shard-00002.tar"
    last.write_bytes(last.read_bytes()[:700])
    with pytest.raises(OSError, match="truncated: rerun the ingest stage"):
        open_media(tmp_path / "ds").read("audio/x y,é.wav")


def test_a_folder_without_an_index_is_read_as_loose_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    media = open_media(tmp_path)
    assert isinstance(media, LooseMedia) and media.read("images/a.png") == b"png"
    with pytest.raises(FileNotFoundError):
        media.read("images/b.png")


def test_loose_media_never_leave_the_folder(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "images" / "a.png").write_bytes(b"x")
    (outside / "secret.png").write_bytes(b"x")
    (root / "images" / "link.png").symlink_to(outside / "secret.png")
    (root / "escape").symlink_to(outside)
    media = LooseMedia(root)
    assert media.read("images/a.png") == b"x"
    for rel in ("images/link.png", "escape/secret.png", "../outside/secret.png", "/etc/passwd", "images/.."):
        with pytest.raises(ManifestError):
            media.read(rel)


PACK_SLOWLY = """
import sys, time
from pathlib import Path
from mmfuse.data.media import ShardWriter
from mmfuse.io import atomic_dir
with atomic_dir(Path(sys.argv[1])) as staging, ShardWriter(staging, 2) as writer:
    for k in range(1000):
        writer.add(f"f{k}.bin", b"x" * 10000)
        if k == 5:
            print("packing", flush=True)
        time.sleep(0.01)
"""


def test_a_pack_killed_midway_leaves_the_previous_media(tmp_path):
    _pack(tmp_path / "ds")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds" / "media").iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-c", PACK_SLOWLY, str(tmp_path / "ds")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "packing\n"  # shards are being written now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds" / "media").iterdir()} == before
    assert {rel: open_media(tmp_path / "ds").read(rel) for rel in FILES} == FILES
