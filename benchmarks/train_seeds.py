"""Seed spread of every headline figure: mean ± std over training seeds, on the test split.

    python benchmarks/train_seeds.py [--processed data/processed] [--clean DIR] [--seeds 0 1 2] [--work DIR]

For each seed (train.seed; the data and its split stay fixed by data.seed) trains the whole
train stage from scratch (params.yaml's `train:`, with the default head), then the fusion
model of every other head on the same unimodal encoders, and scores all of them on test:
each dedicated subset model, each head's fused accuracy and its worst shortfall against
the dedicated models over the 6 proper subsets. --clean DIR does the same on a processed
`clean` preset and records clean_fused_accuracy (best head, mean over seeds). Make one
with `dvc repro preprocess` in a copy of the project whose params.yaml says
`data.preset: clean`. Writes benchmarks/results/train_seeds.json and
prints the Markdown table the README carries. About 7 minutes for both presets on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mmfuse.evaluation.subsets import evaluate_subsets, load_models
from mmfuse.io import write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.data import load_split
from mmfuse.params import load_params
from mmfuse.params.train import FUSIONS, TrainParams
from mmfuse.training.jobs import train_all, train_model

RESULTS = Path(__file__).parent / "results"
PAIRS = ("image+audio", "image+text", "audio+text")


def _one_seed(processed: Path, work: Path, params: TrainParams) -> dict[str, Any]:
    """Every model of one seed, scored on test."""
    shutil.rmtree(work, ignore_errors=True)  # from scratch: no checkpoint to resume
    started = time.perf_counter()
    summary = train_all(processed=processed, models=work / "models", params=params, curves=work / "plots", metrics=work)
    stage_s = time.perf_counter() - started
    baselines = work / "models" / "baselines"
    test = load_split(processed, "test")
    heads = {params.fusion: evaluate_subsets(load_models(work / "models")[0], test)}
    for head in (h for h in FUSIONS if h != params.fusion):
        folder = work / "heads" / head
        (folder / "models").mkdir(parents=True)
        (folder / "models" / "baselines").symlink_to(baselines.resolve(), target_is_directory=True)
        train_model(
            processed,
            folder / "models" / "candidate",
            params.model_copy(update={"fusion": head}),
            MODALITIES,
            head,
            folder / "ckpt",
            folder / "curve.csv",
            {m: baselines / m for m in MODALITIES},
        )
        heads[head] = evaluate_subsets(load_models(folder / "models")[0], test)
    default = heads[params.fusion]["subsets"]
    best = max(heads, key=lambda h: heads[h]["fused_accuracy"])
    encoders_s = sum(summary["baselines"][m]["train_seconds"] for m in MODALITIES)
    return {
        "dedicated": {name: default[name]["dedicated"] for name in (*MODALITIES, *PAIRS)},
        "heads": {
            h: {"fused_accuracy": r["fused_accuracy"], "worst_subset_gap_points": r["worst_subset_gap_points"]}
            for h, r in heads.items()
        },
        "best_head": best,
        "fused_accuracy": heads[best]["fused_accuracy"],
        "fusion_gain_points": heads[best]["fusion_gain_points"],
        "worst_subset_gap_points": heads[best]["worst_subset_gap_points"],
        "fusion_train_s": round(encoders_s + summary["candidate"]["train_seconds"], 1),
        "all_models_train_s": round(stage_s, 1),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
    }


def _summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over seeds of every figure of `_one_seed`."""
    each = list(runs.values())
    return {
        "dedicated": {name: _spread([r["dedicated"][name] for r in each]) for name in each[0]["dedicated"]},
        "heads": {
            head: {
                key: _spread([r["heads"][head][key] for r in each])
                for key in ("fused_accuracy", "worst_subset_gap_points")
            }
            for head in each[0]["heads"]
        },
        **{
            key: _spread([r[key] for r in each])
            for key in ("fused_accuracy", "fusion_gain_points", "worst_subset_gap_points", "fusion_train_s")
        },
    }


def _preset(processed: Path, work: Path, params: TrainParams, seeds: list[int]) -> dict[str, Any]:
    runs = {
        seed: _one_seed(processed, work / f"seed-{seed}", params.model_copy(update={"seed": seed})) for seed in seeds
    }
    return {"seeds": runs, "summary": _summary(runs)}


def _cell(spread: dict[str, float]) -> str:
    return f"{spread['mean']:.2f} ± {spread['std']:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The README table: one column per preset, mean ± std over the seeds."""
    presets = [p for p in ("hard", "clean") if p in result]
    summaries = [result[p]["summary"] for p in presets]
    rows = [(f"{name} (dedicated)", [s["dedicated"][name] for s in summaries]) for name in (*MODALITIES, *PAIRS)]
    rows += [
        (f"fusion model, {head} head", [s["heads"][head]["fused_accuracy"] for s in summaries]) for head in FUSIONS
    ]
    rows += [
        ("best head", [s["fused_accuracy"] for s in summaries]),
        ("fusion gain over the best single modality, points", [s["fusion_gain_points"] for s in summaries]),
    ]
    rows += [
        (f"worst subset gap, {head} head, points", [s["heads"][head]["worst_subset_gap_points"] for s in summaries])
        for head in FUSIONS
    ]
    rows += [("fusion training (3 encoders + head), s", [s["fusion_train_s"] for s in summaries])]
    header = "| test accuracy, % (mean ± std over seeds " + ", ".join(map(str, result["seeds"])) + ") | "
    lines = [header + " | ".join(f"`{p}`" for p in presets) + " |", "|---" * (len(presets) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(_cell(c) for c in cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processed", type=Path, default=Path("data/processed"), help="processed `hard` preset")
    parser.add_argument("--clean", type=Path, help="processed `clean` preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    params = load_params().train
    work = args.work or Path(tempfile.mkdtemp(prefix="mmfuse-seeds-"))
    try:
        result: dict[str, Any] = {
            "seeds": args.seeds,
            "fusion": params.fusion,
            "hard": _preset(args.processed, work / "hard", params, args.seeds),
        }
        if args.clean:
            result["clean"] = _preset(args.clean, work / "clean", params, args.seeds)
            result["clean_fused_accuracy"] = result["clean"]["summary"]["fused_accuracy"]["mean"]
        result["markdown"] = markdown(result)
        write_json(RESULTS / "train_seeds.json", result)
        print(result["markdown"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
