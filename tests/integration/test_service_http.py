"""The service over real HTTP: a `bentoml serve` subprocess on 127.0.0.1, with auth on.

Covers what only a real server shows: BentoML's /metrics, the body-size guard ahead of
the app, concurrency through the worker's threads, the inference log surviving a restart,
and the demo page driven in headless Chromium.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from test_service_support import LABELS, Server, png, promoted_champion, start_server, wav

from mmfuse.inference.log import LOG_ENV, read_log
from mmfuse.serving.auth import TOKEN_ENV

TOKEN = "test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_REQUEST_BYTES = 300_000
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with its own params.yaml (a small request limit) and data/ folder."""
    promoted_champion()
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(
        f"serve:\n  max_request_bytes: {MAX_REQUEST_BYTES}\n  threads: 8\n  workers: 2\n"
    )  # as shipped: one process per core
    return root


@pytest.fixture(scope="module")
def server(project: Path, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The server, restartable by the tests (`state.restart()`); stopped at the end of the module."""
    env = {TOKEN_ENV: TOKEN}
    monkeypatch_module.delenv(LOG_ENV, raising=False)  # the default location under the working dir
    state = SimpleNamespace(current=start_server(project, env), log=project / "data" / "inference" / "log.sqlite")

    def restart() -> None:
        state.current.stop()
        state.current = start_server(project, env)

    state.restart = restart
    try:
        yield state
    finally:
        state.current.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def url(server: SimpleNamespace, path: str) -> str:
    current: Server = server.current
    return current.url + path


def predict(server: SimpleNamespace, headers: dict[str, str] | None = AUTH, **fields: Any) -> httpx.Response:
    files = {"image": ("d.png", png(), "image/png"), "audio": ("c.wav", wav(), "audio/wav")}
    return httpx.post(
        url(server, "/predict"),
        files={k: v for k, v in files.items() if fields.get(k)} or None,
        data={"text": fields["text"]} if fields.get("text") else {},
        headers=headers,
        timeout=30,
    )


def test_health_metrics_and_docs_are_open(server):
    for path in ("/livez", "/readyz", "/docs.json", "/", "/docs", "/demo/"):
        assert httpx.get(url(server, path)).status_code == 200, path
    assert "googletagmanager" not in httpx.get(url(server, "/")).text  # ours, not BentoML's index page
    assert predict(server, image=True, text="one").status_code == 200
    metrics = httpx.get(url(server, "/metrics")).text
    assert "bentoml_service_request_total" in metrics or "bentoml_service_request_duration_seconds" in metrics
    assert "mmfuse_model_batch_size_count" in metrics


def test_predictions_need_the_token(server):
    assert predict(server, headers=None, text="one").status_code == 401
    denied = predict(server, headers={"authorization": "Bearer nope"}, text="one")
    assert denied.status_code == 401 and denied.json()["detail"][0]["loc"] == ["header", "authorization"]
    assert predict(server, image=True, audio=True, text="one").status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(server):
    too_big = b"x" * (MAX_REQUEST_BYTES + 1)
    declared = httpx.post(url(server, "/predict"), files={"image": ("big.png", too_big, "image/png")}, headers=AUTH)
    assert declared.status_code == 413 and declared.json()["detail"][0]["loc"] == ["body"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body streams until the limit trips
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for _ in range(10):
            yield b"x" * 40_000

    streamed = httpx.post(
        url(server, "/predict"), content=chunks(), headers={**AUTH, "content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413 and "body" in streamed.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"data": {"text": ""}}, 400, "body"),
        ({"files": {"image": ("x.png", b"not an image", "image/png")}}, 422, "image"),
        ({"files": {"audio": ("x.wav", wav(seconds=3.0), "audio/wav")}}, 422, "audio"),
        ({"data": {"text": "x" * 101}}, 422, "text"),
        ({"json": {"text": "one"}}, 415, "content-type"),
    ],
    ids=["nothing", "undecodable image", "audio too long", "text too long", "json"],
)
def test_bad_input_over_http_gets_a_4xx_json_naming_the_field(server, kwargs, status, field):
    response = httpx.post(url(server, "/predict"), headers=AUTH, **kwargs)
    assert response.status_code == status and field in response.json()["error"]


def test_requests_get_an_access_log_line_only_when_asked(server, project):
    """Off by default (`serve.access_log`): the inference log records every request already, and
    BentoML's line per request cost 1-3 ms of p50 (probes beside benchmarks/serve_latency.py --peer).
    Each log is read after its server stopped, so nothing is still buffered."""
    params = project / "params.yaml"
    shipped = params.read_text()
    assert predict(server, text="one").status_code == 200
    quiet = server.current.log_file
    params.write_text(shipped + "  access_log: true\n")
    try:
        server.restart()
        assert predict(server, text="one").status_code == 200
        logged = server.current.log_file
    finally:
        params.write_text(shipped)
        server.restart()
    assert "path=/predict" not in quiet.read_text()
    assert "method=POST,path=/predict" in logged.read_text()


def test_concurrent_requests_all_succeed(server):
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: predict(server, image=True, audio=True, text="two"), range(48)))
    assert [r.status_code for r in responses] == [200] * 48
    assert len({r.json()["request_id"] for r in responses}) == 48


@pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="needs Debian's chromium (apt-get install chromium)",
)
def test_the_demo_page_predicts_in_a_browser(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    image, audio = tmp_path / "digit.png", tmp_path / "clip.wav"
    image.write_bytes(png())
    audio.write_bytes(wav())
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(url(server, "/demo/"))
            page.get_by_test_id("submit").click()  # nothing chosen: the page says so, no request
            assert "at least one" in page.get_by_test_id("error").inner_text()
            page.get_by_test_id("image").set_input_files(str(image))
            page.get_by_test_id("audio").set_input_files(str(audio))
            page.get_by_test_id("text").fill("one")
            page.get_by_test_id("submit").click()  # no token yet: the server's 401 is shown
            page.get_by_test_id("error").get_by_text("authorization").wait_for()
            page.locator("details summary").click()
            page.get_by_test_id("token").fill(TOKEN)
            page.get_by_test_id("submit").click()
            page.get_by_test_id("result").wait_for(state="visible")
            assert page.get_by_test_id("label").inner_text() in LABELS
            assert page.get_by_test_id("driver").inner_text() in ("image", "audio", "text")
            assert page.get_by_test_id("probabilities").locator(".bar").count() == len(LABELS)
            modalities = page.get_by_test_id("contributions").locator(".bar")
            assert sorted(modalities.nth(i).get_attribute("data-modality") for i in range(modalities.count())) == [
                "audio",
                "image",
                "text",
            ]
            request_id = page.get_by_test_id("request-id").inner_text()
            page.get_by_test_id("truth").select_option("two")
            page.get_by_test_id("send-feedback").click()
            page.get_by_test_id("feedback-status").get_by_text("stored").wait_for()
        finally:
            browser.close()
    row = read_log(server.log).set_index("request_id").loc[request_id]
    assert row["true_label"] == "two" and bool(row["has_image"] and row["has_audio"] and row["has_text"])


# Last: it leaves the server stopped.
def test_the_log_and_feedback_survive_a_restart(server):
    body = predict(server, audio=True, text="one").json()
    server.restart()
    before = read_log(server.log)
    assert body["request_id"] in set(before["request_id"])
    feedback = httpx.post(
        url(server, "/feedback"), json={"request_id": body["request_id"], "label": "one"}, headers=AUTH
    )
    assert feedback.status_code == 200, feedback.text
    again = predict(server, text="two").json()
    server.current.stop()  # a graceful stop writes what is queued
    after = read_log(server.log).set_index("request_id")
    assert len(after) == len(before) + 1 and again["request_id"] in after.index
    assert after.loc[body["request_id"], "true_label"] == "one"
