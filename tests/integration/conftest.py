"""A real git + DVC project holding this repo's pipeline and a tiny dataset, reproduced once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from model_store import clear_store
from project_tools import run

ROOT = Path(__file__).resolve().parents[2]

# Params that keep every stage quick on a dataset this small.
FAST_PARAMS: dict[str, dict] = {
    "train": {"epochs": 2, "head_epochs": 2, "patience": 2, "batch_size": 4},
    "evaluate": {"latency_repeats": 1, "latency_batch": 8, "workers": 1},
    "monitor": {"reference_split": "val"},
    # so that a tiny model can become champion
    "promote": {
        "min_accuracy": 0.0,
        "max_ece": 1.0,
        "baseline_margin": -100.0,
        "min_subset_accuracy": 0.0,
        "min_class_accuracy": 0.0,
        "min_speaker_accuracy": 0.0,
    },
}


def _merge(target: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, dataset_factory) -> Path:
    """Reproduced once; tests that change it work on a copy (`project_copy`)."""
    work = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    dataset_factory(work / "data" / "external" / "tiny")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dataset"] = "data/external/tiny/manifest.csv"
    _merge(params, FAST_PARAMS)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text("/src/**/__pycache__\n")
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path_factory.mktemp("remote"))], work)
    clear_store()
    run(["dvc", "repro"], work)
    run(["git", "add", "-A"], work)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny project"], work)
    return work


@pytest.fixture
def project_copy(tiny_project, tmp_path) -> Path:
    """A copy of the tiny project, beside an empty model store (as when it was built)."""
    work = tmp_path / "project"
    shutil.copytree(tiny_project, work, symlinks=True)
    clear_store()
    return work
