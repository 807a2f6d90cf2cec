"""Stage 1, ingest: put the dataset named by `data.dataset` under <raw>/<name>/.

avdigits is built from verified sources (fetched into <sources> first, from the network or
$MMFUSE_DATA_MIRROR); a dataset of your own (a manifest path) is copied in, so DVC
versions exactly the bytes the rest of the pipeline saw. Either way the new folder
replaces the old one in one rename, and <raw> is a persistent DVC output (DVC does not
delete it before the stage runs): a failure leaves the previous dataset untouched. A
dataset's inputs are checked (links that dangle or leave its folder) before anything is
written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.progress import track

from mmfuse.data.avdigits import build_avdigits
from mmfuse.data.manifest import dataset_manifest, dataset_name, link_problems, read_manifest, unsafe_path_reason
from mmfuse.data.sources import fetch_all
from mmfuse.errors import ConfigError, ManifestError
from mmfuse.io import atomic_dir
from mmfuse.modality import MEDIA
from mmfuse.params import load_params
from mmfuse.params.data import DataParams
from mmfuse.stages import console, stage_cli


def copy_own_dataset(manifest_path: Path, out_dir: Path) -> None:
    """Copy a manifest and every safe, existing media file it names into `out_dir`.

    Unsafe or missing paths stay in the manifest untouched: the validate stage reports
    each offending row instead of ingest stopping at the first one.
    """
    frame = read_manifest(manifest_path)
    root = manifest_path.parent
    media = sorted({p for col in MEDIA for p in frame[col] if p and unsafe_path_reason(p) is None})
    problems = link_problems(root, media)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ManifestError(f"dataset {root} has {len(problems)} link(s) that cannot be ingested:\n  {shown}")
    with atomic_dir(out_dir) as staging:
        shutil.copyfile(manifest_path, staging / manifest_path.name)
        for rel in track(media, description=f"copying {root.name}", transient=True):
            origin = root / rel
            if origin.is_file():  # inside the folder: link_problems refused any that leaves it
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, staging / rel)


def run(*, sources: Path, raw: Path, params: DataParams) -> Path:
    """Ingest the configured dataset into raw/<name>/, then drop any other dataset's folder
    from <raw> (it was the output of another configuration); return the manifest."""
    out_dir = Path(raw) / dataset_name(params)
    if params.dataset == "avdigits":
        fetch_all(Path(sources))
        build_avdigits(Path(sources), out_dir, params)
    else:
        manifest = Path(params.dataset)
        if not manifest.is_file():
            raise ConfigError(
                f"data.dataset={params.dataset!r}: no such manifest (use 'avdigits' or a .csv/.parquet path)."
            )
        copy_own_dataset(manifest, out_dir)
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
