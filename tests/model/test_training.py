"""Training: determinism, crash and resume, the artifact, params errors, and that it learns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmfuse
from mmfuse.errors import ConfigError, MMFuseError, NonFiniteError
from mmfuse.evaluation.subsets import evaluate_subsets, load_models
from mmfuse.modality import MODALITIES
from mmfuse.models.artifact import load_model
from mmfuse.models.data import load_split
from mmfuse.params import load_params
from mmfuse.params.train import TrainParams
from mmfuse.training.checkpoints import CHECKPOINT
from mmfuse.training.jobs import train_all, train_model, train_part

ARTIFACT_FILES = ("model.safetensors", "config.json", "metrics.json")


def _train(
    processed: Path, root: Path, params: TrainParams, fusion: str = "late", modalities=MODALITIES, **kwargs
) -> dict:
    return train_model(
        processed, root / "model", params, modalities, fusion, root / "ckpt", root / "curve.csv", **kwargs
    )


def _files(root: Path) -> dict[str, bytes]:
    return {name: (root / "model" / name).read_bytes() for name in ARTIFACT_FILES} | {
        "curve": (root / "curve.csv").read_bytes()
    }


@pytest.fixture(scope="module")
def reference(
    processed_dir: Path, tiny_params: TrainParams, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """One uninterrupted training of the full model, shared by the determinism and resume tests."""
    root = tmp_path_factory.mktemp("reference")
    return root, _train(processed_dir, root, tiny_params)


def test_same_params_and_data_give_identical_files(processed_dir, tiny_params, reference, tmp_path) -> None:
    _train(processed_dir, tmp_path, tiny_params)
    assert _files(tmp_path) == _files(reference[0])


def test_a_learnable_task_is_learned(reference) -> None:
    metrics = reference[1]
    assert metrics["val_accuracy"] > 80, metrics  # chance is 25 %
    assert min(metrics["val_subset_accuracy"].values()) > 45, metrics
    assert metrics["epochs_run"] == 4


class _Crash(Exception):
    pass


def _crash_after(epoch: int):
    def hook(done: int) -> None:
        if done == epoch:
            raise _Crash

    return hook


def test_resume_after_a_crash_ends_identical(processed_dir, tiny_params, reference, tmp_path) -> None:
    with pytest.raises(_Crash):
        _train(processed_dir, tmp_path, tiny_params, epoch_hook=_crash_after(2))
    assert not (tmp_path / "model").exists()  # nothing half-written
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2
    metrics = _train(processed_dir, tmp_path, tiny_params)
    assert _files(tmp_path) == _files(reference[0])
    assert metrics["val_accuracy"] == reference[1]["val_accuracy"]


def test_resume_after_sigkill_ends_identical(processed_dir, tiny_params, reference, tmp_path) -> None:
    """A real `kill -9` right after the first epoch's checkpoint, then a plain rerun."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from mmfuse.params.train import TrainParams
        from mmfuse.training.jobs import train_model
        root = Path({str(tmp_path)!r})
        params = TrainParams.model_validate_json({tiny_params.model_dump_json()!r})
        train_model(Path({str(processed_dir)!r}), root / "model", params, ("image", "audio", "text"), "late",
                    root / "ckpt", root / "curve.csv", epoch_hook=lambda e: os.kill(os.getpid(), signal.SIGKILL))
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)["epoch"] == 1
    _train(processed_dir, tmp_path, tiny_params)
    assert _files(tmp_path) == _files(reference[0])


def test_a_checkpoint_of_other_params_is_not_resumed(processed_dir, tiny_params, tmp_path) -> None:
    with pytest.raises(_Crash):
        _train(processed_dir, tmp_path, tiny_params, modalities=("image", "text"), epoch_hook=_crash_after(3))
    changed = tiny_params.model_copy(update={"epochs": 2})
    metrics = _train(processed_dir, tmp_path, changed, modalities=("image", "text"))
    assert metrics["epochs_run"] == 2


