"""Stage 4's work: the dedicated subset baselines and the fusion model, each trained by the one loop.

Staged by default: the three unimodal models train first, then the pairs and the fusion
model adopt their encoders, frozen, and train only their fusion part. Under conditional
independence of the modalities given the label (avdigits pairs them at random within a
class) a product of well-trained unimodal experts is near Bayes-optimal, and staging
removes modality imbalance by construction (see benchmarks/results/modality_imbalance.json).

Deterministic (seeded, deterministic kernels, fixed thread count, per-epoch seeds), so the
same params and data give byte-identical artifacts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmfuse.errors import ConfigError, MMFuseError
from mmfuse.io import write_json
from mmfuse.modality import MODALITIES
from mmfuse.models.artifact import WEIGHTS, count_parameters, load_model, save_artifact
from mmfuse.models.classifier import ModelSpec, subset_name
from mmfuse.models.data import load_meta, load_split, sample_shapes, vocab_size
from mmfuse.models.determinism import deterministic
from mmfuse.models.scoring import subset_scores
from mmfuse.params.train import FUSIONS, TrainParams
from mmfuse.source import code_digest
from mmfuse.training import distributed
from mmfuse.training.checkpoints import CHECKPOINT, fingerprint
from mmfuse.training.loop import EpochHook, fit, write_curve

PARTS = ("unimodal", "fusion")

# Wall-clock figures of a training run: written apart from the deterministic metrics, to a
# file no stage reads, so that a retrain to identical weights changes no dependency.
TIMINGS = ("train_seconds", "epoch_seconds", "samples_per_second")


# What only the multi-modality models read. The unimodal stage is declared in dvc.yaml
# without these knobs and its models are trained with them at their defaults, so a fusion
# experiment (`dvc exp run -S train.fusion=gated`) reuses the unimodal models untouched
# instead of retraining them to identical weights.
FUSION_KNOBS = ("fusion", "modality_dropout", "aux_weight", "pretrained_encoders", "head_epochs")


FUSION_ARCH_KNOBS = ("fusion_hidden", "lmf_rank")


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
        modalities=modalities,
        fusion=fusion,
        n_classes=len(meta["labels"]),
        shapes={m: sample_shapes(train)[m] for m in modalities},
        vocab_size=vocab_size(meta),
        arch=params.arch,
    )
    name = subset_name(modalities) + ("" if len(modalities) == 1 else f" ({fusion})")
    sources = {m: Path(encoders_from[m]) for m in modalities} if encoders_from else {}
    unimodal = {m: load_model(path)[0] for m, path in sources.items()}
    started = time.perf_counter()
    # Under torchrun the ranks share the cores: train.threads in all, so one rank of two gets half.
    with deterministic(max(1, params.threads // distributed.world_size())):
        model, state, epoch_seconds = fit(
            spec,
            params,
            train,
            val,
            Path(checkpoint_dir) / CHECKPOINT,
            fingerprint(
                spec, params, processed_dir, [path / WEIGHTS for path in sources.values()], code_digest(__name__)
            ),
            name,
            unimodal,
            epoch_hook,
        )
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
    if distributed.is_main():  # under torchrun every rank holds the same model: one writes it
        save_artifact(
            Path(out_dir),
            model,
            {"labels": meta["labels"], "preprocessing": meta, "train": _recorded_params(params, modalities)},
            metrics,
        )
        write_curve(Path(plots_path), state["history"])
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
            "run `dvc repro train_unimodal` first, or set train.pretrained_encoders: false."
        )
    return sources


def train_part(
    part: str, *, processed: Path, models: Path, params: TrainParams, curves: Path, metrics: Path, times: Path
) -> dict[str, Any]:
    """Train one part: "unimodal" (models/baselines/{image,audio,text}) or "fusion" (the three
    pairs in models/baselines/<pair>/, then the fusion model in models/candidate/).

    Two parts so that DVC can run them as two stages: the unimodal one reads only the knobs
    a unimodal model depends on (`unimodal_params`). With `pretrained_encoders` the fusion
    part adopts the unimodal encoders frozen and trains only its fusion part (staged training).

    Writes `metrics` (each model's val metrics: deterministic), `times` (each model's wall
    times: `TIMINGS`) and curves/<name>.csv (learning curves). Checkpoints live in
    models/.checkpoints/<name>/ and are kept after a model finishes until the whole part is
    done, so a rerun after a crash skips the part's finished models (rebuilding identical
    artifacts) and resumes the interrupted one. Then they are removed: a finished part leaves
    nothing to replay, so `dvc repro -f` retrains.
    Returns {"baselines": {name: ...}, "candidate": ...}, each with both its metrics and its times.
    """
    models = Path(models)
    part_params = unimodal_params(params) if part == "unimodal" else params
    results: dict[str, Any] = {}
    for name, modalities, fusion in training_jobs(params, part):
        out_dir = models / "candidate" if name == "candidate" else models / "baselines" / name
        staged = params.pretrained_encoders and len(modalities) > 1
        results[name] = train_model(
            processed,
            out_dir,
            part_params,
            modalities,
            fusion,
            models / ".checkpoints" / name,
            Path(curves) / f"{name}.csv",
            encoders_from=_adopted_encoders(models, modalities) if staged else None,
        )
    summary = _summary(results, lambda key: True)
    if distributed.is_main():
        write_json(Path(metrics), _summary(results, lambda key: key not in TIMINGS))
        write_json(Path(times), _summary(results, lambda key: key in TIMINGS))
        for name, _, _ in training_jobs(params, part):
            shutil.rmtree(models / ".checkpoints" / name, ignore_errors=True)
    return summary


def _summary(results: dict[str, dict[str, Any]], keep: Callable[[str], bool]) -> dict[str, Any]:
    """{"baselines": {name: ...}, "candidate": ...} of the `keep` keys of each model's results."""
    kept = {name: {k: v for k, v in entry.items() if keep(k)} for name, entry in results.items()}
    candidate = kept.pop("candidate", None)
    return {"baselines": kept, **({"candidate": candidate} if candidate is not None else {})}


def train_all(*, processed: Path, models: Path, params: TrainParams, curves: Path, metrics: Path) -> dict[str, Any]:
    """Both parts in order, outside DVC (benchmarks, tests), laid out as dvc.yaml lays them out:
    curves/<part>/<name>.csv, metrics/train_<part>.json and metrics/train_<part>_time.json.
    Returns {"baselines": ..., "candidate": ...}."""
    merged: dict[str, Any] = {"baselines": {}}
    for part in PARTS:
        summary = train_part(
            part,
            processed=processed,
            models=models,
            params=params,
            curves=Path(curves) / part,
            metrics=Path(metrics) / f"train_{part}.json",
            times=Path(metrics) / f"train_{part}_time.json",
        )
        merged["baselines"].update(summary["baselines"])
        merged.update({"candidate": summary["candidate"]} if "candidate" in summary else {})
    return merged
