"""Stage 5, evaluate: the fusion model and every dedicated baseline on the test split.

Metrics per model, every modality subset (evaluation.subsets, on the models and the split
loaded once here), calibration with a temperature fitted on val, noise-robustness curves
from the raw test media, per-speaker results, complexity, and a self-contained report. Everything is computed first and
written last, one atomic file at a time, so a failure leaves the previous outputs intact.

Determinism: inference runs with deterministic kernels and a fixed thread count and all
noise is seeded, so the metrics, plot, calibration, details and Markdown files are
byte-identical across runs on the same inputs. Timings and memory vary, so they live only
in reports/.../complexity.json and the HTML (outputs declared `cache: false`).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmfuse.data.manifest import RECENT_SPLIT, dataset_manifest
from mmfuse.evaluation import complexity
from mmfuse.evaluation.calibration import calibrate
from mmfuse.evaluation.corruption import CORRUPTIONS, RawSplit, corrupted_levels, split_rows
from mmfuse.evaluation.metrics import classification_metrics, confusion_rows, speaker_results
from mmfuse.evaluation.predict import (
    FUSED,
    REFERENCE,
    late_fusion_logits,
    model_logits,
    scored_rows,
)
from mmfuse.evaluation.report import figures, metrics_summary, render_html, render_markdown
from mmfuse.evaluation.robustness import corruption_regret, robustness_curves, robustness_rows
from mmfuse.evaluation.subsets import evaluate_subsets, load_models
from mmfuse.evaluation.trust import encoded, fit_served_trust, served_results, set_aside_rates
from mmfuse.io import atomic_file, write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.artifact import WEIGHTS
from mmfuse.models.classifier import MultimodalClassifier
from mmfuse.models.data import has_split, load_split
from mmfuse.models.determinism import deterministic
from mmfuse.models.trust import GATE_FEATURES, METHODS, Trust, save_trust
from mmfuse.params import load_params
from mmfuse.params.evaluate import EvaluateParams
from mmfuse.preprocess.state import PreprocessState
from mmfuse.stages import console, stage_cli

SPLIT = "test"
CLEAN_SPLIT = "test_clean"
# Optional test splits, each reported apart under its own key and never used for a choice: the
# undegraded twins of the test samples, and the harvested traffic held out (`mmfuse harvest`).
EXTRA_TESTS = {"clean_input": CLEAN_SPLIT, "recent_traffic": RECENT_SPLIT}


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_file(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_plots(plots_dir: Path, results: dict[str, Any], confusion: list[tuple[str, str]]) -> None:
    """DVC plot data: confusion (actual,predicted per sample), robustness, reliability, subsets."""
    _write_csv(plots_dir / "confusion.csv", ["actual", "predicted"], [list(row) for row in confusion])
    curve_rows = robustness_rows(results["robustness"])
    _write_csv(plots_dir / "robustness.csv", list(curve_rows[0]), [list(row.values()) for row in curve_rows])
    reliability = results["calibration"]["reliability"]
    _write_csv(
        plots_dir / "reliability.csv",
        ["calibration", "bin", "lower", "upper", "confidence", "accuracy", "count"],
        [
            [
                when,
                k,
                round(r["lower"], 6),
                round(r["upper"], 6),
                round(r["confidence"], 6),
                round(r["accuracy"], 6),
                r["count"],
            ]
            for when, table in reliability.items()
            for k, r in enumerate(table)
        ],
    )
    _write_csv(
        plots_dir / "subsets.csv",
        ["subset", "model", "accuracy"],
        [[name, kind, s[kind]] for name, s in results["subsets"].items() for kind in ("fused", "dedicated")],
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]evaluate[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _extra_test(
    processed: Path,
    name: str,
    models: dict[str, MultimodalClassifier],
    trust: Trust,
    temperature: float,
    batch_size: int,
) -> dict[str, Any]:
    """Every figure on the optional test split `name` (EXTRA_TESTS):
    {count, fused_accuracy, subsets, served: {accuracy per trust method, set_aside}}, or {} without it."""
    if not has_split(processed, name):
        return {}
    split = load_split(processed, name)
    subsets = evaluate_subsets(models, split)
    return {
        "count": len(split.sample_ids),
        "fused_accuracy": subsets["fused_accuracy"],
        "subsets": subsets["subsets"],
        "served": served_results(models[FUSED], trust, split, temperature, batch_size),
    }


def run(
    *,
    processed: Path,
    raw_manifest: Path,
    models: Path,
    reports: Path,
    plots: Path,
    metrics: Path,
    calibration: Path,
    trust: Path,
    params: EvaluateParams,
) -> dict[str, Any]:
    """Evaluate models/candidate and models/baselines/* on the test split; returns the metrics.

    Writes plots/{confusion,robustness,reliability,subsets}.csv, `metrics`, `calibration`
    ({"temperature", "ece_before", "ece_after", "weights_sha256"}: the temperature serving
    divides the candidate's logits by), `trust` (the per-modality trust serving sets
    untrusted modalities aside with, fitted on train, its threshold on val) and
    reports/{index.html, summary.md, details.json,
    complexity.json}. `raw_manifest` is the dataset's manifest: the robustness curves
    re-preprocess its raw test media.
    """
    processed_dir, models_dir, reports_dir, plots_dir = map(Path, (processed, models, reports, plots))
    metrics_path, calibration_path = Path(metrics), Path(calibration)
    models, config = load_models(models_dir)
    test = load_split(processed_dir, SPLIT)
    tensors, labels, mask = test.tensors, test.tensors["label"], test.tensors["mask"]
    manifest_rows = split_rows(raw_manifest, test.sample_ids)
    state = PreprocessState.from_dict(config["preprocessing"])  # the artifact's preprocessing, as served
    console.print("evaluate: decoding the raw test media for the robustness curves")
    raw = RawSplit.load(manifest_rows, Path(raw_manifest).parent, mask, state)
    levels = sum(len(c.levels(params.robustness)) for c in CORRUPTIONS)
    with (
        corrupted_levels(raw, state, params.robustness, params.seed, params.workers) as noisy_inputs,
        _progress() as progress,
        deterministic(params.threads),
    ):
        task = progress.add_task("subsets", total=5 + len(models) + levels)
        subsets = evaluate_subsets(models, test)
        progress.update(task, advance=1, description="models")
        names: list[str] = list(config["labels"])
        logits, rows = {}, {}
        for name, model in models.items():
            logits[name], rows[name] = model_logits(model, tensors, params.batch_size), scored_rows(model, tensors)
            progress.advance(task)
        logits[REFERENCE] = late_fusion_logits({m: logits[m] for m in MODALITIES}, mask, MODALITIES)
        rows[REFERENCE] = mask.any(dim=1)
        per_model = {
            name: {
                "modalities": list(models[name].spec.modalities) if name in models else list(MODALITIES),
                **classification_metrics(
                    labels[rows[name]].numpy(), logits[name].argmax(dim=1)[rows[name]].numpy(), names
                ),
            }
            for name in logits
        }
        progress.update(task, advance=1, description="calibration")
        val = load_split(processed_dir, "val").with_any(list(range(len(MODALITIES))))
        fused_test = rows[FUSED]
        calibration = calibrate(
            model_logits(models[FUSED], val.tensors, params.batch_size).double().numpy(),
            val.tensors["label"].numpy(),
            logits[FUSED][fused_test].double().numpy(),
            labels[fused_test].numpy(),
            params.ece_bins,
        )
        progress.update(task, description="trust")
        fitted = fit_served_trust(
            models[FUSED], processed_dir, val, Path(raw_manifest), state, calibration["temperature"], params
        )
        setaside = set_aside_rates(models[FUSED], fitted, encoded(models[FUSED], tensors, params.batch_size))
        progress.update(task, advance=1, description="robustness")
        curves = robustness_curves(
            models[FUSED],
            {m: models[m] for m in MODALITIES},
            tensors,
            logits,
            noisy_inputs,
            params.robustness,
            params.batch_size,
            lambda: progress.advance(task),
            fitted,
            calibration["temperature"],
        )
        methods = [m for m in next(iter(curves.values()))["accuracy"] if m in METHODS]
        regret = {m: corruption_regret(curves, m) for m in methods}
        served = regret[params.trust.method]
        extra = {
            key: _extra_test(processed_dir, split, models, fitted, calibration["temperature"], params.batch_size)
            for key, split in EXTRA_TESTS.items()
        }
        speakers = (
            speaker_results(manifest_rows["speaker"].to_numpy(), labels, logits, rows)
            if "speaker" in manifest_rows
            else {}
        )
        progress.update(task, advance=1, description="complexity")
        timed = {name: rows[name].nonzero().squeeze(1)[: params.latency_batch] for name in models}
        measured = complexity.measure(
            models,
            {name: {k: v[timed[name]] for k, v in tensors.items()} for name in models},
            params.latency_batch,
            params.latency_repeats,
        )
        results: dict[str, Any] = {
            "split": SPLIT,
            "fusion": subsets["fusion"],
            "labels": names,
            "headline": {
                "fused_accuracy": subsets["fused_accuracy"],
                "fusion_gain_points": subsets["fusion_gain_points"],
                "worst_subset_gap_points": subsets["worst_subset_gap_points"],
                "macro_f1": per_model[FUSED]["macro_f1"],
                "late_fusion_accuracy": per_model[REFERENCE]["accuracy"],
                "ece_before": calibration["ece_before"],
                "ece_after": calibration["ece_after"],
                "temperature": calibration["temperature"],
                "trust_method": params.trust.method,
                "robust_accuracy": next(iter(curves.values()))["accuracy"][params.trust.method][0],
                "false_setaside_rate": setaside["all"],
                "corruption_regret_points": served["all"],
                "corruption_regret_seen_points": served.get("seen"),
                "corruption_regret_unseen_points": served.get("unseen"),
                **{
                    f"{key}_{figure}": value
                    for key, found in extra.items()
                    if found
                    for figure, value in (
                        ("fused_accuracy", found["fused_accuracy"]),
                        ("robust_accuracy", found["served"]["accuracy"][params.trust.method]),
                    )
                },
            },
            **extra,
            "trust": {
                "threshold": fitted.threshold,
                "false_setaside": setaside,
                "gate": {
                    m: {"bias": round(float(b), 6), "slope": dict(zip(GATE_FEATURES, np.round(k, 6).tolist()))}
                    for m, b, k in zip(fitted.modalities, fitted.gate.bias, fitted.gate.slope)
                },
                "corruption_regret_points": regret,
            },
            "subsets": subsets["subsets"],
            "models": per_model,
            "calibration": calibration,
            "robustness": curves,
            "speakers": speakers,
            "parameters": complexity.parameter_counts(models),
        }
        progress.update(task, advance=1, description="report")
        page = render_html(results, measured, figures(results))
        progress.advance(task)
    summary = metrics_summary(results)
    confusion = confusion_rows(labels[fused_test].numpy(), logits[FUSED].argmax(dim=1)[fused_test].numpy(), names)
    _write_plots(plots_dir, results, confusion)
    write_json(metrics_path, summary)
    write_json(
        calibration_path,
        {
            "temperature": calibration["temperature"],
            "ece_before": calibration["ece_before"],
            "ece_after": calibration["ece_after"],
            "weights_sha256": hashlib.sha256((models_dir / "candidate" / WEIGHTS).read_bytes()).hexdigest(),
        },
    )
    save_trust(Path(trust), fitted)
    write_json(reports_dir / "details.json", results)
    write_json(reports_dir / "complexity.json", {"parameters": results["parameters"], **measured})
    with atomic_file(reports_dir / "summary.md") as handle:
        handle.write(render_markdown(results))
    with atomic_file(reports_dir / "index.html") as handle:
        handle.write(page)
    return summary


def main(
    processed: Path = typer.Option(..., help="The processed splits."),
    raw: Path = typer.Option(
        ..., help="The ingested datasets: the robustness curves re-preprocess the raw test media."
    ),
    models: Path = typer.Option(..., help="The models folder (candidate/ and baselines/)."),
    reports: Path = typer.Option(..., help="Where the HTML and Markdown report go."),
    plots: Path = typer.Option(..., help="Where the DVC plot files go."),
    metrics: Path = typer.Option(..., help="Where the DVC metrics file goes."),
    calibration: Path = typer.Option(..., help="Where the fitted temperature goes (calibration.json)."),
    trust: Path = typer.Option(..., help="Where the fitted per-modality trust goes (trust.safetensors)."),
) -> None:
    """Stage 5: test metrics, every modality subset, robustness, calibration, complexity, HTML report."""
    params = load_params()
    run(
        processed=processed,
        raw_manifest=dataset_manifest(params.data, raw),
        models=models,
        reports=reports,
        plots=plots,
        metrics=metrics,
        calibration=calibration,
        trust=trust,
        params=params.evaluate,
    )
    console.print(f"[green]evaluated[/]: report in {Path(reports) / 'index.html'}")


if __name__ == "__main__":
    stage_cli(main)
