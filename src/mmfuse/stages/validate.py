"""Stage 2, validate: Great Expectations over the manifest, the media and cross-split leakage.

Writes the Data Docs and a JSON summary (a DVC metric); a failed critical expectation
stops the pipeline with a message naming it, the number of rows and the first offenders.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mmfuse.data.manifest import dataset_manifest
from mmfuse.params import load_params
from mmfuse.params.data import DataParams
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.validate import ValidateParams
from mmfuse.stages import console, stage_cli
from mmfuse.validation.runner import run_validation


def run(
    *, raw: Path, docs: Path, summary: Path, data: DataParams, params: ValidateParams, contract: PreprocessParams
) -> dict:
    """Validate the ingested dataset under `raw` against `params` and the input contract (the preprocess params);
    write Data Docs to `docs` and the summary to `summary`."""
    return run_validation(dataset_manifest(data, raw), params, contract, docs, summary)


def main(
    raw: Path = typer.Option(..., help="The ingested datasets (the ingest stage's output)."),
    docs: Path = typer.Option(..., help="Where the Great Expectations Data Docs go."),
    summary: Path = typer.Option(..., help="Where the JSON summary (a DVC metric) goes."),
) -> None:
    """Stage 2: Great Expectations over the manifest and the media; stops on critical failures."""
    params = load_params()
    result = run(
        raw=raw, docs=docs, summary=summary, data=params.data, params=params.validate_, contract=params.preprocess
    )
    console.print(
        f"[green]validation passed[/]: {result['rows']} rows, {result['warnings']} warning(s); Data Docs in {docs}"
    )


if __name__ == "__main__":
    stage_cli(main)
