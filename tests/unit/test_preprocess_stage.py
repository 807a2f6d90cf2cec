"""The batch stage on a tiny synthetic dataset: outputs, dedup, determinism, and that the
single-sample path (what the service calls) gives the very same tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from trees import tree_files

from mmfuse.errors import ManifestError, MediaError
from mmfuse.params.preprocess import EXECUTION, PreprocessParams
from mmfuse.preprocess.build import build_processed
from mmfuse.preprocess.processed import ShardedSplit, split_dir
from mmfuse.preprocess.sample import preprocess_sample
from mmfuse.preprocess.state import PreprocessState

PARAMS = PreprocessParams(chunk_size=5)  # several chunks, so results are reassembled across workers


@pytest.fixture(scope="module")
def processed(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("processed") / "avd"
    build_processed(tiny_dataset, out, PARAMS)
    return out


def read_split(processed: Path, split: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A whole split as tensors, and its sample ids, through the contract's reader."""
    sharded = ShardedSplit.open(split_dir(processed, split))
    return {k: torch.from_numpy(v) for k, v in sharded.read(np.arange(len(sharded))).items()}, sharded.sample_ids


def test_writes_the_contract_files_with_the_declared_shapes(processed):
    assert sorted(tree_files(processed)) == [
        "dedup_report.json",
        "meta.json",
        "test/00000.safetensors",
        "test/index.json",
        "train/00000.safetensors",
        "train/index.json",
        "val/00000.safetensors",
        "val/index.json",
    ]
    meta = json.loads((processed / "meta.json").read_text())
    assert meta["labels"] == ["0", "1", "2", "3"]
    assert meta["counts"] == {"train": 16, "val": 4, "test": 4}
    assert meta["params"] == PARAMS.model_dump(mode="json", exclude=set(EXECUTION))
    assert "workers" not in meta["params"]  # how it ran is no part of what it made
    train, _ = read_split(processed, "train")
    assert {k: (v.dtype, list(v.shape)) for k, v in train.items()} == {
        "image": (torch.float32, [16, *meta["shapes"]["image"]]),
        "audio": (torch.float32, [16, *meta["shapes"]["audio"]]),
        "text": (torch.int64, [16, *meta["shapes"]["text"]]),
        "mask": (torch.bool, [16, 3]),
        "label": (torch.int64, [16]),
    }


def test_train_is_deduplicated_and_leakage_removed_with_reasons(processed):
    report = json.loads((processed / "dedup_report.json").read_text())
    removed = {entry["sample_id"]: entry for entry in report["removed"]}
    assert set(removed) == {"t-dup", "t-leak"}
    assert removed["t-dup"]["reason"] == "duplicate record within train" and removed["t-dup"]["other_id"] == "t-00"
    assert (removed["t-leak"]["modality"], removed["t-leak"]["match"], removed["t-leak"]["other_id"]) == (
        "image",
        "exact",
        "v-00",
    )
    kept = read_split(processed, "train")[1]
    assert "t-01" in kept and "t-02" in kept  # one clip, two images: legitimate
    assert kept == sorted(kept)


def test_missing_modalities_are_zero_and_masked(processed):
    train, ids = read_split(processed, "train")
    image_only, text_only = ids.index("t-img"), ids.index("t-txt")
    assert train["mask"][image_only].tolist() == [True, False, False]
    assert train["mask"][text_only].tolist() == [False, False, True]
    assert not train["audio"][image_only].any() and not train["text"][image_only].any()
    assert not train["image"][text_only].any()


def test_train_statistics_normalise_train(processed):
    train, _ = read_split(processed, "train")
    images = train["image"][train["mask"][:, 0]]
    assert images.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert images.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_single_sample_path_gives_identical_tensors(processed, tiny_dataset):
    state = PreprocessState.from_dict(json.loads((processed / "meta.json").read_text()))
    manifest = pd.read_csv(tiny_dataset, dtype=str, keep_default_na=False).set_index("sample_id")
    root = tiny_dataset.parent
    for split in ("train", "val", "test"):
        batch, ids = read_split(processed, split)
        for k, sample_id in enumerate(ids):
            row = manifest.loc[sample_id]
            single = preprocess_sample(
                (root / row["image"]).read_bytes() if row["image"] else None,
                root / row["audio"] if row["audio"] else None,
                row["text"] or None,
                state,
            )
            for key in ("image", "audio", "text", "mask"):
                assert torch.equal(single[key], batch[key][k]), (sample_id, key)
            assert state.labels[batch["label"][k]] == row["label"]


def test_two_runs_write_byte_identical_files(processed, tiny_dataset, tmp_path):
    build_processed(tiny_dataset, tmp_path / "again", PARAMS)
    assert tree_files(tmp_path / "again") == tree_files(processed)
    assert not list(tmp_path.glob(".*"))  # the spilled features and the staging folder are gone


