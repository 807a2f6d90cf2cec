"""The one training loop: AdamW + one-cycle, early stopping on val, a checkpoint per epoch, a progress bar.

A run killed at any point resumes from its checkpoint and ends bit-identical to an
uninterrupted run, because all the randomness of an epoch is derived from (seed, epoch)
rather than carried over in RNG state.

Under torchrun (`train.world_size` > 1, see `mmfuse.training.distributed`) the same loop runs
on every rank through DistributedDataParallel, each rank on its share of every batch; rank 0
alone writes the checkpoint, and every rank waits for it before the next epoch.

A NaN or infinite loss or gradient stops training at once with NonFiniteError, before the
optimizer applies it: the checkpoint on disk stays the last good epoch's, and a rerun with
a fixed cause (a lower train.lr, clean data) does not resume from it because its params or
data differ. Checking costs one gradient norm per step (`torch.nn.utils.get_total_norm`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from mmfuse.errors import ConfigError, MMFuseError, NonFiniteError
from mmfuse.io import atomic_file
from mmfuse.models.classifier import ModelSpec, MultimodalClassifier, subset_name
from mmfuse.models.data import Split
from mmfuse.models.scoring import subset_scores
from mmfuse.params.train import TrainParams
from mmfuse.training import distributed
from mmfuse.training.checkpoints import load_checkpoint, save_checkpoint
from mmfuse.training.losses import training_loss

CURVE_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_accuracy", "val_subset_loss")
EpochHook = Callable[[int], None]


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffling, modality dropout and dropout masks: a resumed epoch replays exactly."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


class _Objective(torch.nn.Module):
    """The training loss as a module's forward: DistributedDataParallel synchronises the
    gradients of what `forward` computes, and the loss calls several of the model's parts."""

    def __init__(self, model: MultimodalClassifier, params: TrainParams) -> None:
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return training_loss(self.model, batch, self.params)


def _batches(train: Split, params: TrainParams, epoch: int, steps: int) -> list[torch.Tensor]:
    """This rank's sample indices for each step of `epoch`. One process: a permutation drawn from
    the epoch's seed. Several: `DistributedSampler` (seeded by train.seed, set to the epoch) deals
    each rank its share, batch_size / world_size per step, so a step's global batch is batch_size."""
    world = distributed.world_size()
    if world == 1:
        order = torch.randperm(len(train))
        return [order[step * params.batch_size : (step + 1) * params.batch_size] for step in range(steps)]
    sampler = DistributedSampler(
        train, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=params.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    mine, share = torch.tensor(list(sampler)), params.batch_size // world
    return [mine[step * share : (step + 1) * share] for step in range(steps)]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not distributed.is_main(),
    )


def fit(
    spec: ModelSpec,
    params: TrainParams,
    train: Split,
    val: Split,
    checkpoint: Path,
    fingerprint: str,
    name: str,
    unimodal: dict[str, MultimodalClassifier],
    epoch_hook: EpochHook | None,
) -> tuple[MultimodalClassifier, dict[str, Any], list[float]]:
    """The one training loop: AdamW + one-cycle schedule, early stopping on val, a checkpoint per epoch.

    With `unimodal` models given, their encoders are adopted frozen and only the fusion
    part trains, for `head_epochs`. Returns the best model (by mean val loss over all
    modality subsets, so the model is chosen for the any-subset goal, not only for the
    full set), the final state and the wall time of each epoch run in this process.
    """
    torch.manual_seed(params.seed)
    model = MultimodalClassifier(spec)
    if unimodal:
        model.adopt_encoders(unimodal)
    epochs = params.head_epochs if unimodal else params.epochs
    steps = len(train) // params.batch_size  # full batches only: batch-norm needs > 1 sample
    if steps < 1:
        raise ConfigError(f"train.batch_size {params.batch_size} is larger than the {len(train)} training samples.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, total_steps=epochs * steps, pct_start=params.warmup_fraction
    )
    state: dict[str, Any] = {
        "fingerprint": fingerprint,
        "epoch": 0,
        "history": [],
        "best_loss": math.inf,
        "best_epoch": 0,
        "best_model": None,
        "bad_epochs": 0,
    }
    resumed = load_checkpoint(checkpoint, fingerprint)
    if resumed is not None:
        state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    objective: torch.nn.Module = _Objective(model, params)
    if distributed.world_size() > 1:  # a batch may lack a modality: its encoder then has no gradient
        objective = DistributedDataParallel(objective, find_unused_parameters=True)
    epoch_seconds: list[float] = []
    with _progress() as progress:
        task = progress.add_task(name, total=epochs * steps, completed=state["epoch"] * steps, status="")
        while state["epoch"] < epochs and state["bad_epochs"] < params.patience:
            started = time.perf_counter()
            torch.manual_seed((_epoch_seed(params.seed, state["epoch"]) + distributed.rank()) % 2**63)
            model.train()
            total = torch.zeros((), dtype=torch.float64)
            for step, rows in enumerate(_batches(train, params, state["epoch"], steps)):
                loss = objective(train.batch(rows))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                _check_finite(name, state["epoch"] + 1, step + 1, loss, trainable)
                optimizer.step()
                scheduler.step()
                total += loss.detach().double()
                progress.advance(task)
            distributed.broadcast_buffers(model)  # every rank validates rank 0's model: the same decision
            scores = subset_scores(model, val, params.eval_batch_size)["subsets"]
            full = scores[subset_name(spec.modalities)]
            subset_loss = sum(s["loss"] for s in scores.values()) / len(scores)
            state["epoch"] += 1
            state["history"].append(
                dict(
                    zip(
                        CURVE_COLUMNS,
                        (
                            state["epoch"],
                            scheduler.get_last_lr()[0],
                            float(distributed.mean_over_ranks(total)) / steps,
                            full["loss"],
                            full["accuracy"],
                            subset_loss,
                        ),
                    )
                )
            )
            if subset_loss < state["best_loss"]:
                state.update(best_loss=subset_loss, best_epoch=state["epoch"], bad_epochs=0)
                state["best_model"] = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
            state.update(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
            if distributed.is_main():
                save_checkpoint(checkpoint, state)
            distributed.barrier()  # an epoch ends once its checkpoint is on disk, for every rank
            epoch_seconds.append(time.perf_counter() - started)
            progress.update(task, status=f"epoch {state['epoch']}: val acc {full['accuracy']:.1f}%")
            if epoch_hook is not None:
                epoch_hook(state["epoch"])
    if state["best_model"] is None:
        raise MMFuseError(f"{name}: the validation loss was never finite (training diverged); lower train.lr.")
    model.load_state_dict(state["best_model"])
    return model.eval(), state, epoch_seconds


def _check_finite(name: str, epoch: int, step: int, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
    """Stop before a NaN or infinite loss or gradient reaches the weights."""
    where = None
    if not torch.isfinite(loss):
        where = "loss"
    elif not torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])):
        where = "gradient"
    if where is not None:
        raise NonFiniteError(
            f"{name}: the {where} became non-finite at epoch {epoch}, step {step}; training stopped and the "
            "checkpoint of the last finished epoch is kept. Lower train.lr (or train.warmup_fraction), or look "
            "for NaN/inf in the processed data.",
            where,
        )


def write_curve(path: Path, history: list[dict[str, float]]) -> None:
    """The learning curve as a DVC plot (CSV, one row per epoch)."""
    with atomic_file(path) as handle:
        handle.write(",".join(CURVE_COLUMNS) + "\n")
        for row in history:
            handle.write(
                ",".join(repr(row[c]) if isinstance(row[c], float) else str(row[c]) for c in CURVE_COLUMNS) + "\n"
            )
