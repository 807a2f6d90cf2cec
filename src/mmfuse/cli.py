"""The `mmfuse` command: one subcommand per pipeline stage, plus tools around them.

DVC (dvc.yaml) and Prefect call these same subcommands, so a stage behaves the same
whoever runs it. Known failures print one actionable message, not a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from mmfuse import paths
from mmfuse.config import load_params
from mmfuse.errors import MMFuseError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mmfuse: validate, clean, fuse, evaluate, monitor and serve multimodal data.")
console = Console(stderr=True)


def _friendly(func: Callable) -> Callable:
    """Turn MMFuseError into a red one-line message and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MMFuseError as exc:
            console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            sys.exit(2)

    return wrapper


@app.command()
@_friendly
def fetch(
    mirror: Optional[Path] = typer.Option(None, help="Local mirror laid out like upstream (default: $MMFUSE_DATA_MIRROR, else the network)."),
) -> None:
    """Fetch the avdigits sources into data/sources/, verifying every file's sha256."""
    from mmfuse.data.sources import fetch_all

    mirror = mirror or (Path(os.environ["MMFUSE_DATA_MIRROR"]) if os.environ.get("MMFUSE_DATA_MIRROR") else None)
    for folder in fetch_all(paths.SOURCES, mirror):
        console.print(f"[green]verified[/] {folder}")


@app.command()
@_friendly
def ingest() -> None:
    """Stage 1: build or copy the dataset named by data.dataset into data/raw/<name>/."""
    from mmfuse.ingest import run_ingest

    manifest = run_ingest(load_params().data)
    console.print(f"[green]ingested[/] {manifest}")


@app.command()
@_friendly
def validate() -> None:
    """Stage 2: Great Expectations over the manifest and the media; stops on critical failures."""
    from mmfuse.ingest import dataset_manifest
    from mmfuse.validation.runner import run_validation

    params = load_params()
    summary = run_validation(
        dataset_manifest(params.data),
        params.validate_,
        paths.REPORTS,
        paths.METRICS / "validation.json",
    )
    console.print(
        f"[green]validation passed[/]: {summary['rows']} rows, {summary['warnings']} warning(s); "
        f"Data Docs in {paths.REPORTS / 'data_docs'}"
    )


if __name__ == "__main__":
    app()