def test_shards_hold_the_rows_of_one_whole_split(processed, tiny_dataset, tmp_path, monkeypatch):
    """Shards of 3 rows (chunks of 5 records, so shards and chunks straddle each other) read back
    as the one-shard split, row for row; rows in any order, repeated, across shards."""
    monkeypatch.setattr("mmfuse.preprocess.build.SHARD_ROWS", 3)
    build_processed(tiny_dataset, tmp_path / "small", PARAMS)
    assert len(list((tmp_path / "small" / "train").glob("*.safetensors"))) == 6  # 16 rows
    whole, ids = read_split(processed, "train")
    small, small_ids = read_split(tmp_path / "small", "train")
    assert small_ids == ids and all(torch.equal(small[key], whole[key]) for key in whole)
    sharded = ShardedSplit.open(tmp_path / "small" / "train")
    rows = np.array([15, 0, 4, 5, 3, 3, 9, 2])
    for key, value in sharded.read(rows).items():
        assert torch.equal(torch.from_numpy(value), whole[key][torch.from_numpy(rows)]), key


def test_bytes_do_not_depend_on_workers_or_chunking(processed, tiny_dataset, tmp_path):
    """One Dask worker and one chunk against two workers and five-record chunks: the same files."""
    build_processed(tiny_dataset, tmp_path / "serial", PARAMS.model_copy(update={"workers": 1, "chunk_size": 100}))
    assert tree_files(tmp_path / "serial") == tree_files(processed)


def test_a_bad_record_fails_the_stage_naming_it_and_leaves_no_output(tiny_dataset, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    frame = pd.read_csv(tiny_dataset, dtype=str, keep_default_na=False)
    frame = frame[frame["image"] == ""].assign(split="train")  # text-only rows, no media to copy
    bad = {"sample_id": "x-bad", "label": "2", "split": "train", "image": "bad.png", "audio": "", "text": ""}
    pd.concat([frame, pd.DataFrame([bad])]).to_csv(root / "manifest.csv", index=False)
    with pytest.raises(MediaError, match=r"(?s)1 record\(s\) cannot be preprocessed.*x-bad: image: "):
        build_processed(root / "manifest.csv", tmp_path / "out", PARAMS)
    assert not (tmp_path / "out").exists()


def test_a_path_leaving_the_dataset_is_refused(tiny_dataset, tmp_path):
    frame = pd.read_csv(tiny_dataset, dtype=str, keep_default_na=False)
    frame.loc[0, "image"] = "../outside.png"
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(MediaError, match="leaves the dataset root"):
        build_processed(tmp_path / "manifest.csv", tmp_path / "out", PARAMS)


def test_labels_unseen_in_train_are_refused(tiny_dataset, tmp_path):
    frame = pd.read_csv(tiny_dataset, dtype=str, keep_default_na=False)
    frame = frame[frame["image"] == ""]
    frame = pd.concat([frame, frame.assign(sample_id="y", split="test", label="9")])
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ManifestError, match=r"labels \['9'\] occur in val/test but not"):
        build_processed(tmp_path / "manifest.csv", tmp_path / "out", PARAMS)


BUILD = """
import sys
from pathlib import Path
from mmfuse.params.preprocess import EXECUTION, PreprocessParams
from mmfuse.preprocess.build import build_processed
build_processed(Path(sys.argv[1]), Path(sys.argv[2]), PreprocessParams(chunk_size=5))
"""
# What differs between two x86-64 machines that a process can set: thread counts (OpenMP, MKL,
# OpenBLAS), the SIMD kernels numpy dispatches to and the kernel OpenBLAS picks for the CPU (an
# older CPU has no AVX-512, no AVX2).
OLDER_CPU = "X86_V3 X86_V4 AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"  # x86-64-v2 kernels only
OLDER_BLAS = "Nehalem"


@pytest.mark.parametrize(("threads", "cpu"), [("1", ""), ("2", OLDER_CPU)], ids=["one thread", "two threads, no AVX"])
def test_bytes_do_not_depend_on_thread_counts_or_cpu_kernels(processed, tiny_dataset, tmp_path, threads, cpu):
    """Worker counts and chunking: test_bytes_do_not_depend_on_workers_or_chunking; another
    cluster: tests/integration/test_dask_cluster.py."""
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    if cpu:
        env["NPY_DISABLE_CPU_FEATURES"] = cpu
        env["OPENBLAS_CORETYPE"] = OLDER_BLAS
    out = tmp_path / "other"
    done = subprocess.run([sys.executable, "-c", BUILD, str(tiny_dataset), str(out)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    other = tree_files(out)
    for name, content in tree_files(processed).items():
        assert other[name] == content, name
