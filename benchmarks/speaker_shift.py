"""Speaker shift: is fusion ever worse than its best single modality for a speaker it never heard?

    MMFUSE_DATA_MIRROR=... python benchmarks/speaker_shift.py [--speakers george jackson ...] [--work DIR]

For each FSDD speaker in turn, builds avdigits with that speaker held out (`data.split:
speaker`, `clean` preset: their clips are the only test audio), preprocesses it, trains every
model with params.yaml's `train:` and fits the trust as the evaluate stage does, all with the
project's own stage code. On the test split it records each dedicated single-modality model,
the fusion model trusting every input and the served default (untrusted modalities set aside),
and `speaker_worst_margin_points` = min over speakers of (default fused - best single modality).
Writes benchmarks/results/speaker_shift.json. About 2.5 minutes per speaker on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmfuse.data.manifest import dataset_manifest
from mmfuse.evaluation.predict import FUSED, ROBUST, accuracy
from mmfuse.evaluation.subsets import evaluate_subsets, load_models
from mmfuse.evaluation.trust import encoded, fit_on_splits
from mmfuse.io import write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.data import load_split
from mmfuse.models.determinism import deterministic
from mmfuse.params import load_params
from mmfuse.preprocess.build import build_processed
from mmfuse.stages import ingest
from mmfuse.training.jobs import train_all

RESULT = Path("benchmarks/results/speaker_shift.json")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def held_out(speaker: str, work: Path, sources: Path) -> dict[str, Any]:
    """Every figure of one held-out speaker, from raw data to the served model's test accuracy."""
    params = load_params()
    data = params.data.model_copy(update={"split": "speaker", "holdout_speaker": speaker, "preset": "clean"})
    ingest.run(sources=sources, raw=work / "raw", params=data)
    build_processed(dataset_manifest(data, work / "raw"), work / "processed", params.preprocess)
    train_all(
        processed=work / "processed",
        models=work / "models",
        params=params.train,
        curves=work / "curves",
        metrics=work / "metrics",
    )
    models, _ = load_models(work / "models")
    splits = {name: load_split(work / "processed", name) for name in ("train", "val", "test")}
    evaluation = params.evaluate
    with deterministic(evaluation.threads), torch.inference_mode():
        subsets = evaluate_subsets(models, splits["test"])
        trust = fit_on_splits(models[FUSED], splits["train"], splits["val"], evaluation.trust.false_alarm, 500)
        test = encoded(models[FUSED], splits["test"], 500)
        trusted = trust.trusted(trust.scores(test.embeddings, test.present, test.inputs), test.present)
        served = models[FUSED].fuse(test.embeddings, trusted)[0]
    rows = test.present.any(dim=1)
    singles = {m: subsets["subsets"][m]["dedicated"] for m in MODALITIES}
    default = round(accuracy(served, splits["test"].tensors["label"], rows), 4)
    best = max(singles, key=singles.__getitem__)
    return {
        "single": singles,
        "best_single": best,
        FUSED: subsets["fused_accuracy"],
        ROBUST: default,
        "set_aside_rate": {
            m: round(float((test.present[:, i] & ~trusted[:, i]).sum()) / max(int(test.present[:, i].sum()), 1), 4)
            for i, m in enumerate(MODALITIES)
        },
        "margin_points": round(default - singles[best], 4),
        "trusting_margin_points": round(subsets["fused_accuracy"] - singles[best], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS))
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mmfuse-speaker-shift-"))
    try:
        results = {}
        for speaker in args.speakers:
            results[speaker] = held_out(speaker, work / speaker, work / "sources")
            print(speaker, results[speaker], flush=True)
            shutil.rmtree(work / speaker, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    write_json(
        RESULT,
        {
            "preset": "clean",
            "speakers": results,
            "speaker_worst_margin_points": min(r["margin_points"] for r in results.values()),
            "trusting_worst_margin_points": min(r["trusting_margin_points"] for r in results.values()),
        },
    )


if __name__ == "__main__":
    main()
