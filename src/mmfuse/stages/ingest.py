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
from typing import NamedTuple

import pandas as pd
import typer
from rich.progress import track

from mmfuse.data.avdigits import write_avdigits
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


def write_own_dataset(manifest_path: Path, folder: Path, writer: ShardWriter) -> None:
    """Copy a manifest into `folder` and pack every safe, existing media file it names with `writer`.

    Unsafe or missing paths stay in the manifest untouched (see `pack`).
    """
    media = own_media(manifest_path, read_manifest(manifest_path))
    shutil.copyfile(manifest_path, folder / manifest_path.name)
    pack(writer, open_media(manifest_path.parent), media)


EXTRA_DIR = "extra"


class Extra(NamedTuple):
    """An extra dataset, read and checked: its manifest, its rows and the media it names."""

    manifest: Path
    frame: pd.DataFrame
    media: list[str]


def read_extras(paths: list[str]) -> dict[str, Extra]:
    """Each extra dataset by the name of its folder, read and checked before anything is written:
    it exists, its rows are train or test_recent only (EXTRA_SPLITS), no two share a folder
    name, and its media hold no link that cannot be ingested (`own_media`)."""
    extras: dict[str, Extra] = {}
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
                f"data.extra: {extras[name].manifest} and {path} both live in a folder named {name!r}; rename one."
            )
        extras[name] = Extra(path, frame, own_media(path, frame))
    return extras


def add_extras(manifest: Path, extras: dict[str, Extra], writer: ShardWriter) -> None:
    """Pack each extra dataset's media under extra/<name>/ with `writer` (the shards of the
    dataset's own media) and append its rows to `manifest`.

    Safe media paths gain the prefix extra/<name>/; unsafe ones stay as they are, so the validate
    stage names the row (a prefix could turn "/etc/x" into a harmless-looking missing file).
    """
    if not extras:
        return
    frames = [read_manifest(manifest)]
    for name, extra in extras.items():
        prefix = f"{EXTRA_DIR}/{name}/"
        pack(writer, open_media(extra.manifest.parent), extra.media, prefix=prefix)
        prefixed = extra.frame.copy()
        for column in MEDIA:
            prefixed[column] = extra.frame[column].map(
                lambda rel: prefix + rel if rel and unsafe_path_reason(rel) is None else rel
            )
        frames.append(prefixed)
    merged = pd.concat(frames, ignore_index=True).fillna("")
    if manifest.suffix == ".parquet":
        merged.to_parquet(manifest, index=False)
    else:
        merged.to_csv(manifest, index=False, lineterminator="\n")


def run(*, sources: Path, raw: Path, params: DataParams) -> Path:
    """Ingest the configured dataset into raw/<name>/ with its extras merged in, then drop any other dataset's folder
    from <raw> (it was the output of another configuration); return the manifest."""
    out_dir = Path(raw) / dataset_name(params)
    extras = read_extras(params.extra)
    own = None if params.dataset == "avdigits" else Path(params.dataset)
    if own is None:
        fetch_all(Path(sources))
    elif not own.is_file():
        raise ConfigError(
            f"data.dataset={params.dataset!r}: no such manifest (use 'avdigits' or a .csv/.parquet path)."
        )
    # One folder, one set of shards: the dataset's media and its extras' are packed once, and
    # committed in one rename.
    with atomic_dir(out_dir) as staging, ShardWriter(staging, params.shard_files) as writer:
        if own is None:
            write_avdigits(Path(sources), staging, writer, params)
        else:
            write_own_dataset(own, staging, writer)
        add_extras(staging / dataset_manifest(params, raw).name, extras, writer)
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
