"""The `mmfuse` command: the pipeline's stages by name, plus the tools around them.

A stage subcommand (`mmfuse preprocess --raw data/raw --out data/processed`) hands its
arguments to that stage's own `main` (`mmfuse.stages.<stage>`), the very command dvc.yaml
runs, so a stage's inputs and outputs are declared once, there. Known failures print one
actionable message, not a traceback, and exit with status 2.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import typer

from mmfuse.stages import console, friendly, stage_cli

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="mmfuse: validate, clean, fuse, evaluate, monitor and serve multimodal data.",
)

# The DVC stages in pipeline order: `mmfuse <name> --help` shows each one's inputs and outputs.
STAGES = {
    "ingest": "Stage 1: build or copy the dataset named by data.dataset.",
    "validate": "Stage 2: Great Expectations over the manifest and the media.",
    "preprocess": "Stage 3: clean every modality, dedup, build tensors.",
    "train-unimodal": "Stage 4a: the image, audio and text baselines.",
    "train-fusion": "Stage 4b: the pair baselines and the fusion model.",
    "evaluate": "Stage 5: metrics, subsets, robustness, calibration, report.",
    "drift-reference": "Stage 6: the reference profile monitoring compares traffic with.",
    "promote": "Stage 7: challenger vs champion through the gates.",
}


def _add_stage(name: str, summary: str) -> None:
    module = f"mmfuse.stages.{name.replace('-', '_')}"

    @app.command(
        name,
        help=f"{summary} (`mmfuse {name} --help` for its paths)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def forward(ctx: typer.Context) -> None:
        stage_cli(importlib.import_module(module).main, ctx.args, prog_name=f"mmfuse {name}")


for _name, _summary in STAGES.items():
    _add_stage(_name, _summary)

LOG_HELP = (
    "Inference log: a file or a postgresql:// URL (default: $MMFUSE_INFERENCE_LOG, else data/inference/log.sqlite)."
)


@app.command()
@friendly
def fetch(
    into: Path = typer.Option(
        Path("data/sources"), help="Where the verified sources go (the ingest stage's --sources)."
    ),
    mirror: Optional[Path] = typer.Option(
        None, help="Local mirror laid out like upstream (default: $MMFUSE_DATA_MIRROR, else the network)."
    ),
) -> None:
    """Fetch the avdigits sources, verifying every file's sha256 (the ingest stage does this too)."""
    from mmfuse.data.sources import fetch_all

    for folder in fetch_all(into, mirror):
        console.print(f"[green]verified[/] {folder}")


@app.command()
@friendly
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 to accept other machines)."),
    port: int = typer.Option(3000, help="HTTP port."),
) -> None:
    """Serve the champion (BentoML): /predict, /predict_batch, /feedback, /demo, /docs."""
    from mmfuse.serving import serve as run_server

    run_server(host, port)


@app.command()
@friendly
def monitor(
    log: Optional[str] = typer.Option(None, help=LOG_HELP),
) -> None:
    """One monitoring check now: validate and drift-check traffic since the last check."""
    from mmfuse.orchestration.monitoring import monitoring_flow

    summary = monitoring_flow(project=".", log=log)
    console.print_json(data=summary)
    for modality in summary.get("sensors", {}).get("failing", []):
        rate = summary["sensors"][modality]["set_aside_rate"]
        console.print(
            f"[yellow]sensor failing[/]: {modality} set aside in {rate:.0%} of its requests (unlike training)."
        )
    if summary.get("trigger_error"):
        console.print(f"[yellow]warning[/]: traffic drifted, but {summary['trigger_error']}.")


@app.command()
@friendly
def tune(project: Path = typer.Option(Path("."), help="The DVC project (its params.yaml's `tune:` section).")) -> None:
    """Search hyperparameters as queued DVC experiments (tune.space, tune.budget), then a seed spread of the best."""
    from mmfuse.orchestration.tune import tune as run_search
    from mmfuse.params import load_params

    summary = run_search(project, load_params(project / "params.yaml"))
    for row in summary["results"]:
        spread = f" ± {row['std']}" if row["std"] is not None else ""
        runs = f"over {row['n']} run(s)"
        console.print(f"{row['experiment']}: {summary['metric']} {row['mean']}{spread} {runs}  {row['params']}")
    console.print("compare: `dvc exp show --only-changed`; adopt one: `dvc exp apply NAME` then `dvc repro`")


