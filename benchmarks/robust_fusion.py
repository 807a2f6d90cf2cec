"""Robust fusion over seeds: trusting every input vs setting untrusted ones aside vs weighing them.

    python benchmarks/robust_fusion.py [--processed data/processed] [--raw data/raw] [--seeds 0 1 2] [--work DIR]

Run after `make run` (it reads the processed splits and the ingested raw media). For each
training seed (`train.seed`; data and split fixed) it trains the whole train stage from
scratch with params.yaml's `train:`, then runs the evaluate stage itself (`stages.evaluate.run`,
params.yaml's `evaluate:`) on the result. Every method is scored on the same models, so
the comparison is paired: `fused` (trust every input), `set_aside` (an input past the trust
threshold is treated as missing) and `weighted` (each input weighed by its fitted
reliability, QMF-like). Records, per method, the uncorrupted test accuracy and
`corruption_regret_points` (overall, seen and unseen families) as mean ± std over seeds,
the mean accuracy per family and severity, `false_setaside_rate` of the default method,
and the clean-input figures (the `test_clean` twins) when the data has them.
Writes benchmarks/results/robust_fusion.json. About 6 minutes per seed on 2 cores (hard preset with clean twins).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from mmfuse.data.manifest import dataset_manifest
from mmfuse.io import write_json
from mmfuse.models.trust import METHODS
from mmfuse.params import load_params
from mmfuse.stages import evaluate
from mmfuse.training.jobs import train_all

RESULT = Path(__file__).parent / "results" / "robust_fusion.json"


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 3),
        "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _one_seed(seed: int, processed: Path, raw: Path, work: Path) -> dict[str, Any]:
    """Train every model with `seed` and evaluate them with the evaluate stage; its details."""
    params = load_params()
    shutil.rmtree(work, ignore_errors=True)  # from scratch: no checkpoint to resume
    train_all(
        processed=processed,
        models=work / "models",
        params=params.train.model_copy(update={"seed": seed}),
        curves=work / "curves",
        metrics=work / "metrics",
    )
    evaluate.run(
        processed=processed,
        raw_manifest=dataset_manifest(params.data, raw),
        models=work / "models",
        reports=work / "reports",
        plots=work / "plots",
        metrics=work / "evaluate.json",
        calibration=work / "calibration.json",
        trust=work / "trust.safetensors",
        params=params.evaluate,
    )
    return json.loads((work / "reports" / "details.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mmfuse-robust-fusion-"))
    try:
        details = {seed: _one_seed(seed, args.processed, args.raw, work / f"seed{seed}") for seed in args.seeds}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    first = next(iter(details.values()))
    methods = [m for m in METHODS if m in next(iter(first["robustness"].values()))["accuracy"]]
    regret = {
        method: {
            part: _spread([d["trust"]["corruption_regret_points"][method][part] for d in details.values()])
            for part in ("all", "seen", "unseen")
        }
        for method in methods
    }
    clean = {
        method: _spread([next(iter(d["robustness"].values()))["accuracy"][method][0] for d in details.values()])
        for method in methods
    }
    curves = {
        name: {
            "modality": curve["modality"],
            "seen": curve["seen"],
            "levels": curve["levels"],
            "accuracy": {
                model: [
                    round(statistics.fmean(d["robustness"][name]["accuracy"][model][s] for d in details.values()), 3)
                    for s in range(len(curve["levels"]))
                ]
                for model in (*methods, "masked")
            },
        }
        for name, curve in first["robustness"].items()
    }
    default = first["headline"]["trust_method"]
    write_json(
        RESULT,
        {
            "preset": load_params().data.preset,
            "seeds": args.seeds,
            "default_method": default,
            "clean_accuracy": clean,
            "corruption_regret_points": regret,
            "false_setaside_rate": _spread([d["headline"]["false_setaside_rate"] for d in details.values()]),
            **{
                key: _spread([d["headline"][key] for d in details.values()])
                for key in ("fused_accuracy", "clean_input_fused_accuracy", "clean_input_robust_accuracy")
                if key in first["headline"]
            },
            "gate": {seed: d["trust"]["gate"] for seed, d in details.items()},
            "curves_mean_over_seeds": curves,
        },
    )
    for method in methods:
        print(
            f"{method:10s} clean {clean[method]['mean']:.2f} ± {clean[method]['std']:.2f}  "
            f"regret {regret[method]['all']['mean']:.2f} ± {regret[method]['all']['std']:.2f} "
            f"(seen {regret[method]['seen']['mean']:.2f}, unseen {regret[method]['unseen']['mean']:.2f})"
        )


if __name__ == "__main__":
    main()
