"""The closed loop on a tiny project, every part real: a served champion gets shifted traffic with
capture and feedback; the drift-triggered training run (harvest=True) harvests it into a
DVC-versioned window, retrains as a DVC experiment with it in data.extra, promotes on the
recent-traffic test set, and the running server swaps the new champion in, with no request
failing meanwhile."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest_flows import prefect_server  # noqa: F401 (session fixture)
from project_tools import run
from test_service_support import start_server

from mmfuse.data.manifest import RECENT_SPLIT, read_manifest
from mmfuse.inference.log import LOG_ENV
from mmfuse.monitoring.traffic import simulate_traffic
from mmfuse.orchestration.training import training_flow


def _configure(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["serve"].update(capture=True, reload_interval_s=0.25, workers=1)
    # a tiny model's accuracies are noise: the loop, not the margins, is under test here
    params["promote"].update(
        from_experiments=True, recent_margin=-100.0, original_tolerance=100.0, min_recent=3, subset_tolerance=100.0
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "params.yaml"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "closed loop"], project)


def _version(url: str) -> str:
    return httpx.post(f"{url}/predict", data={"text": "class 1"}, timeout=30).json()["model_version"]


@pytest.mark.slow
def test_labelled_traffic_is_harvested_trained_on_promoted_and_swapped_in(
    project_copy,
    tmp_path,
    monkeypatch,
    dataset_factory,
    prefect_server,  # noqa: F811
):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "store"))  # this project's own champion history
    monkeypatch.setenv(LOG_ENV, str(tmp_path / "inference" / "log.sqlite"))
    _configure(project_copy)
    run(["dvc", "repro", "--force", "--single-item", "promote"], project_copy)  # the first champion
    world = dataset_factory(tmp_path / "world", per_class={"traffic": 12})  # samples the project never saw
    later = dataset_factory(tmp_path / "later", per_class={"later": 3})

    server = start_server(project_copy)
    statuses: list[int] = []
    stop = threading.Event()

    def steady() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                statuses.append(http.post("/predict", data={"text": "class 2"}).status_code)
                time.sleep(0.05)

    background = threading.Thread(target=steady)
    try:
        first = _version(server.url)
        sent = simulate_traffic(server.url, world, 36, "audio-noise", feedback=1.0, capture=True, split="traffic")
        assert sent["answered"] == sent["feedback"] == 36
        background.start()
        training_flow(project=str(project_copy), harvest=True)

        windows = sorted((project_copy / "data" / "external" / "feedback").glob("*/manifest.csv"))
        assert len(windows) == 1
        harvested = read_manifest(windows[0])
        assert len(harvested) == 36 and (harvested["split"] == RECENT_SPLIT).sum() == round(36 * 0.2)
        dvc_file = windows[0].parent.with_name(f"{windows[0].parent.name}.dvc")  # versioned by DVC
        assert yaml.safe_load(dvc_file.read_text())["outs"][0]["path"] == windows[0].parent.name
        ignored = run(["git", "check-ignore", windows[0].as_posix()], project_copy).stdout.strip()
        assert ignored  # the data live in DVC's cache, not in git

        decision = json.loads((project_copy / "reports" / "promotion" / "decision.json").read_text())
        assert decision["verdict"] == "promote", decision["failed_gates"]
        assert decision["recent_traffic"]["judged"]  # the held-out share, less any near-duplicates dropped
        gates = {g["gate"] for g in decision["gates"]}
        assert {"recent_traffic_improves", "original_test_holds"} <= gates and "beats_champion" not in gates

        deadline = time.monotonic() + 30
        while _version(server.url) in (first,) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _version(server.url) == decision["promoted_tag"]  # swapped in, no restart
        after = simulate_traffic(server.url, later, 9, "audio-noise", feedback=1.0, split="later", seed=1)
        assert after["answered"] == 9
    finally:
        stop.set()
        if background.is_alive():
            background.join()
        server.stop()
    assert statuses and set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} requests failed"