def test_a_checkpoint_of_other_code_is_not_resumed(processed_dir, tiny_params, tmp_path) -> None:
    """Killed mid-run, then the training loop's per-epoch seed changes: the rerun must start
    over under the new code, not finish the old code's run (the same rerun without the
    change resumes: test_resume_after_sigkill_ends_identical)."""
    src = tmp_path / "src"
    shutil.copytree(Path(mmfuse.__file__).parent, src / "mmfuse", ignore=shutil.ignore_patterns("__pycache__"))

    def train(root: Path, kill: bool = False) -> subprocess.CompletedProcess[str]:
        hook = "lambda e: os.kill(os.getpid(), signal.SIGKILL)" if kill else "None"
        script = textwrap.dedent(
            f"""
            import os, signal
            from pathlib import Path
            from mmfuse.params.train import TrainParams
            from mmfuse.training.jobs import train_model
            root = Path({str(root)!r})
            params = TrainParams.model_validate_json({tiny_params.model_dump_json()!r})
            train_model(Path({str(processed_dir)!r}), root / "model", params, ("image", "audio", "text"), "late",
                        root / "ckpt", root / "curve.csv", epoch_hook={hook})
            """
        )
        env = {**os.environ, "PYTHONPATH": str(src)}
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)

    assert train(tmp_path / "run", kill=True).returncode == -9
    loop = src / "mmfuse" / "training" / "loop.py"
    seeding = "return (seed * 1_000_003"
    assert seeding in loop.read_text()
    loop.write_text(loop.read_text().replace(seeding, "return (7 + seed * 1_000_003"))
    for root in (tmp_path / "run", tmp_path / "fresh"):
        done = train(root)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "fresh" / "model" / "model.safetensors"
    ).read_bytes()


def test_a_nan_stops_training_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    processed_dir, tiny_params, reference, tmp_path
) -> None:
    with pytest.raises(_Crash):
        _train(processed_dir, tmp_path, tiny_params, epoch_hook=_crash_after(2))
    poisoned = tmp_path / "poisoned"
    shutil.copytree(processed_dir, poisoned)
    shard = poisoned / "train" / "00000.safetensors"
    tensors = load_file(str(shard))
    tensors["image"][17, 0, 3, 3] = float("nan")
    save_file(tensors, str(shard))
    with pytest.raises(NonFiniteError, match=r"the loss became non-finite at epoch 1, step \d+") as stopped:
        _train(poisoned, tmp_path, tiny_params)
    assert stopped.value.where == "loss" and "train.lr" in str(stopped.value)
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "model").exists()
    _train(processed_dir, tmp_path, tiny_params)  # the clean data resumes the good checkpoint
    assert _files(tmp_path) == _files(reference[0])


def test_artifact_round_trip_without_pickle(processed_dir, reference) -> None:
    root = reference[0] / "model"
    weights = load_file(str(root / "model.safetensors"))  # safetensors: no pickle involved
    model, config = load_model(root)
    assert not model.training
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert config["labels"] == [f"class{i}" for i in range(4)]
    assert config["preprocessing"]["params"] == {"note": "synthetic"}
    assert config["model"]["fusion"] == "late" and config["model"]["modalities"] == list(MODALITIES)
    assert json.loads((root / "metrics.json").read_text())["val_accuracy"] == reference[1]["val_accuracy"]
    test = load_split(processed_dir, "test")
    with torch.no_grad():
        logits = model(test.batch(torch.arange(3)))
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


def test_unknown_fusion_is_a_clear_config_error(processed_dir, tiny_params, tmp_path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text("train:\n  fusion: attention\n")
    with pytest.raises(ConfigError, match="train.fusion"):
        load_params(params_file)
    params_file.write_text("train:\n  arch:\n    embed_dims: 8\n")
    with pytest.raises(ConfigError, match="embed_dims"):
        load_params(params_file)
    with pytest.raises(ConfigError, match="unknown fusion head 'attention'"):
        _train(processed_dir, tmp_path, tiny_params, fusion="attention")
    with pytest.raises(ConfigError, match="needs a fusion head"):
        _train(processed_dir, tmp_path, tiny_params, fusion=None)
    with pytest.raises(ConfigError, match="modalities"):
        _train(processed_dir, tmp_path, tiny_params, modalities=("video",))


def test_the_fusion_part_asks_for_the_unimodal_models_first(processed_dir, tiny_params, tmp_path) -> None:
    with pytest.raises(MMFuseError, match="dvc repro train_unimodal"):
        train_part(
            "fusion",
            processed=processed_dir,
            models=tmp_path / "models",
            params=tiny_params,
            curves=tmp_path / "plots" / "fusion",
            metrics=tmp_path / "metrics" / "train_fusion.json",
            times=tmp_path / "metrics" / "train_fusion_time.json",
        )
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "models" / "baselines").exists()


