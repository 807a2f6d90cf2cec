"""Which features the per-modality trust should measure: the encoder embedding, input statistics, or both.

    python benchmarks/trust_choice.py    # after `dvc repro` (hard preset): models/candidate, data/processed, data/raw

For each candidate feature set, fits the class-conditional Mahalanobis trust exactly as the
evaluate stage does (train statistics, val ranking, threshold at 1 - evaluate.trust.false_alarm)
and reports, on the test split, the share of clean inputs set aside per modality and the
share of corrupted inputs flagged at the first three severities of every corruption family.
Also times what the chosen trust adds to one request in-process (scores + decision, median
of 1,000 single-sample calls; the model call itself is not included). Writes
benchmarks/results/trust_choice.json. The chosen set (`both`) is what models/trust.py fits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mmfuse.evaluation.corruption import CORRUPTIONS, RawSplit, corrupted_array, corruption_rng, split_rows
from mmfuse.evaluation.predict import embeddings
from mmfuse.evaluation.trust import encoded, labelled_features
from mmfuse.io import write_json
from mmfuse.models.artifact import load_model
from mmfuse.models.data import load_split
from mmfuse.models.trust import fit_modality, fit_trust, input_features, trust_features
from mmfuse.params import load_params
from mmfuse.preprocess.state import PreprocessState

RESULT = Path("benchmarks/results/trust_choice.json")
Features = Callable[[str, torch.Tensor, torch.Tensor], np.ndarray]
CANDIDATES: dict[str, Features] = {
    "embedding": lambda m, emb, x: emb.double().numpy(),
    "input_statistics": lambda m, emb, x: input_features(m, x).numpy(),
    "both": trust_features,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--manifest", type=Path, default=Path("data/raw/avdigits/manifest.csv"))
    parser.add_argument("--model", type=Path, default=Path("models/candidate"))
    args = parser.parse_args()
    params = load_params().evaluate
    model, config = load_model(args.model)
    state = PreprocessState.from_dict(config["preprocessing"])
    splits = {name: load_split(args.processed, name) for name in ("train", "val", "test")}
    test = splits["test"]
    raw = RawSplit.load(split_rows(args.manifest, test.sample_ids), args.manifest.parent, test.tensors["mask"], state)
    threshold = 1.0 - params.trust.false_alarm

    def features(kind: str, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        present = model.presence(tensors)
        emb = embeddings(model, tensors, present, params.batch_size)
        return {
            m: (present[:, i], CANDIDATES[kind](m, emb[present[:, i], i], tensors[m][present[:, i]]))
            for i, m in enumerate(model.spec.modalities)
        }

    result: dict[str, dict] = {}
    with torch.inference_mode():
        for kind in CANDIDATES:
            train, val, clean = (features(kind, splits[name].tensors) for name in ("train", "val", "test"))
            labels = splits["train"].tensors["label"]
            fitted = {m: fit_modality(train[m][1], labels[train[m][0]].numpy(), val[m][1]) for m in train}
            row: dict[str, object] = {
                f"clean_set_aside:{m}": round(float((fitted[m].scores(clean[m][1]) > threshold).mean()), 4)
                for m in fitted
            }
            for corruption in CORRUPTIONS:
                flagged = []
                for index, level in enumerate(corruption.levels(params.robustness)[:3]):
                    rng = corruption_rng(params.seed, corruption, index)
                    noisy = torch.from_numpy(corrupted_array(raw, corruption, level, rng, state))
                    rows, feats = features(kind, {**test.tensors, corruption.modality: noisy})[corruption.modality]
                    flagged.append(round(float((fitted[corruption.modality].scores(feats) > threshold).mean()), 4))
                row[corruption.name] = flagged
            result[kind] = row
            print(kind, row, flush=True)
        trust = fit_trust(
            tuple(model.spec.modalities),
            labelled_features(model, splits["train"], params.batch_size),
            encoded(model, splits["val"].tensors, params.batch_size),
            params.trust.false_alarm,
        )
        one = {key: value[:1] for key, value in test.tensors.items()}
        present = model.presence(one)
        emb = model.encode(one, present)
        timings = []
        for _ in range(1000):
            started = time.perf_counter()
            trust.assess(emb, present, one)
            timings.append((time.perf_counter() - started) * 1000)
    write_json(
        RESULT,
        {
            "false_alarm": params.trust.false_alarm,
            "flagged_share": result,
            "chosen": "both",
            "trust_ms_per_request": round(statistics.median(timings), 4),
        },
    )


if __name__ == "__main__":
    main()
