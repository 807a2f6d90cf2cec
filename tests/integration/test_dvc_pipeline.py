"""The real DVC pipeline on a small dataset of your own: repro, no-op second repro, push/pull, bad data."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from project_tools import run
from trees import tree_digest

from mmfuse.errors import MMFuseError
from mmfuse.inference import registry
from mmfuse.models.artifact import load_model
from mmfuse.orchestration.dvc import StageFailed, repro_stage, repromote, run_experiment
from mmfuse.orchestration.tune import tune
from mmfuse.params import load_params

pytestmark = pytest.mark.slow


def test_repro_builds_and_validates(tiny_project):
    summary = json.loads((tiny_project / "metrics" / "validation.json").read_text())
    assert summary["success"] is True and summary["rows"] == 30
    assert (tiny_project / "reports" / "data_docs" / "index.html").is_file()
    assert (tiny_project / "data" / "raw" / "tiny" / "manifest.csv").is_file()


def test_second_repro_does_nothing(project_copy):
    lock = (project_copy / "dvc.lock").read_text()
    out = run(["dvc", "repro"], project_copy).stdout
    assert "Running stage" not in out
    assert (project_copy / "dvc.lock").read_text() == lock
    assert "up to date" in run(["dvc", "status"], project_copy).stdout


def test_push_pull_round_trip(project_copy):
    before = tree_digest(project_copy / "data" / "raw")
    run(["dvc", "push"], project_copy)
    shutil.rmtree(project_copy / "data" / "raw")
    shutil.rmtree(project_copy / ".dvc" / "cache")
    run(["dvc", "pull"], project_copy)
    assert tree_digest(project_copy / "data" / "raw") == before


def test_bad_data_stops_the_pipeline_and_names_the_row(project_copy):
    manifest = project_copy / "data" / "external" / "tiny" / "manifest.csv"
    manifest.write_text(manifest.read_text() + "evil,0,train,../../secret.png,,\n")
    done = run(["dvc", "repro"], project_copy, check=False)
    assert done.returncode != 0
    assert "evil" in done.stdout + done.stderr
    assert "Running stage 'preprocess'" not in done.stdout  # nothing downstream ran on bad data


def test_fusion_head_experiments_never_promote_and_the_readme_way_back_needs_no_cache(project_copy):
    """Each head an experiment, compared in `dvc exp show`; then the README's way back to the commit.

    `dvc exp run` once wrote its model into the store as champion, with HEAD's lineage: the
    store starts empty, so each experiment's model would be a first champion and only the
    guard stops it. The way back must work without DVC's cache (as if dvc.lock had been
    committed from another machine), and promote must then rerun alone.
    """
    unimodal = tree_digest(project_copy / "models" / "baselines" / "image")
    committed = tree_digest(project_copy / "models" / "candidate")
    heads = ["gated", "lmf"]
    assert yaml.safe_load((project_copy / "params.yaml").read_text())["train"]["fusion"] not in heads
    for head in heads:
        output = run_experiment({"train.fusion": head}, project_copy, name=f"head-{head}")
        assert "Running stage 'train_fusion'" in output and "Running stage 'train_unimodal'" not in output, output
        assert load_model(project_copy / "models" / "candidate")[1]["model"]["fusion"] == head
        decision = json.loads((project_copy / "reports" / "promotion" / "decision.json").read_text())
        assert decision["verdict"] == "experiment" and decision["experiment"] == f"head-{head}"
        assert decision["failed_gates"] == []
        assert registry.champion() is None and registry.history()[-1]["verdict"] == "experiment"
    assert tree_digest(project_copy / "models" / "baselines" / "image") == unimodal
    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], project_copy).stdout)))
    by_name = {row["Experiment"]: row for row in table if row["Experiment"]}
    assert {by_name[f"head-{h}"]["train.fusion"] for h in heads} == set(heads)
    assert all(0 <= float(by_name[f"head-{h}"]["fused_accuracy"]) <= 100 for h in heads)

    assert tree_digest(project_copy / "models" / "candidate") != committed
    shutil.rmtree(project_copy / ".dvc" / "cache")
    done = subprocess.run(
        ["bash", "-c", _readme_way_back()],
        cwd=project_copy,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in run(["dvc", "status"], project_copy).stdout
    assert tree_digest(project_copy / "models" / "candidate") == committed
    # promote alone: nothing above it reruns
    output = repromote(project_copy).output
    assert re.findall(r"Running stage '(\w+)'", output) == ["promote"]
    assert registry.champion() is not None
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["evaluate"]["ece_bins"] += 1
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(MMFuseError, match="evaluate changed since the last run"):
        repromote(project_copy)


def test_a_known_failure_is_told_from_a_transient_one_by_its_record_not_its_text(project_copy):
    """The training flow retries only transient failures; a stage's MMFuseError leaves a JSON record."""
    assert repro_stage("validate", project_copy).ran is False  # up to date: DVC skips it
    manifest = project_copy / "data" / "external" / "tiny" / "manifest.csv"
    manifest.write_text(manifest.read_text() + "evil,0,train,../../secret.png,,\n")
    assert repro_stage("ingest", project_copy).ran is True
    with pytest.raises(StageFailed) as known:
        repro_stage("validate", project_copy)
    assert known.value.transient is False and known.value.known["error"] == "ValidationFailed"
    assert "evil" in known.value.known["message"]
    stages = yaml.safe_load((project_copy / "dvc.yaml").read_text())
    stages["stages"]["crash"] = {"cmd": "python -c 'import os; os.kill(os.getpid(), 9)'"}  # a kill, not a known error
    (project_copy / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    with pytest.raises(StageFailed) as crashed:
        repro_stage("crash", project_copy)
    assert crashed.value.transient is True and crashed.value.known is None


def test_a_bad_link_in_the_dataset_stops_the_pipeline_and_keeps_the_previous_raw_data(project_copy, tmp_path):
    """A failed ingest once left data/raw deleted (DVC removes outputs before a stage runs)."""
    raw = tree_digest(project_copy / "data" / "raw")
    lock = (project_copy / "dvc.lock").read_text()
    dataset = project_copy / "data" / "external" / "tiny"
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((dataset / "images" / "train-0-0.png").read_bytes())
    (dataset / "images" / "linked.png").symlink_to(outside)
    with open(dataset / "manifest.csv", "a") as handle:
        handle.write("linked,0,train,images/linked.png,,\n")
    done = run(["dvc", "repro"], project_copy, check=False)
    assert done.returncode != 0
    assert "linked.png (named by the manifest) links to" in done.stdout + done.stderr
    assert tree_digest(project_copy / "data" / "raw") == raw and (project_copy / "dvc.lock").read_text() == lock
    (dataset / "images" / "linked.png").unlink()
    (dataset / "images" / "ghost.png").symlink_to(tmp_path / "nowhere.png")  # dangling: DVC's own hashing stops
    done = run(["dvc", "repro"], project_copy, check=False)
    assert done.returncode != 0 and "ghost.png" in done.stdout + done.stderr
    assert tree_digest(project_copy / "data" / "raw") == raw and (project_copy / "dvc.lock").read_text() == lock


def _readme_way_back() -> str:
    """The README's command back to the commit after an experiment, so the two cannot drift apart."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return next(line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("git checkout -- ."))


def _champion_tag() -> str | None:
    model = registry.champion()
    return str(model.tag) if model is not None else None


def test_tune_queues_a_search_and_a_seed_spread_as_experiments(project_copy):
    """The queue for real, with one configuration and its seed spread (two experiments); how the
    summary ranks several configurations is tests/unit/test_tune.py's."""
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["tune"] = {"space": {"train.head_epochs": [1]}, "budget": 1, "top": 1, "seeds": 2, "workers": 1}
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "a search"], project_copy)
    champion = _champion_tag()
    summary = tune(project_copy, load_params(project_copy / "params.yaml"), run_id="t")
    best = summary["best"]
    assert [r["experiment"] for r in summary["results"]] == ["tune-t-0"] and best["experiment"] == "tune-t-0"
    assert best["n"] == 2 and set(best["runs"]) == {"tune-t-0", "tune-t-0-seed1"} and best["failed"] == []
    assert best["mean"] == pytest.approx(sum(best["runs"].values()) / 2, abs=1e-3) and best["std"] is not None
    assert summary["baseline"]["train.head_epochs"] == params["train"]["head_epochs"]
    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], project_copy).stdout)))
    shown = {row["Experiment"]: row for row in table if row["Experiment"]}
    assert {"tune-t-0", "tune-t-0-seed1"} <= set(shown)
    assert shown["tune-t-0"]["train.head_epochs"] == "1"
    assert shown["tune-t-0-seed1"]["train.seed"] == str(params["train"]["seed"] + 1)
    assert json.loads((project_copy / "reports" / "tuning" / "summary.json").read_text()) == summary
    assert _champion_tag() == champion  # the experiments promoted nothing
