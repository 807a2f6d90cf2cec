"""Stage 1, ingest: put the dataset named by `data.dataset` under <raw>/<name>/.

avdigits is built from verified sources (fetched into <sources> first, from the network or
$MMFUSE_DATA_MIRROR); a dataset of your own (a manifest path) is copied in, so DVC
versions exactly the bytes the rest of the pipeline saw. Media are packed into tar shards
with an index (`mmfuse.data.media`): DVC tracks a few dozen files, not one per sample. Either way the new folder
replaces the old one in one rename, and <raw> is a persistent DVC output (DVC does not
delete it before the stage runs): a failure leaves the previous dataset untouched. A
dataset's inputs are checked (links that dangle or leave its folder) before anything is
written.

Extra datasets (`data.extra`, e.g. harvested traffic) are merged in: their media are packed
as extra/<its folder>/<path> and their rows appended to the manifest with their media paths
prefixed, so the validate stage checks them with the rest (leakage into test included) and
every later stage sees one dataset. They are read and checked before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import typer
from rich.progress import track

from mmfuse.data.avdigits import build_avdigits
from mmfuse.data.manifest import (
    EXTRA_SPLITS,
    dataset_manifest,
    dataset_name,
    link_problems,
    read_manifest,
    unsafe_path_reason,
)
from mmfuse.data.media import MediaStore, ShardWriter, open_media
from mmfuse.data.sources import fetch_all
from mmfuse.errors import ConfigError, ManifestError
from mmfuse.io import atomic_dir
from mmfuse.modality import MEDIA
from mmfuse.params import load_params
from mmfuse.params.data import DataParams
from mmfuse.stages import console, stage_cli


def named_media(frame: pd.DataFrame) -> list[str]:
    """The safe media paths a manifest names, sorted."""
    return sorted({p for col in MEDIA for p in frame[col] if p and unsafe_path_reason(p) is None})


def own_media(manifest_path: Path, frame: pd.DataFrame) -> list[str]:
    """`named_media` of a dataset folder, after refusing links that cannot be ingested."""
    root = Path(manifest_path).parent
    media = named_media(frame)
    problems = link_problems(root, media)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ManifestError(f"dataset {root} has {len(problems)} link(s) that cannot be ingested:\n  {shown}")
    return media


def pack(writer: ShardWriter, store: MediaStore, paths: list[str], prefix: str = "") -> None:
    """Pack each of `paths` that `store` holds as `prefix + path`.

    Missing files are skipped: the manifest keeps naming them, and the validate stage reports
    each offending row instead of ingest stopping at the first one.
    """
    for rel in track(paths, description=f"packing {store.root.name}", transient=True):
        try:
            data = store.read(rel)
        except FileNotFoundError:
            continue
        writer.add(prefix + rel, data)


def copy_own_dataset(manifest_path: Path, out_dir: Path, files_per_shard: int) -> None:
    """Copy a manifest into `out_dir` and pack every safe, existing media file it names.

    Unsafe or missing paths stay in the manifest untouched (see `pack`).
    """
    frame = read_manifest(manifest_path)
    media = own_media(manifest_path, frame)
    with atomic_dir(out_dir) as staging, ShardWriter(staging, files_per_shard) as writer:
        shutil.copyfile(manifest_path, staging / manifest_path.name)
        pack(writer, open_media(manifest_path.parent), media)


EXTRA_DIR = "extra"


def read_extras(paths: list[str]) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Each extra manifest by the name of its folder, read and checked: it exists, its rows
    are train or test_recent only (EXTRA_SPLITS), and no two share a folder name."""
    extras: dict[str, tuple[Path, pd.DataFrame]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(
                f"data.extra names {path}, which does not exist: remove it from params.yaml or restore it."
            )
        frame = read_manifest(path)
        bad = frame[~frame["split"].isin(EXTRA_SPLITS)]
        if len(bad):
            shown = ", ".join(f"{r.sample_id} ({r.split!r})" for r in bad.head(5).itertuples())
            raise ManifestError(
                f"{path}: {len(bad)} row(s) in a split an extra dataset may not add, first: {shown}; "
                f"extra rows must be {' or '.join(EXTRA_SPLITS)} (val and test stay the base dataset's)."
            )
        name = path.parent.name
        if name in extras:
            raise ConfigError(
                f"data.extra: {extras[name][0]} and {path} both live in a folder named {name!r}; rename one."
            )
        extras[name] = (path, frame)
    return extras


def merge_extras(
    dataset_dir: Path, manifest: Path, extras: dict[str, tuple[Path, pd.DataFrame]], files_per_shard: int
) -> None:
    """Pack each extra dataset's media under extra/<name>/ beside the dataset's own and append its rows to `manifest`.

    Safe media paths gain the prefix extra/<name>/; unsafe ones stay as they are, so the validate
    stage names the row (a prefix could turn "/etc/x" into a harmless-looking missing file). The
    dataset is rewritten in one rename, after every extra was read.
    """
    if not extras:
        return
    dataset_dir = Path(dataset_dir)
    frames = [read_manifest(manifest)]
    base = open_media(dataset_dir)
    with atomic_dir(dataset_dir) as staging, ShardWriter(staging, files_per_shard) as writer:
        for item in dataset_dir.iterdir():  # the manifest, dataset.json: everything but the media
            if item.is_file():
                shutil.copyfile(item, staging / item.name)
        pack(writer, base, named_media(frames[0]))
        for name, (path, frame) in extras.items():
            pack(writer, open_media(path.parent), own_media(path, frame), prefix=f"{EXTRA_DIR}/{name}/")
            prefixed = frame.copy()
            for column in MEDIA:
                prefixed[column] = frame[column].map(
                    lambda rel, name=name: f"{EXTRA_DIR}/{name}/{rel}"
                    if rel and unsafe_path_reason(rel) is None
                    else rel
                )
            frames.append(prefixed)
        merged = pd.concat(frames, ignore_index=True).fillna("")
        target = staging / manifest.name
        if manifest.suffix == ".parquet":
            merged.to_parquet(target, index=False)
        else:
            merged.to_csv(target, index=False, lineterminator="\n")


def run(*, sources: Path, raw: Path, params: DataParams) -> Path:
    """Ingest the configured dataset into raw/<name>/ with its extras merged in, then drop any other dataset's folder
    from <raw> (it was the output of another configuration); return the manifest."""
    out_dir = Path(raw) / dataset_name(params)
    extras = read_extras(params.extra)
    if params.dataset == "avdigits":
        fetch_all(Path(sources))
        build_avdigits(Path(sources), out_dir, params)
    else:
        manifest = Path(params.dataset)
        if not manifest.is_file():
            raise ConfigError(
                f"data.dataset={params.dataset!r}: no such manifest (use 'avdigits' or a .csv/.parquet path)."
            )
        copy_own_dataset(manifest, out_dir, params.shard_files)
    merge_extras(out_dir, dataset_manifest(params, raw), extras, params.shard_files)
    for stale in Path(raw).iterdir():
        if stale == out_dir:
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    return dataset_manifest(params, raw)


def main(
    sources: Path = typer.Option(..., help="Where the verified avdigits sources are (fetched there when missing)."),
    raw: Path = typer.Option(..., help="Where the ingested dataset goes: <raw>/<name>/."),
) -> None:
    """Stage 1: build or copy the dataset named by data.dataset into <raw>/<name>/."""
    console.print(f"[green]ingested[/] {run(sources=sources, raw=raw, params=load_params().data)}")


if __name__ == "__main__":
    stage_cli(main)
