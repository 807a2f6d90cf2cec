"""Stage 4, train: the dedicated subset baselines and the fusion model, with one training loop.

Staged by default: the three unimodal models train first, then the pairs and the fusion
model adopt their encoders, frozen, and train only their fusion part. Under conditional
independence of the modalities given the label (avdigits pairs them at random within a
class) a product of well-trained unimodal experts is near Bayes-optimal, and staging
removes modality imbalance by construction (see benchmarks/results/modality_imbalance.json).

Deterministic (seeded, deterministic kernels, fixed thread count, per-epoch seeds), so the
same params and data give byte-identical artifacts. A checkpoint is written after every
epoch (model, optimizer, scheduler, early-stopping state, learning curve); a run killed at
any point resumes from it and ends bit-identical to an uninterrupted run, because all the
randomness of an epoch is derived from (seed, epoch) rather than carried over in RNG state.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn import functional as F

from mmfuse.errors import ConfigError, MMFuseError
from mmfuse.io import atomic_file, write_json
from mmfuse.models.artifact import WEIGHTS, count_parameters, load_model, save_artifact
from mmfuse.models.augment import augment_audio
from mmfuse.models.classifier import ModelSpec, MultimodalClassifier, subset_name
from mmfuse.models.data import Split, load_meta, load_split, sample_shapes, split_path, vocab_size
from mmfuse.models.params import FUSIONS, MODALITIES, TrainParams
from mmfuse.models.scoring import subset_scores

__all__ = ["train_model", "run_training", "load_model", "training_jobs", "unimodal_params", "metrics_path", "PARTS"]

CHECKPOINT = "checkpoint.pt"
CURVE_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_accuracy", "val_subset_loss")
EpochHook = Callable[[int], None]
PARTS = ("unimodal", "fusion")
# What only the multi-modality models read. The unimodal stage is declared in dvc.yaml
# without these knobs and its models are trained with them at their defaults, so a fusion
# experiment (`dvc exp run -S train.fusion=gated`) reuses the unimodal models untouched
# instead of retraining them to identical weights.
FUSION_KNOBS = ("fusion", "modality_dropout", "aux_weight", "pretrained_encoders", "head_epochs")
FUSION_ARCH_KNOBS = ("fusion_hidden", "lmf_rank")


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count (float sums depend on the split of work), restored after."""
    previous_threads, previous_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # NaN-filling every fresh buffer (a debugging aid of deterministic mode) costs ~15 % of a
    # step on CPU and changes no result: every kernel used here writes its whole output.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffling, modality dropout and dropout masks: a resumed epoch replays exactly."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


def drop_modalities(present: torch.Tensor, p: float) -> torch.Tensor:
    """Modality dropout: hide each present modality with probability p, always keeping at least one.

    Training on random subsets is what lets one model answer for any subset at inference.
    """
    keep = present & (torch.rand(present.shape) >= p)
    empty = ~keep.any(dim=1, keepdim=True)
    choice = torch.rand(present.shape).masked_fill(~present, -1.0).argmax(dim=1)
    fallback = F.one_hot(choice, present.shape[1]).bool() & present
    return torch.where(empty, fallback, keep)


def training_loss(model: MultimodalClassifier, batch: dict[str, torch.Tensor], params: TrainParams) -> torch.Tensor:
    """Fused cross-entropy under modality dropout, plus one unimodal auxiliary loss per modality.

    The auxiliary losses (one linear head per encoder, on every sample carrying that
    modality, dropped or not, each at full weight) give every encoder the gradient it would
    get in a unimodal model. Without them the fused loss stops teaching a modality once the
    others already get a sample right, and the slowest learner ends up under-trained (the
    imbalance of G-Blend / OGM-GE): with a mean instead of a sum, and only on kept rows,
    the fused model's audio-only accuracy trailed the dedicated audio model by 4 points.
    """
    if "audio" in model.spec.modalities:
        batch = {**batch, "audio": augment_audio(batch["audio"], params.augment)}
    present = model.presence(batch)
    labels = batch["label"]
    multimodal = present.shape[1] > 1
    mask = drop_modalities(present, params.modality_dropout) if multimodal else present
    logits, aux = model.fuse(model.encode(batch, present), mask)
    loss = F.cross_entropy(logits, labels, label_smoothing=params.label_smoothing)
    if multimodal and params.aux_weight > 0 and not model.frozen:
        for i in range(present.shape[1]):
            rows = present[:, i]
            if bool(rows.any()):
                loss = loss + params.aux_weight * F.cross_entropy(aux[rows, i], labels[rows], label_smoothing=params.label_smoothing)
    return loss


