"""A local Prefect server and the two scheduled deployments: nightly training, hourly monitoring.

`mmfuse orchestrate` is the one command that keeps the project running unattended: it
reuses a Prefect API that already answers, or starts `prefect server start` (SQLite,
PREFECT_HOME under the project, analytics off), then serves both deployments in this
process until stopped. With `--pool NAME` the deployments are registered on a process work
pool instead, and runs go to whichever `prefect worker start --pool NAME` polls for them, on
any machine with the project and the server's PREFECT_API_URL: several workers share them.
The deployments name the flows by module path
(`mmfuse.orchestration.training.training_flow`), so they run from an installed package
as well as from a source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import httpx

from mmfuse.errors import MMFuseError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from mmfuse.params import Params

PREFECT_DIR = ".prefect"
MONITORING_DEPLOYMENT = "hourly"
NO_TELEMETRY = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


def api_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at `url` (ending in /api)."""
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def server_env(project: Path, port: int) -> dict[str, str]:
    """The server's environment: its state under the project, SQLite, no analytics."""
    home = Path(project).resolve() / PREFECT_DIR
    return {
        **os.environ,
        **NO_TELEMETRY,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_ENABLED": "true",
    }


class PrefectServer(NamedTuple):
    url: str  # the API, for PREFECT_API_URL
    started: bool  # by this process (stopped when the block ends), not an existing one reused


@contextmanager
def prefect_server(project: Path, port: int, startup_timeout: float = 120.0) -> Iterator[PrefectServer]:
    """Reuse the API at $PREFECT_API_URL if it answers, else run `prefect server start`.

    A server started here is stopped (terminate, then kill) when the block ends.
    """
    existing = os.environ.get("PREFECT_API_URL")
    if existing and api_answers(existing):
        yield PrefectServer(existing, started=False)
        return
    url = f"http://127.0.0.1:{port}/api"
    home = Path(project).resolve() / PREFECT_DIR
    home.mkdir(parents=True, exist_ok=True)
    prefect = [sys.executable, "-m", "prefect"]
    with open(home / "server.log", "ab") as log:
        process = subprocess.Popen(
            [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env(project, port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not api_answers(url):
            if process.poll() is not None:
                raise MMFuseError(f"prefect server exited with {process.returncode}; see {home / 'server.log'}.")
            if time.monotonic() > deadline:
                raise MMFuseError(
                    f"prefect server did not answer at {url} within {startup_timeout:.0f} s; see {home / 'server.log'}."
                )
            time.sleep(0.5)
        yield PrefectServer(url, started=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def build_deployments(project: Path, params: "Params") -> list["RunnerDeployment"]:
    """The training deployment (cron `monitor.training_cron`) and the monitoring one (`monitor.monitoring_cron`)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from mmfuse.orchestration.monitoring import monitoring_flow
    from mmfuse.orchestration.training import training_flow

    root = Path(project).resolve()
    monitor = params.monitor
    return [
        training_flow.to_deployment(
            name=monitor.training_deployment,
            schedules=[Cron(monitor.training_cron, timezone=monitor.timezone)],
            parameters={"project": str(root)},
            tags=["mmfuse", "training"],
            description="the DVC pipeline: nightly, and when monitoring sees drift",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        monitoring_flow.to_deployment(
            name=MONITORING_DEPLOYMENT,
            schedules=[Cron(monitor.monitoring_cron, timezone=monitor.timezone)],
            parameters={"project": str(root)},
            tags=["mmfuse", "monitoring"],
            description="validate and drift-check the logged traffic; trigger training on drift",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]


def register_on_pool(project: Path, params: "Params", pool: str) -> list[str]:
    """Create the process work pool `pool` if it does not exist, register both deployments on it
    (schedules included) and return their ids. The server is the one PREFECT_API_URL names."""
    from prefect import deploy
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool, type=ProcessWorker.type, base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        except ObjectAlreadyExists:
            pass
    ids = deploy(
        *build_deployments(project, params),
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
    )
    return [str(i) for i in ids]


def orchestrate(project: Path, params: "Params", pool: str | None = None) -> None:
    """Start or reuse the Prefect server; serve both deployments here until stopped or, with `pool`,
    register them on that work pool for `prefect worker start --pool` to run (a server started here
    then keeps running until stopped, so the workers have one to poll)."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ.update(NO_TELEMETRY)
    with prefect_server(project, params.monitor.prefect_port) as server:
        url = server.url
        os.environ["PREFECT_API_URL"] = url  # for the flow-run processes the runner starts
        with temporary_settings(updates={PREFECT_API_URL: url}):
            if pool is None:
                serve(*build_deployments(project, params), pause_on_shutdown=False)
                return
            register_on_pool(project, params, pool)
            print(f"registered on work pool {pool!r} at {url}: run `prefect worker start --pool {pool}`", flush=True)
            while server.started:  # keep the server this process started, until Ctrl-C
                time.sleep(3600)