def test_run_training_then_evaluate_subsets(processed_dir, tiny_params, tmp_path) -> None:
    params = tiny_params.model_copy(update={"epochs": 2, "fusion": "gated"})
    summary = train_all(
        processed=processed_dir,
        models=tmp_path / "models",
        params=params,
        curves=tmp_path / "plots",
        metrics=tmp_path / "metrics",
    )
    parts = {"unimodal": ["image", "audio", "text"], "fusion": ["image+audio", "image+text", "audio+text"]}
    assert sorted(summary["baselines"]) == sorted(parts["unimodal"] + parts["fusion"])
    for part, names in parts.items():
        assert sorted(json.loads((tmp_path / "metrics" / f"train_{part}.json").read_text())["baselines"]) == sorted(
            names
        )
        for name in names:
            assert all((tmp_path / "models" / "baselines" / name / f).exists() for f in ARTIFACT_FILES)
            assert (
                (tmp_path / "plots" / part / f"{name}.csv")
                .read_text()
                .startswith("epoch,lr,train_loss,val_loss,val_accuracy")
            )
    assert json.loads((tmp_path / "metrics" / "train_fusion.json").read_text())["candidate"]["fusion"] == "gated"
    assert "candidate" not in json.loads((tmp_path / "metrics" / "train_unimodal.json").read_text())
    # wall times apart from the deterministic metrics, which a retrain to the same weights leaves byte-identical
    fusion_metrics = (tmp_path / "metrics" / "train_fusion.json").read_bytes()
    times = json.loads((tmp_path / "metrics" / "train_fusion_time.json").read_text())
    assert times["candidate"]["train_seconds"] > 0 and "val_accuracy" not in times["candidate"]
    assert "train_seconds" not in json.loads(fusion_metrics)["candidate"]
    # staged training: the pairs and the fusion model carry the unimodal encoders, untouched
    fused, _ = load_model(tmp_path / "models" / "candidate")
    for m in MODALITIES:
        unimodal, _ = load_model(tmp_path / "models" / "baselines" / m)
        for key, value in unimodal.encoders[m].state_dict().items():
            assert torch.equal(fused.encoders[m].state_dict()[key], value), (m, key)
    assert not list((tmp_path / "models" / ".checkpoints").iterdir())  # a finished part leaves nothing to replay
    before = (tmp_path / "models" / "candidate" / "model.safetensors").read_bytes()
    train_all(
        processed=processed_dir,
        models=tmp_path / "models",
        params=params,
        curves=tmp_path / "plots",
        metrics=tmp_path / "metrics",
    )
    assert (
        tmp_path / "models" / "candidate" / "model.safetensors"
    ).read_bytes() == before  # retrained from scratch (`dvc repro -f`), to the same bytes
    assert (tmp_path / "metrics" / "train_fusion.json").read_bytes() == fusion_metrics
    # a fusion experiment reuses the unimodal stage: fusion knobs reach neither its weights nor its configs
    other = tmp_path / "other"
    fusion_only = params.model_copy(update={"fusion": "concat", "head_epochs": 1, "modality_dropout": 0.0})
    train_part(
        "unimodal",
        processed=processed_dir,
        models=other / "models",
        params=fusion_only,
        curves=other / "plots" / "unimodal",
        metrics=other / "metrics" / "train_unimodal.json",
        times=other / "metrics" / "train_unimodal_time.json",
    )
    for m in MODALITIES:
        for name in ARTIFACT_FILES:
            assert (other / "models" / "baselines" / m / name).read_bytes() == (
                tmp_path / "models" / "baselines" / m / name
            ).read_bytes()
        assert "fusion" not in load_model(other / "models" / "baselines" / m)[1]["train"]

    report = evaluate_subsets(load_models(tmp_path / "models")[0], load_split(processed_dir, "test"))
    assert set(report["subsets"]) == {
        "image",
        "audio",
        "text",
        "image+audio",
        "image+text",
        "audio+text",
        "image+audio+text",
    }
    assert report["fused_accuracy"] == report["subsets"]["image+audio+text"]["fused"]
    gaps = [v["gap_points"] for k, v in report["subsets"].items() if k != "image+audio+text"]
    assert report["worst_subset_gap_points"] == max(gaps)
    best_single = max(report["subsets"][m]["dedicated"] for m in MODALITIES)
    assert report["fusion_gain_points"] == pytest.approx(report["fused_accuracy"] - best_single, abs=1e-3)
