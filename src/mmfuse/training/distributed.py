"""Data-parallel training across processes and machines: DistributedDataParallel, launched by torchrun.

`train.world_size` > 1 makes a training stage start itself again under torchrun (`launch`),
one process (rank) per share of each batch: gloo on CPU, nccl on CUDA. On several machines,
start torchrun yourself on each (`--nnodes`, a c10d rendezvous): the stage sees it was
launched and only joins.

What holds, and why:
- Every rank trains the same model on its share of each global batch (`DistributedSampler`,
  seeded from train.seed and the epoch); the global batch stays train.batch_size, so the
  learning-rate schedule and the number of steps are those of one process.
- Only rank 0 writes (artifacts, curves, metrics, checkpoints); every rank reads the same
  checkpoint when resuming, so a run whose rank was killed resumes like a single process.
- Results are identical run to run for a fixed world size; they differ across world sizes
  because each rank's batch-norm layers see only that rank's share of the batch (SyncBatchNorm
  does not run on CPU). Rank 0's batch-norm statistics are given to every rank after each epoch,
  so all ranks validate the very same model and take the same early-stopping decision.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun gives each process it starts


def launched() -> bool:
    """This process was started by torchrun (or another launcher that sets RANK and WORLD_SIZE)."""
    return all(name in os.environ for name in _LAUNCH_ENV)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """The process that writes: rank 0, or the only one."""
    return rank() == 0


@contextmanager
def process_group() -> Iterator[None]:
    """Join the process group torchrun describes in the environment, for the duration; nothing
    when not launched (one process)."""
    if not launched() or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def launch(world: int, target: list[str]) -> int:
    """Run `python TARGET` (a script or `-m module`, with its arguments) as `world` ranks on this
    machine under torchrun; its exit code. `--standalone` rendezvous on a free local port, so two
    launches never meet by accident."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", *target]
    return subprocess.run(command, check=False).returncode


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (itself with one process)."""
    if not dist.is_initialized():
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()
