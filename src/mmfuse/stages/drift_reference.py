"""Stage 6, drift_reference: the profile (inputs, embeddings, predictions) monitoring compares live traffic with.

Built by the serving Predictor itself over a held-out split (`monitor.reference_split`),
so its statistics are exactly what the inference log would hold for those samples.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mmfuse.data.manifest import dataset_manifest
from mmfuse.monitoring.reference import build_reference
from mmfuse.params import load_params
from mmfuse.params.monitor import MonitorParams
from mmfuse.stages import console, stage_cli


def run(*, model: Path, raw_manifest: Path, calibration: Path, trust: Path, out: Path, params: MonitorParams) -> Path:
    """Score `params.reference_split` of the manifest with `model` (temperature from `calibration`,
    untrusted modalities set aside by `trust`, as served) into `out`."""
    return build_reference(
        model,
        raw_manifest,
        params.reference_split,
        out,
        calibration=calibration,
        batch_size=params.reference_batch,
        trust=trust,
    )


def main(
    model: Path = typer.Option(..., help="The model artifact to profile (the fusion candidate)."),
    raw: Path = typer.Option(..., help="The ingested datasets."),
    calibration: Path = typer.Option(..., help="The evaluate stage's calibration.json."),
    trust: Path = typer.Option(..., help="The evaluate stage's trust.safetensors."),
    out: Path = typer.Option(..., help="Where the reference Parquet goes."),
) -> None:
    """Stage 6: the reference profile monitoring compares traffic with."""
    params = load_params()
    run(
        model=model,
        raw_manifest=dataset_manifest(params.data, raw),
        calibration=calibration,
        trust=trust,
        out=out,
        params=params.monitor,
    )
    console.print(f"[green]reference profile[/] {out}")


if __name__ == "__main__":
    stage_cli(main)
