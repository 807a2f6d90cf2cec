"""A new champion is served without a restart: POST /reload, and each worker's look at the store
under concurrent load over real HTTP, through a promotion and a rollback, with no request failing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_service_support import build_artifact, promoted_champion, running, start_server

from mmfuse.inference import registry
from mmfuse.inference.log import LOG_ENV


def test_reload_swaps_in_a_new_champion_and_refuses_a_torn_one(tmp_path):
    with running(tmp_path / "log.sqlite") as client:
        first = promoted_champion()
        assert client.post("/reload").json() == {"champion": first, "challenger": None, "changed": False}
        second = registry.promote(build_artifact(tmp_path / "b", ("image", "text")), {"source": "reload test"})
        assert client.post("/predict", data={"text": "one"}).json()["model_version"] == first  # until it looks
        assert client.post("/reload").json() == {"champion": second, "challenger": None, "changed": True}
        body = client.post("/predict", data={"text": "one"}).json()
        assert body["model_version"] == second and body["modalities_used"] == ["text"]

        (Path(registry.version(second).path) / "config.json").write_text("{")  # torn: another size
        refused = client.post("/reload")
        assert refused.status_code == 503 and "mmfuse champion clean" in refused.json()["error"]
        assert client.post("/predict", data={"text": "one"}).json()["model_version"] == second  # still served
        registry.clean()  # the last complete version, the first champion, is `latest` again
        assert client.post("/reload").json()["champion"] == first


def test_a_champion_that_cannot_be_loaded_is_refused_and_the_current_one_keeps_serving(tmp_path):
    with running(tmp_path / "log.sqlite") as client:
        first = promoted_champion()
        second = registry.promote(build_artifact(tmp_path / "b"), {"source": "reload test"})
        config = Path(registry.version(second).path) / "config.json"
        config.write_text("{" * config.stat().st_size)  # unreadable, yet the size the store recorded
        refused = client.post("/reload")
        assert refused.status_code == 503 and f"{second} cannot be loaded" in refused.json()["error"]
        assert client.post("/predict", data={"text": "one"}).json()["model_version"] == first


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text("serve:\n  workers: 2\n  threads: 8\n  reload_interval_s: 0.25\n")
    return tmp_path


@pytest.fixture
def load(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A two-worker server under steady load from 8 threads; what every request got, in order."""
    promoted_champion()
    monkeypatch.setenv(LOG_ENV, str(project / "log.sqlite"))
    server = start_server(project)
    seen: dict = {"status": [], "version": [], "stop": threading.Event(), "url": server.url}

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not seen["stop"].is_set():
                response = http.post("/predict", data={"text": "two"})
                seen["status"].append(response.status_code)
                seen["version"].append(response.json().get("model_version"))

    pool = ThreadPoolExecutor(8)
    workers = [pool.submit(client) for _ in range(8)]
    try:
        yield seen
    finally:
        seen["stop"].set()
        for worker in workers:
            worker.result()
        pool.shutdown()
        server.stop()


def _until_served(seen: dict, tag: str, timeout: float = 20.0) -> None:
    """Wait until both workers answer with `tag` (the last 16 answers all name it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(seen["version"]) > 16 and set(seen["version"][-16:]) == {tag}:
            return
        time.sleep(0.1)
    raise AssertionError(f"{tag} not served after {timeout} s; last answers: {seen['version'][-16:]}")


def test_no_request_fails_while_a_promotion_and_a_rollback_are_swapped_in(load, tmp_path):
    first = promoted_champion()
    _until_served(load, first)
    second = registry.promote(build_artifact(tmp_path / "b", ("image", "text")), {"source": "reload test"})
    _until_served(load, second)
    restored = registry.rollback()
    _until_served(load, restored)
    load["stop"].set()
    time.sleep(0.5)
    statuses, versions = load["status"], load["version"]
    assert len(statuses) > 100 and set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} requests failed"
    # Answers arrive in completion order: a request begun on the old model may finish after the swap,
    # so the last answer need not name the new one; a request sent now must.
    assert {first, second, restored} == set(versions)
    for _ in range(4):  # both workers
        assert httpx.post(f"{load['url']}/predict", data={"text": "one"}).json()["model_version"] == restored
