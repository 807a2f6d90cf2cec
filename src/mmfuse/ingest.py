"""The ingest stage: put the dataset named in params under data/raw/<name>/.

avdigits is built from verified sources; a dataset of your own (a manifest path) is
copied in, so DVC versions exactly the bytes the rest of the pipeline saw.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.progress import track

from mmfuse import paths
from mmfuse.config import DataParams
from mmfuse.data.avdigits import build_avdigits
from mmfuse.data.manifest import MODALITIES, read_manifest, unsafe_path_reason
from mmfuse.data.sources import fetch_all
from mmfuse.errors import ConfigError
from mmfuse.io import atomic_dir


def dataset_name(params: DataParams) -> str:
    """avdigits, or the name of the folder that holds your manifest."""
    if params.dataset == "avdigits":
        return "avdigits"
    return Path(params.dataset).parent.name or "dataset"


def dataset_manifest(params: DataParams, raw_root: Path = paths.RAW) -> Path:
    """The ingested manifest that every later stage reads."""
    name = "manifest.parquet" if params.dataset.endswith(".parquet") else "manifest.csv"
    return Path(raw_root) / dataset_name(params) / name


def copy_own_dataset(manifest_path: Path, out_dir: Path) -> None:
    """Copy a manifest and every safe, existing media file it names into `out_dir`.

    Unsafe or missing paths stay in the manifest untouched: the validate stage reports
    each offending row instead of ingest stopping at the first one.
    """
    frame = read_manifest(manifest_path)
    root = manifest_path.parent
    with atomic_dir(out_dir) as staging:
        shutil.copyfile(manifest_path, staging / manifest_path.name)
        media = sorted({p for col in MODALITIES[:2] for p in frame[col] if p and unsafe_path_reason(p) is None})
        for rel in track(media, description=f"copying {root.name}", transient=True):
            origin = root / rel
            if origin.is_file() and origin.resolve().is_relative_to(root.resolve()):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, staging / rel)


def run_ingest(params: DataParams, raw_root: Path = paths.RAW) -> Path:
    """Ingest the configured dataset; return its manifest under `raw_root`."""
    out_dir = Path(raw_root) / dataset_name(params)
    if params.dataset == "avdigits":
        mirror = os.environ.get("MMFUSE_DATA_MIRROR")
        fetch_all(paths.SOURCES, Path(mirror) if mirror else None)
        build_avdigits(paths.SOURCES, out_dir, params)
    else:
        manifest = Path(params.dataset)
        if not manifest.is_file():
            raise ConfigError(f"data.dataset={params.dataset!r}: no such manifest (use 'avdigits' or a .csv/.parquet path).")
        copy_own_dataset(manifest, out_dir)
    return dataset_manifest(params, raw_root)
