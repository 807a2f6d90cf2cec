"""The evaluate stage end to end: raw media -> preprocess -> tiny trained models -> every output, twice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse.evaluation.corruption import CORRUPTIONS
from mmfuse.evaluation.predict import embeddings
from mmfuse.evaluation.scoring import score_artifact
from mmfuse.models.artifact import load_model
from mmfuse.models.data import load_split
from mmfuse.params.evaluate import EvaluateParams
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.train import TrainParams
from mmfuse.preprocess.build import build_processed
from mmfuse.stages.evaluate import run as run_evaluation
from mmfuse.training.jobs import train_all

PARAMS = EvaluateParams(latency_batch=8, latency_repeats=2)
STABLE = (
    "models/trust.safetensors",
    "metrics/evaluate.json",
    "models/calibration.json",
    "plots/confusion.csv",
    "plots/robustness.csv",
    "plots/reliability.csv",
    "plots/subsets.csv",
    "reports/details.json",
    "reports/summary.md",
)
VARYING = ("reports/index.html", "reports/complexity.json")


@pytest.fixture(scope="module")
def project(dataset_factory, tiny_params: TrainParams, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A raw dataset with two speakers, some samples without text and a clean-input test set, preprocessed,
    with all 7 models trained."""
    root = tmp_path_factory.mktemp("evaluate")
    manifest = dataset_factory(root / "raw", {"train": 12, "val": 4, "test": 6, "test_clean": 3}, classes=4)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    take = frame["sample_id"].str.rsplit("-", n=1).str[-1].astype(int)
    frame["speaker"] = np.where(take % 2 == 0, "ann", "ben")
    frame.loc[take % 3 == 2, "text"] = ""
    frame.to_csv(manifest, index=False)
    build_processed(manifest, root / "processed", PreprocessParams(workers=1))
    params = tiny_params.model_copy(update={"batch_size": 16, "epochs": 8})  # enough steps to beat chance clearly
    train_all(
        processed=root / "processed",
        models=root / "models",
        params=params,
        curves=root / "curves",
        metrics=root / "metrics",
    )
    return root, manifest


def _evaluate(project: tuple[Path, Path], out: Path) -> dict:
    root, manifest = project
    return run_evaluation(
        processed=root / "processed",
        raw_manifest=manifest,
        models=root / "models",
        params=PARAMS,
        reports=out / "reports",
        plots=out / "plots",
        metrics=out / "metrics" / "evaluate.json",
        calibration=out / "models" / "calibration.json",
        trust=out / "models" / "trust.safetensors",
    )


