"""Seconds one monitoring check takes over 10,000 logged requests, and where they go.

    python benchmarks/monitoring.py [--records 10000] [--repeats 3]

Run after `make run`. The log is real traffic as the service writes it: the processed test
split, scored by the candidate model in batches through the serving `Predictor`, logged by
the `InferenceLog` writer with half of the requests labelled (/feedback), repeated until
`--records` rows. The check is `run_check` as the monitoring flow calls it (drift against the
candidate's reference, live accuracy, the log suite, sensors, offline vs online), in this
process, the Prefect server excluded. The median of `--repeats` runs is `monitor_10k_s`
(goal ≤ 10 s); cProfile's top functions by cumulative time go in beside it.
Writes benchmarks/results/monitoring.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from mmfuse.inference.log import InferenceLog
from mmfuse.inference.predictor import Predictor, PreparedSample
from mmfuse.io import write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.data import load_split
from mmfuse.monitoring.check import run_check
from mmfuse.params import load_params

RESULT = Path(__file__).parent / "results" / "monitoring.json"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def write_traffic(log: Path, artifact: Path, processed: Path, records: int) -> None:
    """`records` logged predictions of the test split, every other one with its true label."""
    predictor = Predictor(artifact, "mmfuse:benchmark")
    split = load_split(processed, "test")
    keys = (*MODALITIES, "mask")
    samples = [
        PreparedSample(
            {key: split.tensors[key][i] for key in keys},
            tuple(m for m, on in zip(MODALITIES, split.tensors["mask"][i].tolist()) if on),
            (),
            None,
            None,
            None,
        )
        for i in range(len(split.sample_ids))
    ]
    labels = [predictor.labels[int(i)] for i in split.tensors["label"]]
    writer = InferenceLog(log, max_rows=records, queue_size=records, max_age_days=3650)
    torch.set_num_threads(1)
    written, ids = 0, []
    while written < records:
        for start in range(0, len(samples), 256):
            batch = samples[start : start + 256][: records - written]
            for k, (sample, score) in enumerate(zip(batch, predictor.forward(batch))):
                answer = predictor.explain(sample, score, uuid.uuid4().hex)
                ts = (START + timedelta(seconds=written)).timestamp()
                writer.record(predictor.log_record(sample, score, answer, "predict", ts, latency_ms=2.0))
                if written % 2 == 0:
                    ids.append((answer.request_id, labels[start + k]))
                written += 1
            if written >= records:
                break
    writer.flush(timeout=60)
    for request_id, label in ids:
        writer.feedback(request_id, label)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--artifact", type=Path, default=Path("models/candidate"))
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--reference", type=Path, default=Path("data/reference/reference.parquet"))
    args = parser.parse_args()
    params = load_params().monitor
    with tempfile.TemporaryDirectory(prefix="mmfuse-monitor-bench-") as root:
        log = Path(root) / "log.sqlite"
        write_traffic(log, args.artifact, args.processed, args.records)
        seconds, profile, status = [], "", None
        for repeat in range(args.repeats):
            project = Path(root) / f"project{repeat}"  # a fresh state: every run checks the whole log
            profiler = cProfile.Profile() if repeat == 0 else None
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            result = run_check(project, params, lambda summary: None, log, args.reference, START + timedelta(days=1))
            if profiler is not None:
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("cumulative").print_stats(25)
                profile = text.getvalue()
            else:
                seconds.append(round(time.perf_counter() - started, 3))
            status = result.status
    write_json(
        RESULT,
        {
            "monitor_10k_s": statistics.median(seconds) if seconds else None,
            "goal_s": 10.0,
            "records": args.records,
            "runs_s": seconds,
            "status_of_the_check": status,
            "note": "the first run is profiled (cProfile slows it) and not counted",
            "profile_top_cumulative": [line for line in profile.splitlines() if line.strip()][:40],
        },
    )
    print(f"monitor check over {args.records} logged requests: {seconds} s (median {statistics.median(seconds)})")


if __name__ == "__main__":
    main()
