"""Samples per second of the preprocess stage over a full dataset, cold, with 1 and 2 Dask workers.

Cold: a fresh Python process imports mmfuse and runs `mmfuse.preprocess.build.build_processed`
with the params.yaml settings but `workers` set to each count in turn (a local Dask
cluster of that many processes); the clock covers interpreter start, imports, starting the
cluster, decoding, featurising, dedup, fitting and writing. The load average and the CPU
seconds used (the stage's process and its workers) are recorded too: other work on the
machine slows the wall-clock figure, not the CPU seconds. Every run's output is hashed:
the worker count must not change a byte.
Run from the project root (default dataset: data/raw/avdigits); writes
benchmarks/results/preprocess.json with keys `preprocess_samples_per_s` (2 workers, the
shipped setting) and `preprocess_speedup_2_workers` (seconds with 1 / seconds with 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmfuse.io import write_json

RESULT = Path("benchmarks/results/preprocess.json")
_CHILD = """
import json, sys
from pathlib import Path
from mmfuse.params import load_params
from mmfuse.preprocess.build import build_processed
params = load_params().preprocess.model_copy(update={"workers": int(sys.argv[3])})
print(json.dumps(build_processed(Path(sys.argv[1]), Path(sys.argv[2]), params)))
"""


def _digest(folder: Path) -> str:
    """One sha256 over every output file, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _cold_runs(manifest: Path, work: Path, workers: int, repeats: int) -> dict:
    seconds, loads, cpu, digests = [], [], [], set()
    for _ in range(repeats):
        loads.append(os.getloadavg()[0])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(manifest), str(work / "out"), str(workers)],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        digests.add(_digest(work / "out"))
    return {
        "seconds": round(sorted(seconds)[len(seconds) // 2], 2),
        "all_runs_s": [round(s, 2) for s in seconds],
        "cpu_seconds_all_runs": [round(c, 2) for c in cpu],
        "load_average_1min_before_each_run": [round(x, 2) for x in loads],
        "outputs_sha256": sorted(digests),
        "summary": json.loads(done.stdout.strip().splitlines()[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("data/raw/avdigits/manifest.csv"))
    parser.add_argument("--repeats", type=int, default=1, help="cold runs; the median is reported")
    args = parser.parse_args()
    if not args.manifest.is_file():
        sys.exit(f"{args.manifest} not found: build the dataset first (mmfuse ingest) or pass --manifest")
    records = sum(1 for _ in args.manifest.open()) - 1
    work = Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    try:
        runs = {workers: _cold_runs(args.manifest, work, workers, args.repeats) for workers in (1, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = runs[2].pop("summary")
    runs[1].pop("summary")
    digests = {d for run in runs.values() for d in run["outputs_sha256"]}
    result = {
        "preprocess_samples_per_s": round(records / runs[2]["seconds"], 1),
        "preprocess_speedup_2_workers": round(runs[1]["seconds"] / runs[2]["seconds"], 3),
        "speedup_goal": 1.7,
        "outputs_identical_across_worker_counts": len(digests) == 1,
        "records": records,
        "by_workers": {str(k): {**v, "samples_per_s": round(records / v["seconds"], 1)} for k, v in runs.items()},
        "kept": summary["counts"],
        "removed": {k: v for k, v in summary["removed"].items() if k != "kept"},
        "manifest": str(args.manifest),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