@pytest.fixture(scope="module")
def runs(project, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    metrics = _evaluate(project, first)
    _evaluate(project, second)
    return first, second, metrics


def test_writes_every_output_and_the_stable_ones_byte_identical(runs) -> None:
    first, second, _ = runs
    for name in STABLE + VARYING:
        assert (first / name).is_file(), name
    assert {n: (first / n).read_bytes() for n in STABLE} == {n: (second / n).read_bytes() for n in STABLE}
    page = (first / "reports/index.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 5 and "http" not in page


def test_metrics_cover_models_subsets_robustness_speakers_and_calibration(runs) -> None:
    first, _, metrics = runs
    assert json.loads((first / "metrics/evaluate.json").read_text()) == metrics
    for key in (
        "fused_accuracy",
        "fusion_gain_points",
        "worst_subset_gap_points",
        "macro_f1",
        "ece_before",
        "ece_after",
    ):
        assert isinstance(metrics[key], float), key
    assert metrics["fused_accuracy"] == metrics["models"]["fused"]["accuracy"] > 50  # 4 classes: chance is 25 %
    assert len(metrics["subsets"]) == 7
    assert set(metrics["models"]) == {
        "fused",
        "late_fusion",
        "image",
        "audio",
        "text",
        "image+audio",
        "image+text",
        "audio+text",
    }
    assert metrics["models"]["text"]["count"] == 16  # a third of the 24 test samples have no text
    assert set(metrics["robustness"]) == {c.name for c in CORRUPTIONS}
    assert set(metrics["robustness"]["audio_snr"]) == {
        "fused",
        "set_aside",
        "weighted",
        "masked",
        "late_fusion",
        "audio",
    }
    assert metrics["robustness"]["text_typos"]["late_fusion"]["effective"] == 0.0
    assert set(metrics["speakers"]) == {"ann", "ben"}
    assert metrics["complexity"]["fused"]["parameters"] > metrics["complexity"]["image"]["parameters"]
    calibration = json.loads((first / "models/calibration.json").read_text())
    assert set(calibration) == {"temperature", "ece_before", "ece_after", "weights_sha256"}
    assert calibration["temperature"] > 0 and calibration["ece_after"] == metrics["ece_after"]


def test_clean_inputs_are_reported_apart_from_the_headline(runs) -> None:
    first, _, metrics = runs
    clean = metrics["clean_input"]
    assert clean["count"] == 12 and len(clean["subsets"]) == 7  # 3 per class; the headline keeps its 24
    assert metrics["clean_input_fused_accuracy"] == clean["fused_accuracy"]
    assert set(clean["served"]["accuracy"]) == {"set_aside", "weighted"}
    assert metrics["clean_input_robust_accuracy"] == clean["served"]["accuracy"][PARAMS.trust.method]
    assert 0.0 <= clean["served"]["set_aside"]["all"] <= 1.0
    assert "clean-input fused %" in (first / "reports/summary.md").read_text()


def test_plot_files_have_the_dvc_layouts(runs) -> None:
    first, _, _ = runs
    with open(first / "plots/confusion.csv") as handle:
        confusion = list(csv.DictReader(handle))
    assert len(confusion) == 24 and set(confusion[0]) == {"actual", "predicted"}
    with open(first / "plots/robustness.csv") as handle:
        curves = list(csv.DictReader(handle))
    assert set(curves[0]) == {"corruption", "modality", "severity", "level", "model", "accuracy"}
    # corruptions x (fused, set_aside, weighted, masked, reference, unimodal) x (clean + 6 levels)
    assert len(curves) == len(CORRUPTIONS) * 6 * 7
    complexity = json.loads((first / "reports/complexity.json").read_text())
    assert complexity["models"]["fused"]["per_batch_ms"] > 0


def test_score_artifact_agrees_with_the_stage(project, runs) -> None:
    root, _ = project
    first, _, metrics = runs
    temperature = json.loads((first / "models/calibration.json").read_text())["temperature"]
    scores = score_artifact(root / "models" / "candidate", root / "processed", temperature=temperature, params=PARAMS)
    assert scores["accuracy"] == metrics["fused_accuracy"]
    assert scores["subsets"] == {name: s["fused"] for name, s in metrics["subsets"].items()}
    assert scores["ece"] == metrics["ece_after"]
    baseline = score_artifact(root / "models" / "baselines" / "audio", root / "processed")
    assert set(baseline["subsets"]) == {"audio"}


def test_re_encoding_one_modality_matches_a_full_forward(project) -> None:
    """The robustness shortcut (reuse the clean embeddings of the untouched modalities) is exact."""
    root, _ = project
    model, _ = load_model(root / "models" / "candidate")
    tensors = load_split(root / "processed", "test").tensors
    noisy = {
        **tensors,
        "audio": tensors["audio"] + torch.randn(tensors["audio"].shape, generator=torch.Generator().manual_seed(0)),
    }
    present = model.presence(tensors)
    only = torch.zeros_like(present)
    only[:, 1] = present[:, 1]
    with torch.inference_mode():
        emb = embeddings(model, tensors, present, 7)  # batches of 7: the batching must not matter either
        emb[:, 1] = embeddings(model, noisy, only, 7)[:, 1]
        assert torch.allclose(model.fuse(emb, present)[0], model(noisy), atol=1e-5)


def test_the_served_method_is_judged_against_trusting_and_masking(runs) -> None:
    """The served trust method beside trusting every input and masking the corrupted modality."""
    first, _, metrics = runs
    details = json.loads((first / "reports/details.json").read_text())
    method = metrics["trust_method"]
    assert method == PARAMS.trust.method
    for curve in details["robustness"].values():
        masked = curve["accuracy"]["masked"]
        assert len(set(masked)) == 1  # masking ignores the corruption: flat
        assert curve["accuracy"][method][0] == metrics["robust_accuracy"]
    for name in ("set_aside", "weighted"):
        worst = max(
            max(c["accuracy"]["masked"][s], c["accuracy"]["fused"][s]) - c["accuracy"][name][s]
            for c in details["robustness"].values()
            for s in range(1, len(c["levels"]))
        )
        assert details["trust"]["corruption_regret_points"][name]["all"] == round(worst, 4)
    assert metrics["corruption_regret_points"] == details["trust"]["corruption_regret_points"][method]["all"]
    assert metrics["corruption_regret_points"] == max(
        metrics["corruption_regret_seen_points"], metrics["corruption_regret_unseen_points"]
    )
    assert 0.0 <= metrics["false_setaside_rate"] <= 1.0
    assert metrics["trust"]["threshold"] == 1 - PARAMS.trust.false_alarm
