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


@app.command()
@_friendly
def preprocess() -> None:
    """Stage 3: clean every modality, dedup, build tensors and meta.json in data/processed/."""
    from mmfuse.ingest import dataset_manifest
    from mmfuse.preprocess.stage import run

    params = load_params()
    run(dataset_manifest(params.data), paths.PROCESSED, params.preprocess)
    console.print(f"[green]preprocessed[/] into {paths.PROCESSED}")


@app.command()
@_friendly
def train(
    part: Optional[str] = typer.Argument(None, help="unimodal | fusion (default: both, in that order). DVC runs them as two stages."),
) -> None:
    """Stage 4: the three unimodal baselines, then the pair baselines and the fusion model (resumes after a crash)."""
    from mmfuse.train import PARTS, run_training

    summary = run_training(
        paths.PROCESSED, paths.MODELS, load_params().train, paths.PLOTS / "learning_curves", paths.METRICS, PARTS if part is None else (part,)
    )
    for name, result in {**summary["baselines"], **({"fusion model": summary["candidate"]} if "candidate" in summary else {})}.items():
        console.print(f"[green]trained[/] {name}: val accuracy {result['val_accuracy']:.2f} %")


@app.command()
@_friendly
def evaluate() -> None:
    """Stage 5: test metrics, every modality subset, robustness, calibration, complexity, HTML report."""
    from mmfuse.evaluate import run_evaluation
    from mmfuse.ingest import dataset_manifest
    from mmfuse.train import PARTS, metrics_path

    params = load_params()
    run_evaluation(
        paths.PROCESSED, dataset_manifest(params.data), paths.MODELS, params.evaluate,
        paths.REPORTS / "evaluation", paths.PLOTS, paths.METRICS / "evaluate.json", paths.MODELS / "calibration.json",
        train_metrics_paths=[metrics_path(paths.METRICS, part) for part in PARTS],
    )  # fmt: skip
    console.print(f"[green]evaluated[/]: report in {paths.REPORTS / 'evaluation' / 'index.html'}")


@app.command()
@_friendly
def promote() -> None:
    """Stage 7: challenger vs champion through the gates; the winner becomes the champion."""
    from mmfuse.evaluate import score_artifact
    from mmfuse.promote import run_promotion, temperature_of

    params = load_params()
    calibration = paths.MODELS / "calibration.json"

    def scorer(artifact: Path) -> dict:
        return score_artifact(artifact, paths.PROCESSED, "test", temperature_of(artifact, calibration))

    decision = run_promotion(
        paths.MODELS / "candidate", calibration, paths.METRICS / "validation.json", scorer,
        params.promote, paths.REPORTS / "promotion" / "decision.json", reference=Path(params.monitor.reference_path),
    )  # fmt: skip
    if decision["verdict"] == "promote":
        console.print(f"[green]promoted[/] {decision['promoted_tag']}")
    elif decision["verdict"] == "keep":
        console.print(f"[yellow]kept[/] {decision['champion_tag']}: {decision['detail']}")
    else:
        console.print(f"[yellow]champion kept[/] ({decision['champion_tag']}): failed gate(s) {', '.join(decision['failed_gates'])}")


@app.command("drift-reference")
@_friendly
def drift_reference() -> None:
    """Stage 6: the reference profile (inputs, embeddings, predictions) monitoring compares traffic with."""
    from mmfuse.ingest import dataset_manifest
    from mmfuse.monitoring.reference import build_reference

    params = load_params()
    out = build_reference(
        paths.MODELS / "candidate", dataset_manifest(params.data), params.monitor.reference_split,
        Path(params.monitor.reference_path), calibration=paths.MODELS / "calibration.json",
        batch_size=params.monitor.reference_batch,
    )  # fmt: skip
    console.print(f"[green]reference profile[/] {out}")


@app.command()
@_friendly
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 to accept other machines)."),
    port: int = typer.Option(3000, help="HTTP port."),
) -> None:
    """Serve the champion (BentoML): /predict, /predict_batch, /feedback, /demo, /docs."""
    from mmfuse.serving import serve as run_server

    run_server(host, port)


@app.command()
@_friendly
def monitor(log: Optional[Path] = typer.Option(None, help="Inference log (default: $MMFUSE_INFERENCE_LOG or data/inference/log.sqlite).")) -> None:
    """One monitoring check now: validate and drift-check traffic since the last check."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint("flows/monitoring.py:monitoring_flow")
    summary = flow(project=".", log=log)
    console.print_json(data=summary)
    if summary.get("trigger_error"):
        console.print(f"[yellow]warning[/]: traffic drifted, but {summary['trigger_error']}.")


@app.command("simulate-traffic")
@_friendly
def simulate_traffic(
    url: str = typer.Option("http://127.0.0.1:3000", help="The running service."),
    manifest: Optional[Path] = typer.Option(None, help="Held-out data to send (default: the ingested dataset)."),
    n: int = typer.Option(200, min=1, help="Requests to send."),
    shift: Optional[str] = typer.Option(None, help="audio-noise | image-blur | text-garble | label-prior"),
    seed: int = typer.Option(0),
    token: Optional[str] = typer.Option(None, envvar="MMFUSE_API_TOKEN", help="Bearer token, when the service requires one."),
    feedback: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of requests whose true label is sent to /feedback."),
) -> None:
    """Send real requests from held-out data, optionally shifted, to watch drift being detected."""
    from mmfuse.ingest import dataset_manifest
    from mmfuse.monitoring.traffic import simulate_traffic as send

    manifest = manifest or dataset_manifest(load_params().data)
    console.print_json(data=send(url, manifest, n, shift=shift, seed=seed, token=token, feedback=feedback))


@app.command()
@_friendly
def orchestrate() -> None:
    """Start (or reuse) a local Prefect server and serve the nightly training and hourly monitoring deployments."""
    from mmfuse.monitoring.orchestrate import orchestrate as run

    run(Path.cwd(), load_params())


champion_app = typer.Typer(no_args_is_help=True, help="Show or roll back the champion in the model store.")
app.add_typer(champion_app, name="champion")


@champion_app.command("show")
@_friendly
def champion_show() -> None:
    """The champion's tag, metrics and lineage, and the last decisions."""
    from mmfuse import registry

    model = registry.champion()
    if model is None:
        raise registry.RegistryError("no champion in the model store yet: run `dvc repro` (or `mmfuse promote`).")
    meta = model.info.metadata
    console.print(f"[bold]champion[/] {model.tag}  (created {model.info.creation_time:%Y-%m-%d %H:%M})")
    for key in ("accuracy", "ece", "temperature", "git_commit", "dvc_lock_sha256", "previous"):
        if key in meta:
            console.print(f"  {key}: {meta[key]}")
    for record in registry.history()[-5:]:
        console.print(f"  {record['time'][:19]} {record['action']}: {record.get('verdict', '')} {record.get('promoted_tag') or record.get('to') or ''}")


@champion_app.command("rollback")
@_friendly
def champion_rollback() -> None:
    """Make the previous champion the champion again (recorded in the decision log)."""
    from mmfuse import registry

    console.print(f"[green]champion is now[/] {registry.rollback()}")


if __name__ == "__main__":
    app()
