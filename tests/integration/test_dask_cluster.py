"""The preprocess stage on an existing Dask cluster ($MMFUSE_DASK_ADDRESS): a `dask scheduler`
and a `dask worker` started here, as a user would start them on other machines, give the same
bytes as the local cluster; an address nobody answers is named in the error."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client
from test_service_support import free_port
from trees import tree_files

from mmfuse.params.preprocess import PreprocessParams
from mmfuse.preprocess import cluster
from mmfuse.preprocess.build import build_processed
from mmfuse.preprocess.cluster import DASK_ENV, ClusterError

PARAMS = PreprocessParams(chunk_size=5)
DASK = str(Path(sys.executable).parent / "dask")  # the CLI installed with distributed


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A scheduler and one single-threaded worker process on 127.0.0.1; the scheduler's address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    commands = [
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        [DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
    ]
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def _tasks_run(address: str) -> int:
    with Client(address) as client:
        return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


def test_an_external_cluster_gives_the_local_clusters_bytes(scheduler, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv(DASK_ENV, raising=False)
    build_processed(tiny_dataset, tmp_path / "local", PARAMS)
    monkeypatch.setenv(DASK_ENV, scheduler)
    before = _tasks_run(scheduler)
    build_processed(tiny_dataset, tmp_path / "remote", PARAMS)
    records = len(tiny_dataset.read_text().splitlines()) - 1
    shards = len(list((tmp_path / "remote").rglob("*.safetensors")))
    assert (
        _tasks_run(scheduler) - before == -(-records // PARAMS.chunk_size) + shards
    )  # every chunk and shard ran there
    local, remote = tree_files(tmp_path / "local"), tree_files(tmp_path / "remote")
    assert sorted(local) == sorted(remote) and "train/00000.safetensors" in local
    for name, content in local.items():
        assert remote[name] == content, name


def test_an_address_nobody_answers_is_named(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "_CONNECT_TIMEOUT_S", 2)
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv(DASK_ENV, address)
    with pytest.raises(ClusterError, match=f"{DASK_ENV}={address}: no Dask scheduler answers"):
        build_processed(tiny_dataset, tmp_path / "out", PARAMS)
    assert not (tmp_path / "out").exists()


def test_the_local_cluster_takes_no_fixed_port(monkeypatch):
    """Only free ports: a service (or another cluster) on Dask's default 8787 changes nothing."""
    monkeypatch.delenv(DASK_ENV, raising=False)
    with socket.socket() as taken, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(OSError):  # already held by someone else: the same situation
            taken.bind(("127.0.0.1", 8787))
            taken.listen()
        with cluster.dask_client(1) as client:
            assert client.submit(sum, [1, 2]).result() == 3
    assert not [w for w in caught if "already in use" in str(w.message)]