def _fingerprint(spec: ModelSpec, params: TrainParams, processed_dir: Path, sources: list[Path]) -> str:
    """What a checkpoint was made from (params, data, adopted encoders); another run's checkpoint is never resumed."""
    digest = hashlib.sha256()
    digest.update(json.dumps([spec.model_dump(mode="json"), params.model_dump(mode="json")], sort_keys=True).encode())
    for path in [split_path(processed_dir, "train"), split_path(processed_dir, "val"), *sources]:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_file(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this run; unreadable or foreign ones are ignored."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file is not worth a crash: training restarts from scratch
        return None
    return state if state.get("fingerprint") == fingerprint else None


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
    )


def _fit(
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
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=epochs * steps, pct_start=params.warmup_fraction)
    state: dict[str, Any] = {
        "fingerprint": fingerprint, "epoch": 0, "history": [], "best_loss": math.inf,
        "best_epoch": 0, "best_model": None, "bad_epochs": 0,
    }  # fmt: skip
    resumed = _load_checkpoint(checkpoint, fingerprint)
    if resumed is not None:
        state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    epoch_seconds: list[float] = []
    with _progress() as progress:
        task = progress.add_task(name, total=epochs * steps, completed=state["epoch"] * steps, status="")
        while state["epoch"] < epochs and state["bad_epochs"] < params.patience:
            started = time.perf_counter()
            torch.manual_seed(_epoch_seed(params.seed, state["epoch"]))
            model.train()
            order = torch.randperm(len(train))
            total = torch.zeros((), dtype=torch.float64)
            for step in range(steps):
                loss = training_loss(model, train.batch(order[step * params.batch_size : (step + 1) * params.batch_size]), params)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.detach().double()
                progress.advance(task)
            scores = subset_scores(model, val, params.eval_batch_size)["subsets"]
            full = scores[subset_name(spec.modalities)]
            subset_loss = sum(s["loss"] for s in scores.values()) / len(scores)
            state["epoch"] += 1
            state["history"].append(
                dict(zip(CURVE_COLUMNS, (state["epoch"], scheduler.get_last_lr()[0], float(total) / steps, full["loss"], full["accuracy"], subset_loss)))
            )
            if subset_loss < state["best_loss"]:
                state.update(best_loss=subset_loss, best_epoch=state["epoch"], bad_epochs=0)
                state["best_model"] = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
            state.update(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
            _save_checkpoint(checkpoint, state)
            epoch_seconds.append(time.perf_counter() - started)
            progress.update(task, status=f"epoch {state['epoch']}: val acc {full['accuracy']:.1f}%")
            if epoch_hook is not None:
                epoch_hook(state["epoch"])
    if state["best_model"] is None:
        raise MMFuseError(f"{name}: the validation loss was never finite (training diverged); lower train.lr.")
    model.load_state_dict(state["best_model"])
    return model.eval(), state, epoch_seconds


def _write_curve(path: Path, history: list[dict[str, float]]) -> None:
    """The learning curve as a DVC plot (CSV, one row per epoch)."""
    with atomic_file(path) as handle:
        handle.write(",".join(CURVE_COLUMNS) + "\n")
        for row in history:
            handle.write(",".join(repr(row[c]) if isinstance(row[c], float) else str(row[c]) for c in CURVE_COLUMNS) + "\n")


def _ordered_modalities(modalities: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ConfigError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)}.")
    return tuple(m for m in MODALITIES if m in modalities)


