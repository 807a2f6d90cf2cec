"""Stage 3, preprocess: clean every modality, deduplicate, and write tensors per split plus meta.json.

The work is `mmfuse.preprocess.build.build_processed`, which composes the very transforms
the service runs on a single request (`mmfuse.preprocess.sample`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mmfuse.data.manifest import dataset_manifest
from mmfuse.params import load_params
from mmfuse.params.data import DataParams
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.preprocess.build import build_processed
from mmfuse.stages import console, stage_cli


def run(*, raw: Path, out: Path, data: DataParams, params: PreprocessParams) -> dict[str, Any]:
    """Preprocess the dataset under `raw` into `out` (a folder of shards per split, meta.json, dedup_report.json)."""
    return build_processed(dataset_manifest(data, raw), out, params)


def main(
    raw: Path = typer.Option(..., help="The ingested datasets (the ingest stage's output)."),
    out: Path = typer.Option(..., help="Where the processed splits go (replaced atomically)."),
) -> None:
    """Stage 3: clean every modality, dedup, build tensors and meta.json."""
    params = load_params()
    summary = run(raw=raw, out=out, data=params.data, params=params.preprocess)
    console.print(f"[green]preprocessed[/] into {out}: {summary['counts']}")


if __name__ == "__main__":
    stage_cli(main)
