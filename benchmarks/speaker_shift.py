"""Speaker shift: is fusion ever worse than its best single modality for a speaker it never heard?

    MMFUSE_DATA_MIRROR=... python benchmarks/speaker_shift.py [--speakers george jackson ...] [--work DIR]

For each FSDD speaker in turn, builds avdigits with that speaker held out (`data.split:
speaker`, `clean` preset: their clips are the only test audio), preprocesses it, trains every
model with params.yaml's `train:` and fits the trust as the evaluate stage does, all with the
project's own stage code. On the test split it records each dedicated single-modality model,
the fusion model under every trust method (trusting every input, untrusted inputs set aside,
set aside and weighed by reliability), and `speaker_worst_margin_points` = min over speakers of
(the default method, `evaluate.trust.method` - best single modality).
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
from mmfuse.evaluation.calibration import fit_temperature
from mmfuse.evaluation.predict import FUSED, accuracy, model_logits
from mmfuse.evaluation.subsets import evaluate_subsets, load_models
from mmfuse.evaluation.trust import encoded, fit_served_trust, trust_methods
from mmfuse.io import write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.data import load_split
from mmfuse.models.determinism import deterministic
from mmfuse.models.trust import METHODS, subset_log_probs
from mmfuse.params import load_params
from mmfuse.preprocess.build import build_processed
from mmfuse.preprocess.state import PreprocessState
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
    models, config = load_models(work / "models")
    splits = {name: load_split(work / "processed", name) for name in ("train", "val", "test")}
    evaluation = params.evaluate
    with deterministic(evaluation.threads):
        with torch.inference_mode():
            subsets = evaluate_subsets(models, splits["test"])
            val = splits["val"].tensors
            logits = model_logits(models[FUSED], val, 500)
        temperature = fit_temperature(logits.double().numpy(), val["label"].numpy())
        state = PreprocessState.from_dict(config["preprocessing"])
        manifest = dataset_manifest(data, work / "raw")
        # outside inference mode: fitting the gate needs autograd
        trust = fit_served_trust(
            models[FUSED], work / "processed", splits["val"], manifest, state, temperature, evaluation
        )
        with torch.inference_mode():
            test = encoded(models[FUSED], splits["test"].tensors, 500)
            answers = trust_methods(models[FUSED], trust, test.embeddings, test.present, test.inputs, temperature)
            aux = subset_log_probs(models[FUSED], test.embeddings, temperature)[1]
            trusted = trust.assess(test.embeddings, test.present, test.inputs, aux).used(trust.method)
    rows = test.present.any(dim=1)
    labels = splits["test"].tensors["label"]
    singles = {m: subsets["subsets"][m]["dedicated"] for m in MODALITIES}
    methods = {FUSED: subsets["fused_accuracy"]}
    methods.update({name: round(accuracy(log_probs, labels, rows), 4) for name, log_probs in answers.items()})
    best = max(singles, key=singles.__getitem__)
    return {
        "single": singles,
        "best_single": best,
        **methods,
        "set_aside_rate": {
            m: round(float((test.present[:, i] & ~trusted[:, i]).sum()) / max(int(test.present[:, i].sum()), 1), 4)
            for i, m in enumerate(MODALITIES)
        },
        "margin_points": {name: round(value - singles[best], 4) for name, value in methods.items()},
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
    default = load_params().evaluate.trust.method
    worst = {name: min(r["margin_points"][name] for r in results.values()) for name in METHODS}
    write_json(
        RESULT,
        {
            "preset": "clean",
            "default_method": default,
            "speakers": results,
            "speaker_worst_margin_points": worst[default],
            "worst_margin_points_by_method": worst,
        },
    )


if __name__ == "__main__":
    main()
