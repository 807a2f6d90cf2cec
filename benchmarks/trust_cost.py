"""What judging the inputs costs a request: the serving Predictor's forward per trust method.

    python benchmarks/trust_cost.py [--model models/candidate] [--trust models/trust.safetensors] [--processed ...]

Run after `make run`. Loads the candidate as the service does (`Predictor`, one torch
thread, as `serve.torch_threads`), once without a trust (every input believed: one fused
call) and once per trust method with the evaluate stage's fitted trust, and times
`Predictor.forward` on one test sample carrying all three modalities: the median of
--calls calls, the methods interleaved in rounds so that all see the same machine load.
The added cost of a method is its median minus the trust-less median. Writes
benchmarks/results/trust_cost.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmfuse.inference.predictor import Predictor, PreparedSample
from mmfuse.io import write_json
from mmfuse.models.data import load_split
from mmfuse.models.trust import METHODS

RESULT = Path(__file__).parent / "results" / "trust_cost.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/candidate"))
    parser.add_argument("--trust", type=Path, default=Path("models/trust.safetensors"))
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        bare = Path(scratch) / "artifact"
        shutil.copytree(args.model, bare)  # no trust file beside the weights: the predictor believes every input
        plain = Predictor(bare, "bench")
    fitted = Predictor(args.model, "bench", trust=args.trust)
    predictors = {"none": plain}
    for method in METHODS:
        predictor = Predictor(args.model, "bench", trust=args.trust)
        predictor.trust = dataclasses.replace(fitted.trust, method=method)
        predictors[method] = predictor
    test = load_split(args.processed, "test")
    row = int(torch.nonzero(test.tensors["mask"].all(dim=1))[0])
    sample = PreparedSample(
        {key: value[row] for key, value in test.tensors.items() if key != "label"}, plain.modalities, (), 1, 1, 1
    )
    timings: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.calls // 100):
        for name, predictor in predictors.items():
            for _ in range(100):
                started = time.perf_counter()
                predictor.forward([sample])
                timings[name].append((time.perf_counter() - started) * 1000)
    median = {name: round(statistics.median(values), 4) for name, values in timings.items()}
    write_json(
        RESULT,
        {
            "forward_ms": median,
            "added_ms": {m: round(median[m] - median["none"], 4) for m in METHODS},
            "calls": args.calls,
            "torch_threads": 1,
            "goal_added_ms": 0.5,
        },
    )
    print(median)


if __name__ == "__main__":
    main()
