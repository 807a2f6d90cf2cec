"""Samples per second of the preprocess stage over a full dataset, cold, on both cores.

Cold: a fresh Python process imports mmfuse and runs `mmfuse.preprocess.build.build_processed`
with the params.yaml settings (workers = both cores); the clock covers interpreter
start, imports, decoding, featurising, dedup, fitting and writing. The load average
and the CPU seconds used (the stage's process and its workers) are recorded too:
other work on the machine slows the wall-clock figure, not the CPU seconds.
Run from the project root (default dataset: data/raw/avdigits); writes
benchmarks/results/preprocess.json with key `preprocess_samples_per_s`.
"""

from __future__ import annotations

import argparse
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
print(json.dumps(build_processed(Path(sys.argv[1]), Path(sys.argv[2]), load_params().preprocess)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("data/raw/avdigits/manifest.csv"))
    parser.add_argument("--repeats", type=int, default=1, help="cold runs; the median is reported")
    args = parser.parse_args()
    if not args.manifest.is_file():
        sys.exit(f"{args.manifest} not found: build the dataset first (mmfuse ingest) or pass --manifest")
    records = sum(1 for _ in args.manifest.open()) - 1
    seconds, loads, cpu = [], [], []
    work = Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    try:
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, str(args.manifest), str(work / "out")],
                check=True,
                capture_output=True,
                text=True,
            )
            seconds.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            summary = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = sorted(seconds)[len(seconds) // 2]
    result = {
        "preprocess_samples_per_s": round(records / median, 1),
        "records": records,
        "seconds": round(median, 2),
        "all_runs_s": [round(s, 2) for s in seconds],
        "cpu_seconds_all_runs": [round(c, 2) for c in cpu],
        "kept": summary["counts"],
        "removed": {k: v for k, v in summary["removed"].items() if k != "kept"},
        "manifest": str(args.manifest),
        "cpus": os.cpu_count(),
        "load_average_1min_before_each_run": [round(x, 2) for x in loads],
        "python": platform.python_version(),
    }
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
