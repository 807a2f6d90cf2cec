"""The DVC remote on S3: a real S3 API (moto's server) on 127.0.0.1, a push from the project, a
fresh clone that pulls, and everything byte-identical and in sync (`dvc status -c`)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from project_tools import run
from test_service_support import free_port
from trees import tree_digest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TRACKED = ("data/raw", "data/processed", "models/candidate")


@pytest.fixture
def s3(tmp_path, monkeypatch) -> Iterator[str]:
    """moto's S3 server on a free port (in memory; gone with the process); its endpoint URL."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 (lives as long as the server)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError((tmp_path / "moto.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    client.create_bucket(Bucket="mmfuse")
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait()
        log.close()


@pytest.mark.slow
def test_push_to_s3_then_a_fresh_clone_pulls_identical_outputs(project_copy, tmp_path, s3):
    run(["dvc", "remote", "add", "-f", "-d", "storage", "s3://mmfuse/cache"], project_copy)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3], project_copy)
    run(["git", "add", ".dvc/config"], project_copy)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "S3 remote"], project_copy)
    pushed = run(["dvc", "push"], project_copy).stdout
    assert "pushed" in pushed
    objects = boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="mmfuse", Prefix="cache/")
    assert objects["KeyCount"] > 0

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project_copy), str(clone)], tmp_path)
    assert not (clone / "data" / "raw").exists()
    run(["dvc", "pull"], clone)
    for path in TRACKED:
        assert tree_digest(clone / path) == tree_digest(project_copy / path), path
    status = run(["dvc", "status", "--cloud", "--json"], clone).stdout
    assert status.strip() in ("{}", ""), status  # the clone and the remote agree
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
