"""Monitoring against real Prefect: the flow triggers the real training deployment once per
drifted window; the deployments register with their schedules on a real `prefect server start`.
Also the drift reference and the traffic simulator against the in-process service.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from conftest_flows import prefect_server  # noqa: F401 (session fixture)
from test_service_support import LABELS, build_artifact, free_port, running

from mmfuse.inference import registry
from mmfuse.inference.log import CaptureRecord, InferenceLog, read_log
from mmfuse.monitoring.check import TriggerFailed, trigger_training
from mmfuse.monitoring.reference import REFERENCE_COLUMNS, build_reference, read_reference
from mmfuse.monitoring.traffic import simulate_traffic
from mmfuse.orchestration.alerts import save_webhook
from mmfuse.orchestration.monitoring import monitoring_flow
from mmfuse.orchestration.server import build_deployments
from mmfuse.orchestration.server import prefect_server as local_server
from mmfuse.orchestration.training import training_flow
from mmfuse.params import Params
from mmfuse.params.monitor import MonitorParams

ROOT = Path(__file__).resolve().parents[2]
# The synthetic reference and traffic of the unit tests (one implementation for both levels).
_spec = importlib.util.spec_from_file_location("monitoring_synthetic", ROOT / "tests" / "unit" / "test_monitoring.py")
synthetic = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = synthetic
_spec.loader.exec_module(synthetic)


MONITOR = {"min_records": 40, "min_feedback": 30, "pca_components": 4, "training_deployment": "drift-test"}


def training_runs(deployment_id) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return len(runs)


def test_monitoring_flow_triggers_the_training_deployment_once_per_drifted_window(prefect_server, tmp_path):  # noqa: F811
    project, log = tmp_path, tmp_path / "log.sqlite"
    (project / "params.yaml").write_text(yaml.safe_dump({"monitor": MONITOR}))
    artifact = build_artifact(project / "artifact")  # a champion carrying the synthetic reference
    synthetic.reference_file(artifact / "reference.parquet")
    registry.promote(artifact, {"source": "monitoring flow test"})
    deployment_id = training_flow.to_deployment(name="drift-test", parameters={"project": str(project)}).apply()
    now = datetime.now(timezone.utc)
    synthetic.log_traffic(log, 100, seed=11, start=now - timedelta(hours=3))
    calm = monitoring_flow(project=str(project), log=str(log))
    assert calm["status"] == "ok" and training_runs(deployment_id) == 0
    synthetic.log_traffic(log, 100, seed=12, start=datetime.now(timezone.utc), shift=1.5)
    drifted = monitoring_flow(project=str(project), log=str(log))
    assert drifted["status"] == "drift" and drifted["triggered"] and training_runs(deployment_id) == 1
    synthetic.log_traffic(log, 100, seed=13, start=datetime.now(timezone.utc), shift=1.5)
    still = monitoring_flow(project=str(project), log=str(log))
    assert still["status"] == "drift" and still["triggered"] is None and training_runs(deployment_id) == 1


def test_an_unregistered_training_deployment_is_a_clear_trigger_failure(prefect_server):  # noqa: F811
    with pytest.raises(TriggerFailed, match=r"mmfuse-training/never-registered is not registered.*mmfuse orchestrate"):
        trigger_training("never-registered")({})


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `prefect server start` (own PREFECT_HOME in tmp, random port), stopped after the module;
    each test points Prefect at it itself, so the other tests keep the session's test server."""
    home = tmp_path_factory.mktemp("prefect")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PREFECT_API_URL", raising=False)
        with local_server(home, free_port(), startup_timeout=180) as server:
            assert server.started
            yield server.url, home


