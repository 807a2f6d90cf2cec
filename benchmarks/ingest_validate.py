"""Seconds for ingest + validate of the full avdigits from the mirror, cold.

Cold: the fetched sources and the built dataset are removed first, so the run copies
and verifies every source file, builds every sample and validates every file.
Run from the project root with MMFUSE_DATA_MIRROR set; writes
benchmarks/results/ingest_validate.json.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mmfuse.io import write_json

RESULT = Path("benchmarks/results/ingest_validate.json")


def _timed(stage: str) -> float:
    """Wall time of one stage's command exactly as dvc.yaml runs it (its paths are declared there only)."""
    command = shlex.split(yaml.safe_load(Path("dvc.yaml").read_text())["stages"][stage]["cmd"])
    if command[0] == "python":
        command[0] = sys.executable
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> None:
    if not os.environ.get("MMFUSE_DATA_MIRROR"):
        sys.exit("set MMFUSE_DATA_MIRROR to the dataset mirror (offline benchmark)")
    for folder in ("data/sources", "data/raw"):
        shutil.rmtree(folder, ignore_errors=True)
    ingest_s = _timed("ingest")
    validate_s = _timed("validate")
    rows = json.loads(Path("metrics/validation.json").read_text())["rows"]
    result = {
        "ingest_validate_s": round(ingest_s + validate_s, 2),
        "ingest_s": round(ingest_s, 2),
        "validate_s": round(validate_s, 2),
        "samples": rows,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