def _resolve_fusion(fusion: str | None, modalities: tuple[str, ...]) -> str:
    """A single modality has nothing to fuse: `None` gives it a plain linear classifier (the late head of one)."""
    if fusion is None:
        if len(modalities) > 1:
            raise ConfigError(f"a model over {subset_name(modalities)} needs a fusion head, one of {FUSIONS}.")
        return "late"
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion head {fusion!r}; train.fusion must be one of {', '.join(FUSIONS)}.")
    return fusion


def _rounded(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    return {name: round(s["accuracy"], 4) for name, s in scores.items()}


def _recorded_params(params: TrainParams, modalities: tuple[str, ...]) -> dict[str, Any]:
    """The params stored in an artifact's config.json: a unimodal model records only the knobs it reads."""
    if len(modalities) > 1:
        return params.model_dump(mode="json")
    return params.model_dump(mode="json", exclude={**dict.fromkeys(FUSION_KNOBS, True), "arch": set(FUSION_ARCH_KNOBS)})


def train_model(
    processed_dir: Path,
    out_dir: Path,
    params: TrainParams,
    modalities: tuple[str, ...],
    fusion: str | None,
    checkpoint_dir: Path,
    plots_path: Path,
    encoders_from: Mapping[str, Path] | None = None,
    epoch_hook: EpochHook | None = None,
) -> dict[str, Any]:
    """Train one model (unimodal, pair or all three) and write its artifact atomically to `out_dir`.

    `encoders_from` maps each modality to a trained unimodal artifact whose encoder is
    adopted frozen (staged training); without it every part trains jointly from scratch.
    Resumes from `checkpoint_dir` when a checkpoint of the same params, data and adopted
    encoders is there. `epoch_hook(epoch)` runs after each epoch's checkpoint (tests use it
    to simulate a crash). Returns the metrics (val scores per subset and per auxiliary
    head, epochs, timings).
    """
    modalities = _ordered_modalities(tuple(modalities))
    fusion = _resolve_fusion(fusion, modalities)
    processed_dir = Path(processed_dir)
    meta = load_meta(processed_dir)
    columns = [MODALITIES.index(m) for m in modalities]
    train = load_split(processed_dir, "train").with_any(columns)
    val = load_split(processed_dir, "val").with_any(columns)
    spec = ModelSpec(
        modalities=modalities, fusion=fusion, n_classes=len(meta["labels"]),
        shapes={m: sample_shapes(train)[m] for m in modalities}, vocab_size=vocab_size(meta), arch=params.arch,
    )  # fmt: skip
    name = subset_name(modalities) + ("" if len(modalities) == 1 else f" ({fusion})")
    sources = {m: Path(encoders_from[m]) for m in modalities} if encoders_from else {}
    unimodal = {m: load_model(path)[0] for m, path in sources.items()}
    started = time.perf_counter()
    with deterministic(params.threads):
        model, state, epoch_seconds = _fit(
            spec, params, train, val, Path(checkpoint_dir) / CHECKPOINT,
            _fingerprint(spec, params, processed_dir, [path / WEIGHTS for path in sources.values()]),
            name, unimodal, epoch_hook,
        )  # fmt: skip
        scores = subset_scores(model, val, params.eval_batch_size)
    full = scores["subsets"][subset_name(modalities)]
    metrics = {
        "modalities": list(modalities),
        "fusion": fusion,
        "val_accuracy": round(full["accuracy"], 4),
        "val_loss": round(full["loss"], 6),
        "val_subset_accuracy": _rounded(scores["subsets"]),
        "val_aux_accuracy": _rounded(scores["aux"]),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "parameters": count_parameters(model),
    }
    save_artifact(Path(out_dir), model, {"labels": meta["labels"], "preprocessing": meta, "train": _recorded_params(params, modalities)}, metrics)
    _write_curve(Path(plots_path), state["history"])
    seconds = time.perf_counter() - started
    run_epochs = len(epoch_seconds)
    timing = {
        "train_seconds": round(seconds, 3),
        "epoch_seconds": round(sum(epoch_seconds) / run_epochs, 3) if run_epochs else None,
        "samples_per_second": round(run_epochs * len(train) / sum(epoch_seconds), 1) if run_epochs else None,
    }
    return {**metrics, **timing}


def unimodal_params(params: TrainParams) -> TrainParams:
    """`params` with every fusion-only knob at its default: all that a unimodal model depends on."""
    defaults = TrainParams()
    arch = params.arch.model_copy(update={k: getattr(defaults.arch, k) for k in FUSION_ARCH_KNOBS})
    return params.model_copy(update={**{k: getattr(defaults, k) for k in FUSION_KNOBS}, "arch": arch})


def training_jobs(params: TrainParams, part: str) -> list[tuple[str, tuple[str, ...], str | None]]:
    """(name, modalities, fusion) of one part's models: the unimodal baselines, or the pairs then the fusion model."""
    if part == "unimodal":
        return [(m, (m,), None) for m in MODALITIES]
    if part == "fusion":
        pairs = [(subset_name(p), p, params.fusion) for p in (("image", "audio"), ("image", "text"), ("audio", "text"))]
        return [*pairs, ("candidate", MODALITIES, params.fusion)]
    raise ConfigError(f"unknown training part {part!r}; expected one of {', '.join(PARTS)}.")


def _adopted_encoders(models_dir: Path, modalities: tuple[str, ...]) -> dict[str, Path]:
    """The unimodal artifacts a staged model adopts; missing ones mean the unimodal part has not run."""
    sources = {m: models_dir / "baselines" / m for m in modalities}
    missing = [str(path) for path in sources.values() if not (path / WEIGHTS).exists()]
    if missing:
        raise MMFuseError(
            f"staged training adopts the unimodal encoders, but {', '.join(missing)} is missing: "
            "run `dvc repro train_unimodal` (or `mmfuse train unimodal`) first, or set train.pretrained_encoders: false."
        )
    return sources


def run_training(
    processed_dir: Path, models_dir: Path, params: TrainParams, plots_dir: Path, metrics_dir: Path, parts: tuple[str, ...] = PARTS
) -> dict[str, Any]:
    """Train `parts` in order: "unimodal" (models_dir/baselines/{image,audio,text}) and "fusion"
    (the three pairs in models_dir/baselines/<pair>/, then the fusion model in models_dir/candidate/).

    Two parts so that DVC can run them as two stages: the unimodal one reads only the knobs
    a unimodal model depends on (`unimodal_params`). With `pretrained_encoders` the fusion
    part adopts the unimodal encoders frozen and trains only its fusion part (staged training).

    Each part writes metrics_dir/train_<part>.json (each model's val metrics and training
    time) and plots_dir/<part>/<name>.csv (learning curves). Checkpoints live in
    models_dir/.checkpoints/<name>/ and are kept after a model finishes, so a rerun after a
    crash skips finished models (rebuilding identical artifacts) and resumes the interrupted
    one. Returns {"candidate": ..., "baselines": {name: ...}} over the parts run.
    """
    models_dir = Path(models_dir)
    merged: dict[str, Any] = {"baselines": {}}
    for part in parts:
        part_params = unimodal_params(params) if part == "unimodal" else params
        results: dict[str, Any] = {}
        for name, modalities, fusion in training_jobs(params, part):
            out_dir = models_dir / "candidate" if name == "candidate" else models_dir / "baselines" / name
            staged = params.pretrained_encoders and len(modalities) > 1
            results[name] = train_model(
                processed_dir, out_dir, part_params, modalities, fusion,
                models_dir / ".checkpoints" / name, Path(plots_dir) / part / f"{name}.csv",
                encoders_from=_adopted_encoders(models_dir, modalities) if staged else None,
            )  # fmt: skip
        candidate = results.pop("candidate", None)
        summary = {"baselines": results, **({"candidate": candidate} if candidate else {})}
        write_json(metrics_path(metrics_dir, part), summary)
        merged["baselines"].update(results)
        merged.update({"candidate": candidate} if candidate else {})
    return merged


def metrics_path(metrics_dir: Path, part: str) -> Path:
    """Where a training part's metrics go (the evaluate stage reads the training times there)."""
    return Path(metrics_dir) / f"train_{part}.json"