def test_the_cli_check_runs_against_a_real_server_on_traffic_with_and_without_feedback(real_server, tmp_path):
    """`mmfuse monitor` with PREFECT_API_URL set, as a user runs it beside `mmfuse orchestrate`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, _ = real_server
    project, log = tmp_path, tmp_path / "log.sqlite"
    (project / "params.yaml").write_text(yaml.safe_dump({"monitor": MONITOR}))
    artifact = build_artifact(project / "artifact")
    synthetic.reference_file(artifact / "reference.parquet")
    registry.promote(artifact, {"source": "monitoring cli test"})
    now = datetime.now(timezone.utc)
    synthetic.log_traffic(log, 60, seed=21, start=now - timedelta(hours=2), feedback=True)
    synthetic.log_traffic(log, 60, seed=22, start=now - timedelta(hours=1))  # no feedback on these
    assert read_log(log)["true_label"].isna().sum() == 60
    env = {**os.environ, "PREFECT_API_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "mmfuse.cli", "monitor", "--log", str(log)], cwd=project, env=env, capture_output=True
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    summary = json.loads((project / MonitorParams().reports_dir / "latest.json").read_text())
    assert summary["records"] == 120 and summary["accuracy"]["n"] == 60
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        states = [run.state_type.value for run in client.read_flow_runs()]
    assert "COMPLETED" in states and "FAILED" not in states


def test_deployments_register_with_their_schedules_on_a_local_server(real_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, home = real_server
    params = Params(monitor=MonitorParams(training_cron="30 3 * * *", monitoring_cron="15 * * * *"))
    with temporary_settings({PREFECT_API_URL: url}):
        for deployment in build_deployments(ROOT, params):
            deployment.apply()
        with get_client(sync_client=True) as client:
            training = client.read_deployment_by_name("mmfuse-training/nightly")
            monitoring = client.read_deployment_by_name("mmfuse-monitoring/hourly")
    assert [s.schedule.cron for s in training.schedules] == ["30 3 * * *"]
    assert [s.schedule.cron for s in monitoring.schedules] == ["15 * * * *"]
    assert training.parameters == {"project": str(ROOT)} and (home / ".prefect" / "prefect.db").exists()
    # by module path, not a flows/ file relative to the working directory: runs from an installed wheel too
    assert training.entrypoint == "mmfuse.orchestration.training.training_flow"
    assert monitoring.entrypoint == "mmfuse.orchestration.monitoring.monitoring_flow"


def test_two_workers_on_a_work_pool_share_the_runs(real_server, tmp_path):
    """`mmfuse orchestrate --pool` registers the deployments on a process work pool; two
    `prefect worker start --pool` processes (as on two machines) run the runs between them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, _ = real_server
    project, log = tmp_path, tmp_path / "log.sqlite"
    (project / "params.yaml").write_text(yaml.safe_dump({"monitor": {**MONITOR, "training_deployment": "pool-test"}}))
    artifact = build_artifact(project / "artifact")
    synthetic.reference_file(artifact / "reference.parquet")
    registry.promote(artifact, {"source": "work pool test"})
    synthetic.log_traffic(log, 60, seed=3, start=datetime.now(timezone.utc))
    env = {**os.environ, "PREFECT_API_URL": url}
    registered = subprocess.Popen(
        [sys.executable, "-m", "mmfuse.cli", "orchestrate", "--pool", "shared"], cwd=project, env=env
    )
    assert registered.wait(timeout=120) == 0  # the server answered, so nothing is left running
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "shared", "--name", name, "--limit", "1"],
            cwd=project,
            env=env,
            stdout=open(tmp_path / f"{name}.log", "wb"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
        )
        for name in ("worker-a", "worker-b")
    ]
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            runs = [
                run_deployment(
                    "mmfuse-monitoring/hourly", parameters={"project": str(project), "log": str(log)}, timeout=0
                )
                for _ in range(4)
            ]
            ids = [run.id for run in runs]
            deadline = time.monotonic() + 240
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline:
                    states = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
                    if all(run.state and run.state.is_final() for run in states):
                        break
                    time.sleep(2)
        assert [run.state_type.value for run in states] == ["COMPLETED"] * 4
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}
    ours = {str(i) for i in ids}
    # executed where the run's own log went: two workers may both try to submit a run, one is refused
    ran = {name: {i for i in ours if f"/runs/flow-run/{i}" in text} for name, text in logs.items()}
    assert ran["worker-a"] | ran["worker-b"] == ours and not ran["worker-a"] & ran["worker-b"]
    assert ran["worker-a"] and ran["worker-b"], ran  # both took runs (an hourly scheduled one may come too)


def test_the_reference_is_the_log_contract_and_deterministic(tiny_dataset, tmp_path):
    artifact = build_artifact(tmp_path / "artifact")
    first = build_reference(artifact, tiny_dataset, "val", tmp_path / "a" / "reference.parquet")
    second = build_reference(artifact, tiny_dataset, "val", tmp_path / "b" / "reference.parquet")
    assert first.read_bytes() == second.read_bytes()
    frame = read_reference(first)
    assert list(frame.columns) == list(REFERENCE_COLUMNS) and len(frame) == 6  # 3 labels x 2 val samples
    log_columns = set(read_log(tmp_path / "none.sqlite").columns)
    assert set(REFERENCE_COLUMNS) - {"sample_id"} <= log_columns
    assert frame["embedding"].iloc[0].shape == (24,) and frame[["has_image", "has_audio", "has_text"]].all().all()


