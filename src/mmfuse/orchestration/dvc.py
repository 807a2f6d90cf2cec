"""Run the DVC pipeline stage by stage, for orchestrators (Prefect) that want one task per stage.

Everything goes through `dvc`, so DVC's caching and lineage hold whoever runs it: a stage
whose inputs did not change is skipped and dvc.lock records what ran. Parameter
overrides become a DVC experiment (`dvc exp run -S`), never a silent edit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmfuse.errors import MMFuseError
from mmfuse.stages import FAILURE_RECORD_ENV


class StageFailed(MMFuseError):
    """A stage exited non-zero; `transient` says whether retrying may help."""

    def __init__(self, stage: str, returncode: int, output: str, known: dict[str, str] | None = None) -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"stage {stage!r} failed (exit {returncode}):\n{tail}")
        self.stage = stage
        # A known failure (the stage's MMFuseError: bad data, bad params) will fail again;
        # anything else (a kill, I/O, a full disk) may not.
        self.known = known
        self.transient = known is None


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool  # False when DVC found nothing changed and skipped it
    output: str


def stage_names(project: Path) -> list[str]:
    """Stages in dvc.yaml order, which this project keeps topological."""
    return list(yaml.safe_load((Path(project) / "dvc.yaml").read_text())["stages"])


def _dvc(args: list[str], project: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        **(env or {}),
    }
    return subprocess.run(["dvc", *args], cwd=project, env=full_env, capture_output=True, text=True)


def _dvc_ok(args: list[str], project: Path, what: str) -> subprocess.CompletedProcess[str]:
    """`_dvc`, raising StageFailed(`what`) when DVC exits non-zero."""
    done = _dvc(args, project)
    if done.returncode != 0:
        raise StageFailed(what, done.returncode, done.stdout + done.stderr)
    return done


def _changed(stage: str, project: Path) -> bool:
    """Whether `dvc status` (JSON) reports anything changed for this one stage."""
    done = _dvc_ok(["status", "--json", stage], project, stage)
    return bool(json.loads(done.stdout or "{}"))


def repro_stage(stage: str, project: Path) -> StageResult:
    """`dvc repro --single-item <stage>`: runs it only if its deps, params or outs changed.

    Whether it ran comes from `dvc status --json` just before; whether a failure is known
    comes from the failure record the stage's command writes (mmfuse.stages.friendly).
    """
    ran = _changed(stage, project)
    return StageResult(stage, ran=ran, output=_repro(stage, project))


def _repro(stage: str, project: Path, *options: str) -> str:
    """`dvc repro --single-item [options] <stage>`; its output, or StageFailed with the stage's failure record."""
    with tempfile.TemporaryDirectory() as scratch:
        record = Path(scratch) / "failure.json"
        done = _dvc(["repro", "--single-item", *options, stage], project, env={FAILURE_RECORD_ENV: str(record)})
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise StageFailed(
                stage, done.returncode, output, json.loads(record.read_text()) if record.exists() else None
            )
    return output


def repromote(project: Path, stage: str = "promote") -> StageResult:
    """Rerun the promote stage alone (`dvc repro --single-item --force promote`), e.g. after the
    champion was rolled back or removed, without rerunning what it depends on.

    `dvc repro -f promote` forces every stage above it too (2.5 min on the default dataset);
    this reruns one. It refuses when anything above has changed: promoting outputs that no
    longer match their inputs would record a lineage that is not true.
    """
    done = _dvc_ok(["status", "--json"], project, "status")
    stale = sorted(set(json.loads(done.stdout or "{}")) - {stage})
    if stale:
        raise MMFuseError(
            f"{', '.join(stale)} changed since the last run, so {stage} alone would promote stale outputs: "
            "run `dvc repro`, which reruns them and then promotes."
        )
    return StageResult(stage, ran=True, output=_repro(stage, project, "--force"))


def track(path: Path, project: Path) -> Path:
    """Version a folder of new data: `dvc add` (its files into the DVC cache, <folder>.dvc beside it),
    then, in a git repository, stage the .dvc file and DVC's .gitignore, so a commit or a
    `dvc exp run` carries them. Returns the .dvc file."""
    project = Path(project).resolve()
    rel = Path(path).resolve().relative_to(project)
    _dvc_ok(["add", rel.as_posix()], project, "add")
    dvc_file = rel.with_name(f"{rel.name}.dvc")
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=project, capture_output=True, text=True)
    if inside.returncode == 0:
        staged = subprocess.run(
            ["git", "add", dvc_file.as_posix(), (rel.parent / ".gitignore").as_posix()],
            cwd=project,
            capture_output=True,
            text=True,
        )
        if staged.returncode != 0:
            raise MMFuseError(f"git could not stage {dvc_file}: {staged.stderr.strip()}")
    return project / dvc_file


def _experiment_args(overrides: dict[str, Any], name: str | None) -> list[str]:
    args = ["exp", "run"] + (["--name", name] if name else [])
    for key, value in sorted(overrides.items()):
        args += [
            "--set-param",
            f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}",
        ]
    return args


def run_experiment(overrides: dict[str, Any], project: Path, name: str | None = None) -> str:
    """Run the whole pipeline as a DVC experiment with `overrides` (dotted params keys)."""
    done = _dvc_ok(_experiment_args(overrides, name), project, "exp run")
    return done.stdout + done.stderr


def queue_experiment(overrides: dict[str, Any], project: Path, name: str) -> None:
    """Queue the pipeline as the DVC experiment `name` with `overrides` (`dvc exp run --queue`)."""
    _dvc_ok([*_experiment_args(overrides, name), "--queue"], project, "exp run --queue")


def experiments(project: Path) -> dict[str, dict[str, Any]]:
    """Every experiment of the project by name: {"state": queued|running|success|failed|..., "metrics": {file: {...}}}.

    Read from `dvc exp show --json` (its `executor.state` and each run's metrics), never from its text.
    """
    done = _dvc_ok(["exp", "show", "--json"], project, "exp show")
    found: dict[str, dict[str, Any]] = {}
    for baseline in json.loads(done.stdout or "[]"):
        for experiment in baseline.get("experiments") or []:
            run = experiment["revs"][0]
            metrics = (run.get("data") or {}).get("metrics") or {}
            state = (experiment.get("executor") or {}).get("state") or ("failed" if run.get("error") else "success")
            found[experiment.get("name") or run["name"]] = {
                "state": state,
                "metrics": {path: (m.get("data") or {}) for path, m in metrics.items()},
            }
    return found


def run_queue(project: Path, names: list[str], workers: int, timeout_s: float, poll_s: float = 5.0) -> None:
    """Start `workers` queue workers (`dvc queue start -j`) and wait until every experiment in `names` has ended."""
    _dvc_ok(["queue", "start", "-j", str(workers)], project, "queue start")
    deadline = time.monotonic() + timeout_s
    while True:
        states = experiments(project)
        waiting = [n for n in names if states.get(n, {}).get("state") in (None, "queued", "running")]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise MMFuseError(f"{len(waiting)} experiment(s) still queued or running after the timeout: {waiting}")
        time.sleep(poll_s)
