"""Training cost and accuracy of the fusion model, and the modality-imbalance experiments.

    python benchmarks/train_fusion.py [--processed data/processed] [--imbalance] [--work DIR]

Default: trains the whole stage (6 dedicated baselines + the fusion model, params.yaml's
`train:`) from scratch in a work folder and writes benchmarks/results/train_fusion.json:
fusion_train_s (with staged training: the three unimodal encoders plus the fusion head),
seconds per epoch, samples/s, the whole stage's time, and the any-subset evaluation on test.
Accuracy over seeds, every head and the `clean` preset (clean_fused_accuracy) is
benchmarks/train_seeds.py's. --imbalance also trains the fusion model jointly from scratch,
with and without each counter-measure (auxiliary losses, modality dropout), and writes
benchmarks/results/modality_imbalance.json: each modality's strength inside the fused model
(fused accuracy with only that modality, auxiliary head accuracy) next to the dedicated
unimodal models, for the staged default and every joint variant.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmfuse.evaluation.subsets import evaluate_subsets, load_models
from mmfuse.io import write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.artifact import load_model
from mmfuse.models.data import load_split
from mmfuse.models.scoring import subset_scores
from mmfuse.params import load_params
from mmfuse.params.train import TrainParams
from mmfuse.training.jobs import train_all, train_model

RESULTS = Path(__file__).parent / "results"
IMBALANCE_VARIANTS = {  # all trained jointly from scratch, against the staged default
    "joint_aux_losses_and_modality_dropout": {"pretrained_encoders": False},
    "joint_aux_losses_only": {"pretrained_encoders": False, "modality_dropout": 0.0},
    "joint_modality_dropout_only": {"pretrained_encoders": False, "aux_weight": 0.0},
    "joint_fused_loss_only": {"pretrained_encoders": False, "aux_weight": 0.0, "modality_dropout": 0.0},
}
VARIANT_KEYS = ("fusion", "pretrained_encoders", "aux_weight", "modality_dropout")


def _on_test(processed: Path, model_dir: Path, params: TrainParams, metrics: dict[str, Any]) -> dict[str, Any]:
    """Score a trained all-modality model on test: every subset and every auxiliary head."""
    model, _ = load_model(model_dir)
    scores = subset_scores(model, load_split(processed, "test"), params.eval_batch_size)
    return {
        "params": {k: v for k, v in params.model_dump(mode="json").items() if k in VARIANT_KEYS},
        "train_s": metrics["train_seconds"],
        "epochs_run": metrics["epochs_run"],
        "test_subset_accuracy": {k: round(v["accuracy"], 2) for k, v in scores["subsets"].items()},
        "test_aux_accuracy": {k: round(v["accuracy"], 2) for k, v in scores["aux"].items()},
    }


def _fusion_on_test(
    processed: Path, work: Path, name: str, params: TrainParams, encoders_from: Path | None
) -> dict[str, Any]:
    """Train one all-modality model (staged on the unimodal models in `encoders_from`, or jointly), score it on test."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    sources = {m: encoders_from / m for m in MODALITIES} if encoders_from and params.pretrained_encoders else None
    metrics = train_model(
        processed, folder / "model", params, MODALITIES, params.fusion, folder / "ckpt", folder / "curve.csv", sources
    )
    return _on_test(processed, folder / "model", params, metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--imbalance", action="store_true", help="also run the modality-imbalance ablations")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    params = load_params().train
    work = args.work or Path(tempfile.mkdtemp(prefix="mmfuse-train-bench-"))
    shutil.rmtree(work / "stage", ignore_errors=True)  # always from scratch: no checkpoint to resume
    try:
        started = time.perf_counter()
        summary = train_all(
            processed=args.processed,
            models=work / "stage" / "models",
            params=params,
            curves=work / "stage" / "plots",
            metrics=work / "stage",
        )
        stage_s = time.perf_counter() - started
        fusion = summary["candidate"]
        # Staged: producing the fusion model means training its three unimodal encoders first.
        encoders_s = (
            sum(summary["baselines"][m]["train_seconds"] for m in MODALITIES) if params.pretrained_encoders else 0.0
        )
        result: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": params.threads,
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "fusion": params.fusion,
            "pretrained_encoders": params.pretrained_encoders,
            "fusion_train_s": round(encoders_s + fusion["train_seconds"], 1),
            "fusion_head_train_s": fusion["train_seconds"],
            "fusion_epoch_s": fusion["epoch_seconds"],
            "fusion_samples_per_s": fusion["samples_per_second"],
            "fusion_epochs": fusion["epochs_run"],
            "all_models_train_s": round(stage_s, 1),
            "per_model_train_s": {
                "candidate": fusion["train_seconds"],
                **{k: v["train_seconds"] for k, v in summary["baselines"].items()},
            },
            "test": evaluate_subsets(load_models(work / "stage" / "models")[0], load_split(args.processed, "test")),
        }
        write_json(RESULTS / "train_fusion.json", result)
        if args.imbalance:
            dedicated = {m: result["test"]["subsets"][m]["dedicated"] for m in MODALITIES}
            candidate = _on_test(args.processed, work / "stage" / "models" / "candidate", params, fusion)
            variants = {"staged_pretrained_encoders (default)": candidate}
            for name, update in IMBALANCE_VARIANTS.items():
                variants[name] = _fusion_on_test(args.processed, work, name, params.model_copy(update=update), None)
            write_json(
                RESULTS / "modality_imbalance.json",
                {"fusion": params.fusion, "dedicated_unimodal_test_accuracy": dedicated, "variants": variants},
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