def test_the_simulator_sends_shifted_requests_and_feedback(tiny_dataset, tmp_path):
    log = tmp_path / "log.sqlite"
    manifest = tiny_dataset.read_text().splitlines()
    named = [
        manifest[0],
        *(",".join([r.split(",")[0], LABELS[int(r.split(",")[1])], *r.split(",")[2:]]) for r in manifest[1:]),
    ]
    tiny_dataset.write_text("\n".join(named) + "\n")  # the tiny champion's label names, so /feedback accepts them
    with running(log) as client:
        counts = simulate_traffic(
            "http://testserver", tiny_dataset, 8, "audio-noise", seed=0, token=None, feedback=1.0, client=client
        )
    assert (
        counts["sent"] == counts["answered"] == 8
        and counts["feedback"] == 8
        and counts["errors"] == {} == counts["feedback_errors"]
    )
    frame = read_log(log)
    assert len(frame) == 8 and frame["true_label"].notna().all()


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def webhook() -> Iterator[list[dict]]:
    """A webhook receiver on 127.0.0.1 and the notification block pointing at it."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.received = []
    save_webhook(f"http://127.0.0.1:{server.server_port}/hook", MonitorParams().notify_block)
    yield _Receiver.received
    server.shutdown()


def test_alerts_and_failed_runs_reach_the_webhook(prefect_server, webhook, tmp_path):  # noqa: F811
    project, log = tmp_path, tmp_path / "log.sqlite"
    (project / "params.yaml").write_text(yaml.safe_dump({"monitor": MONITOR}))
    artifact = build_artifact(project / "artifact")
    synthetic.reference_file(artifact / "reference.parquet")
    registry.promote(artifact, {"source": "alerts test"})
    synthetic.log_traffic(log, 100, seed=21, start=datetime.now(timezone.utc), audio_set_aside=0.4)
    summary = monitoring_flow(project=str(project), log=str(log), trigger=lambda s: "never called")
    assert summary["status"] == "alert"
    assert [m["subject"] for m in webhook] == ["mmfuse monitoring: alert"]
    assert "sensor failing: audio set aside in 40% of its requests" in webhook[0]["text"]
    with pytest.raises(Exception, match="dvc.yaml"):
        training_flow(project=str(tmp_path / "no-project"))
    assert webhook[-1]["subject"].startswith("mmfuse: mmfuse-training run ") and webhook[-1]["subject"].endswith(
        "failed"
    )


def test_a_harvest_that_cannot_run_is_alerted_and_the_check_still_runs(prefect_server, tmp_path):  # noqa: F811
    """Labelled, captured traffic but no ingested dataset to judge it against (say, a serving-only
    machine): the check runs anyway and says why nothing was harvested, even with the alert's
    webhook down."""
    save_webhook(f"http://127.0.0.1:{free_port()}/hook", MonitorParams().notify_block)  # nobody listens there
    project, log = tmp_path, tmp_path / "log.sqlite"
    (project / "params.yaml").write_text(yaml.safe_dump({"monitor": MONITOR}))
    artifact = build_artifact(project / "artifact")
    synthetic.reference_file(artifact / "reference.parquet")
    registry.promote(artifact, {"source": "harvest test"})
    synthetic.log_traffic(log, 60, seed=5, start=datetime.now(timezone.utc))
    captured = InferenceLog(log, 1000, 100, 90, capture_max_bytes=1000)
    try:
        request_id = read_log(log)["request_id"].iloc[0]
        captured.record(CaptureRecord(request_id, datetime.now(timezone.utc).timestamp(), None, None, "seven"))
        assert captured.flush() and captured.feedback(request_id, LABELS[0]) is not None
    finally:
        captured.close()
    summary = monitoring_flow(project=str(project), log=str(log), trigger=lambda s: "never called")
    assert summary["records"] == 60
    assert "no ingested dataset" in summary["harvest"]["error"]
    assert any(alert.startswith("labelled traffic was not harvested") for alert in summary["alerts"])
