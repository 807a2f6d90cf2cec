"""The real DVC pipeline on a small dataset of your own: repro, no-op second repro, push/pull."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory, dataset_factory) -> Path:
    """A fresh git + DVC project holding this repo's pipeline and a tiny dataset."""
    work = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    dataset_factory(work / "data" / "external" / "tiny")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dataset"] = "data/external/tiny/manifest.csv"
    for section, overrides in FAST_PARAMS.items():
        params.setdefault(section, {}).update(overrides)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], work)
    _run(["dvc", "init", "-q"], work)
    _run(["dvc", "remote", "add", "-d", "local", str(tmp_path_factory.mktemp("remote"))], work)
    _run(["dvc", "repro"], work)
    return work


# Params that keep later stages quick on a dataset this small.
FAST_PARAMS: dict[str, dict] = {}


def test_repro_builds_and_validates(project):
    summary = json.loads((project / "metrics" / "validation.json").read_text())
    assert summary["success"] is True and summary["rows"] == 30
    assert (project / "reports" / "data_docs" / "index.html").is_file()
    assert (project / "data" / "raw" / "tiny" / "manifest.csv").is_file()


def test_second_repro_does_nothing(project):
    lock = (project / "dvc.lock").read_text()
    out = _run(["dvc", "repro"], project)
    assert "Running stage" not in out
    assert (project / "dvc.lock").read_text() == lock
    assert "up to date" in _run(["dvc", "status"], project)


def test_push_pull_round_trip(project):
    before = _tree_digest(project / "data" / "raw")
    _run(["dvc", "push"], project)
    shutil.rmtree(project / "data" / "raw")
    shutil.rmtree(project / ".dvc" / "cache")
    _run(["dvc", "pull"], project)
    assert _tree_digest(project / "data" / "raw") == before


def test_bad_data_stops_the_pipeline_and_names_the_row(project, tmp_path):
    work = tmp_path / "bad"
    shutil.copytree(project, work, ignore=shutil.ignore_patterns("cache"))
    manifest = work / "data" / "external" / "tiny" / "manifest.csv"
    manifest.write_text(manifest.read_text() + "evil,0,train,../../secret.png,,\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["dvc", "repro"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "evil" in done.stdout + done.stderr
