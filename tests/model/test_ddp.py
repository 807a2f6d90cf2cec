"""Data-parallel training under torchrun (gloo on CPU): two processes on this machine, two
"nodes" meeting through a c10d rendezvous on 127.0.0.1, a rank killed mid-run, and the
training stage launching its own ranks from train.world_size."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from synthetic_data import N_CLASSES

from mmfuse.params.train import TrainParams
from mmfuse.training.checkpoints import CHECKPOINT

DRIVER = Path(__file__).with_name("ddp_driver.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ARTIFACT_FILES = ("model.safetensors", "config.json", "metrics.json")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drive(processed: Path, root: Path, params: TrainParams, launcher: list[str], *kill: int) -> int:
    command = [*TORCHRUN, *launcher, str(DRIVER), str(processed), str(root), params.model_dump_json(), *map(str, kill)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300).returncode


def _files(root: Path) -> dict[str, bytes]:
    return {name: (root / "model" / name).read_bytes() for name in ARTIFACT_FILES} | {
        "curve": (root / "curve.csv").read_bytes()
    }


@pytest.fixture(scope="module")
def ddp_params(tiny_params: TrainParams) -> TrainParams:
    return tiny_params.model_copy(update={"world_size": 2})


@pytest.fixture(scope="module")
def two_processes(processed_dir: Path, ddp_params: TrainParams, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of two ranks on this machine."""
    root = tmp_path_factory.mktemp("ddp")
    assert _drive(processed_dir, root, ddp_params, ["--standalone", "--nproc-per-node=2"]) == 0
    return root


def test_two_processes_give_the_same_bytes_run_to_run(processed_dir, ddp_params, two_processes, tmp_path):
    assert _drive(processed_dir, tmp_path, ddp_params, ["--standalone", "--nproc-per-node=2"]) == 0
    assert _files(tmp_path) == _files(two_processes)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["train"]["world_size"] == 2


def test_two_nodes_through_a_rendezvous_give_the_two_process_result(processed_dir, ddp_params, two_processes, tmp_path):
    endpoint = f"127.0.0.1:{_free_port()}"
    launcher = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
    args = [str(DRIVER), str(processed_dir), str(tmp_path), ddp_params.model_dump_json()]
    nodes = [subprocess.Popen([*launcher, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0].decode()[-3000:] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert _files(tmp_path) == _files(two_processes)


def test_a_killed_rank_fails_the_run_and_a_rerun_resumes_to_the_same_bytes(
    processed_dir, ddp_params, two_processes, tmp_path
):
    standalone = ["--standalone", "--nproc-per-node=2"]
    assert _drive(processed_dir, tmp_path, ddp_params, standalone, 1, 1) != 0  # rank 1 dies after epoch 1
    assert torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not (tmp_path / "model").exists()
    assert _drive(processed_dir, tmp_path, ddp_params, standalone) == 0
    assert _files(tmp_path) == _files(two_processes)


def test_the_stage_launches_its_ranks_from_world_size(processed_dir, tiny_params, tmp_path):
    """`mmfuse train-unimodal` with train.world_size: 2 starts torchrun itself;
    rank 0 alone writes, and the models learn. How close to one process on real data, over
    seeds: benchmarks/results/ddp.json (this synthetic val set is too small to tell)."""
    accuracy = {}
    for world in (1, 2):
        work = tmp_path / f"world{world}"
        work.mkdir()
        train = json.loads(tiny_params.model_copy(update={"world_size": world}).model_dump_json())
        (work / "params.yaml").write_text(yaml.safe_dump({"train": train}))
        entry = [str(Path(sys.executable).parent / "mmfuse"), "train-unimodal"]  # the CLI, and the stage module
        if world == 1:
            entry = [sys.executable, "-m", "mmfuse.stages.train_unimodal"]
        done = subprocess.run(
            [*entry, "--processed", str(processed_dir)]
            + ["--models", "models", "--curves", "curves", "--metrics", "m.json", "--times", "t.json"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert (done.stdout + done.stderr).count("trained image") == 1  # printed by rank 0 only
        metrics = json.loads((work / "m.json").read_text())["baselines"]
        accuracy[world] = {name: m["val_accuracy"] for name, m in metrics.items()}
        assert not (work / "models" / ".checkpoints" / "image").exists()
    chance = 100 / N_CLASSES
    assert all(a >= 2 * chance for a in accuracy[2].values()), accuracy
    mean = {world: sum(scores.values()) / len(scores) for world, scores in accuracy.items()}
    assert abs(mean[2] - mean[1]) <= 10.0, accuracy  # per-rank batch-norm statistics: close, not equal
