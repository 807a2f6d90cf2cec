"""Run the DVC pipeline stage by stage, for orchestrators (Prefect) that want one task per stage.

Everything goes through `dvc`, so DVC's caching and lineage hold whoever runs it: a stage
whose inputs did not change is skipped and dvc.lock records what ran. Parameter
overrides become a DVC experiment (`dvc exp run -S`), never a silent edit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmfuse.errors import MMFuseError

KNOWN_FAILURE_EXIT = 2  # mmfuse's exit status for a known, non-transient failure (bad data, bad params)


class StageFailed(MMFuseError):
    """A stage exited non-zero; `transient` says whether retrying may help."""

    def __init__(self, stage: str, returncode: int, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"stage {stage!r} failed (exit {returncode}):\n{tail}")
        self.stage = stage
        # DVC reports the command's own status ("exited with 2"): mmfuse's known failures
        # (bad data, bad params) will fail again, anything else (a kill, I/O) may not.
        self.transient = f"exited with {KNOWN_FAILURE_EXIT}" not in output


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool  # False when DVC found nothing changed and skipped it
    output: str


def stage_names(project: Path) -> list[str]:
    """Stages in dvc.yaml order, which this project keeps topological."""
    return list(yaml.safe_load((Path(project) / "dvc.yaml").read_text())["stages"])


def _dvc(args: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)


def repro_stage(stage: str, project: Path) -> StageResult:
    """`dvc repro --single-item <stage>`: runs it only if its deps, params or outs changed."""
    done = _dvc(["repro", "--single-item", stage], project)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise StageFailed(stage, done.returncode, output)
    return StageResult(stage, ran=f"Running stage '{stage}'" in output, output=output)


def run_experiment(overrides: dict[str, Any], project: Path, name: str | None = None) -> str:
    """Run the whole pipeline as a DVC experiment with `overrides` (dotted params keys)."""
    args = ["exp", "run"] + (["--name", name] if name else [])
    for key, value in sorted(overrides.items()):
        args += ["--set-param", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    done = _dvc(args, project)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise StageFailed("exp run", done.returncode, output)
    return output