@app.command("alerts-webhook")
@friendly
def alerts_webhook(url: str = typer.Argument(..., help="Where alerts are POSTed as JSON {subject, text}.")) -> None:
    """Send monitoring alerts and failed runs to a webhook (saved as a Prefect notification block)."""
    import os

    from mmfuse.errors import MMFuseError
    from mmfuse.orchestration.alerts import save_webhook
    from mmfuse.params import load_params

    if not os.environ.get("PREFECT_API_URL"):
        raise MMFuseError(
            "PREFECT_API_URL is not set: start `mmfuse orchestrate` and point PREFECT_API_URL at its server, "
            "so that the block is saved where the flows run."
        )
    block = load_params().monitor.notify_block
    save_webhook(url, block)
    console.print(f"[green]saved[/] {block}: alerts and failed runs go to {url}")


@app.command("simulate-traffic")
@friendly
def simulate_traffic(
    url: str = typer.Option("http://127.0.0.1:3000", help="The running service."),
    manifest: Optional[Path] = typer.Option(
        None, help="Held-out data to send (default: the ingested dataset under data/raw)."
    ),
    n: int = typer.Option(200, min=1, help="Requests to send."),
    shift: Optional[str] = typer.Option(None, help="audio-noise | image-blur | text-garble | label-prior"),
    seed: int = typer.Option(0),
    token: Optional[str] = typer.Option(
        None, envvar="MMFUSE_API_TOKEN", help="Bearer token, when the service requires one."
    ),
    feedback: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Share of requests whose true label is sent to /feedback."
    ),
    capture: bool = typer.Option(False, help="Ask the service to keep the requests' raw inputs (for harvest)."),
) -> None:
    """Send real requests from held-out data, optionally shifted, to watch drift being detected."""
    from mmfuse.data.manifest import dataset_manifest
    from mmfuse.monitoring.traffic import simulate_traffic as send
    from mmfuse.params import load_params

    manifest = manifest or dataset_manifest(load_params().data, Path("data/raw"))
    counts = send(url, manifest, n, shift=shift, seed=seed, token=token, feedback=feedback, capture=capture)
    console.print_json(data=counts)


@app.command()
@friendly
def harvest(
    log: Optional[str] = typer.Option(None, help=LOG_HELP),
) -> None:
    """Turn labelled, captured traffic since the last harvest into a DVC-versioned dataset (monitor.harvest_dir)."""
    from mmfuse.orchestration.harvest import extra_with_harvests, harvest_project
    from mmfuse.params import load_params

    params = load_params()
    result = harvest_project(Path("."), params, log)
    for request_id, reasons in result.refused.items():
        console.print(f"[yellow]refused[/] {request_id}: {'; '.join(reasons)}", highlight=False, soft_wrap=True)
    if result.path is None:
        console.print(f"nothing harvested: {result.candidates} new labelled capture(s), none kept.", soft_wrap=True)
        return
    kept = ", ".join(f"{n} {split}" for split, n in result.kept.items())
    where = result.manifest.relative_to(Path.cwd().resolve())
    console.print(f"[green]harvested[/] {where}: {kept}; {len(result.refused)} refused", soft_wrap=True)
    extra = extra_with_harvests(Path("."), params)
    console.print(
        "train on it: list it in params.yaml's data.extra, then `dvc repro`; or try it first as an experiment:\n"
        f"  dvc exp run -S 'data.extra={extra}'",
        soft_wrap=True,  # a command to copy, whole
    )


@app.command()
@friendly
def forget(request_id: str = typer.Argument(..., help="The request_id a prediction returned.")) -> None:
    """Delete one request from the inference log with everything kept of it (captured inputs included)."""
    from mmfuse.inference.log import InferenceLog, describe, log_path
    from mmfuse.params import load_serve_params

    serve = load_serve_params()
    log = InferenceLog(log_path(), serve.log_max_rows, serve.log_queue_size, serve.log_max_age_days)
    try:
        found = log.forget(request_id)
    finally:
        log.close()
    if not found:
        raise typer.BadParameter(f"no request {request_id} in {describe(log_path())}", param_hint="REQUEST_ID")
    console.print(f"[green]forgot[/] {request_id}")


@app.command()
@friendly
def orchestrate(
    pool: Optional[str] = typer.Option(
        None, help="Register the deployments on this process work pool, for `prefect worker start --pool NAME`."
    ),
) -> None:
    """Start (or reuse) a local Prefect server and serve the nightly training and hourly monitoring deployments."""
    from mmfuse.orchestration.server import orchestrate as run
    from mmfuse.params import load_params

    run(Path.cwd(), load_params(), pool)


champion_app = typer.Typer(no_args_is_help=True, help="Show, roll back, clean, re-promote the champion.")
app.add_typer(champion_app, name="champion")


@champion_app.command("show")
@friendly
def champion_show(
    decisions: int = typer.Option(5, help="How many of the last decisions to list."),
) -> None:
    """The champion's tag, metrics and lineage, every version, incomplete ones, and the last decisions."""
    from mmfuse.inference import registry

    broken = registry.broken_versions()
    for tag in broken:
        console.print(f"[red]incomplete[/] {tag}: left by an interrupted promotion; `mmfuse champion clean` removes it")
    model = registry.champion()
    if model is None:
        raise registry.RegistryError("no champion in the model store yet: run `dvc repro` (or `mmfuse promote`).")
    meta = model.info.metadata
    console.print(f"[bold]champion[/] {model.tag}  (created {model.info.creation_time:%Y-%m-%d %H:%M})")
    for key in ("accuracy", "ece", "temperature", "git_commit", "experiment", "params_sha256", "previous", "restored"):
        if key in meta:
            console.print(f"  {key}: {meta[key]}")
    console.print("[bold]versions[/] (oldest first; `mmfuse champion rollback --to TAG` restores one)")
    for version in registry.versions():
        mark = "*" if version.tag == model.tag else " "
        restored = version.info.metadata.get("restored")
        note = f"  rollback to {restored}" if restored else ""
        console.print(f" {mark} {version.tag}  {version.info.metadata.get('accuracy', '?')} %{note}")
    shadowed = registry.challenger()
    if shadowed is not None:
        from mmfuse.inference.log import log_path, shadow_evidence

        seen = shadow_evidence(log_path(), str(model.tag), str(shadowed.tag))
        console.print(
            f"[bold]challenger in shadow[/] {shadowed.tag}  ({shadowed.info.metadata.get('accuracy', '?')} % offline): "
            f"{seen.requests} requests scored, agreement {seen.agreement} %, {seen.labelled} labelled, "
            f"live accuracy {seen.challenger_accuracy} % vs the champion's {seen.champion_accuracy} %"
        )
    console.print("[bold]last decisions[/]")
    for record in registry.history()[-decisions:]:
        keys = ("promoted_tag", "to", "shadow_tag", "tag", "champion_tag")
        tag = next((record[key] for key in keys if record.get(key)), "")
        failed = record.get("failed_gates") or []
        gates = f"  failed: {', '.join(failed)}" if failed else ""
        console.print(f"  {record['time'][:19]} {record['action']}: {record.get('verdict', '')} {tag}{gates}")


@champion_app.command("rollback")
@friendly
def champion_rollback(
    to: Optional[str] = typer.Option(None, help="Restore this version (default: one step back in the history)."),
) -> None:
    """Make an earlier champion the champion again (recorded in the decision log)."""
    from mmfuse.inference import registry

    console.print(f"[green]champion is now[/] {registry.rollback(to)}")


@champion_app.command("clean")
@friendly
def champion_clean() -> None:
    """Remove versions an interrupted promotion left incomplete (the last complete one stays champion)."""
    from mmfuse.inference import registry

    removed = registry.clean()
    console.print(f"[green]removed[/] {', '.join(removed)}" if removed else "nothing to clean: all versions complete")


@champion_app.command("end-shadow")
@friendly
def champion_end_shadow() -> None:
    """Stop scoring the challenger in shadow (a running service drops it at its next look); the champion stays."""
    from mmfuse.inference import registry

    ended = registry.end_shadow("ended by hand")
    console.print(f"[green]ended[/] {', '.join(ended)}" if ended else "no challenger in shadow")


@champion_app.command("repromote")
@friendly
def champion_repromote(project: Path = typer.Option(Path("."), help="The DVC project.")) -> None:
    """Rerun the promote stage alone (`dvc repro -s -f promote`); refuses if a stage above it changed."""
    from mmfuse.orchestration.dvc import repromote

    console.print(repromote(project).output.strip())


if __name__ == "__main__":
    app()
