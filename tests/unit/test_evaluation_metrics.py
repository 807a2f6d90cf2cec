"""Evaluation maths on synthetic predictors: metrics, ECE, temperature scaling, robustness summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_fixtures import calibrated_logits
from scipy.special import softmax

from mmfuse.evaluation.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
)
from mmfuse.evaluation.metrics import classification_metrics, confusion_rows
from mmfuse.evaluation.predict import accuracy, late_fusion_logits
from mmfuse.evaluation.robustness import effective_robustness, relative_robustness


def test_macro_f1_per_class_and_confusion_on_a_known_case() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    result = classification_metrics(labels, predicted, ["a", "b", "c", "d"])
    # class a: P=1/2 R=1/2; b: P=2/3 R=1; c: P=1 R=1/2; d: never seen nor predicted -> 0
    f1 = [0.5, 0.8, 2 / 3, 0.0]
    assert result["accuracy"] == pytest.approx(100 * 4 / 6, abs=1e-3)
    assert result["macro_f1"] == pytest.approx(100 * sum(f1) / 4, abs=1e-3)
    assert result["per_class"]["b"] == {"precision": pytest.approx(66.6667), "recall": 100.0, "f1": 80.0, "support": 2}
    assert result["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert confusion_rows(labels[:2], predicted[:2], ["a", "b", "c", "d"]) == [("a", "a"), ("a", "b")]


def test_a_calibrated_predictor_has_near_zero_ece_and_an_overconfident_one_does_not() -> None:
    logits, labels = calibrated_logits(100_000, 5, seed=0)
    assert expected_calibration_error(softmax(logits, axis=1), labels, 15) < 0.01
    assert expected_calibration_error(softmax(3 * logits, axis=1), labels, 15) > 0.1


def test_temperature_scaling_undoes_overconfidence_and_lowers_nll_and_ece() -> None:
    val_logits, val_labels = calibrated_logits(20_000, 5, seed=1)
    test_logits, test_labels = calibrated_logits(20_000, 5, seed=2)
    assert fit_temperature(3 * val_logits, val_labels) == pytest.approx(3.0, rel=0.05)
    result = calibrate(3 * val_logits, val_labels, 3 * test_logits, test_labels, 15)
    assert result["nll_after"] < result["nll_before"]
    assert result["ece_after"] < result["ece_before"] / 5
    assert result["nll_after"] == pytest.approx(negative_log_likelihood(test_logits, test_labels), rel=0.01)
    assert (softmax(3 * test_logits / result["temperature"], axis=1).argmax(1) == test_logits.argmax(1)).all()


def test_reliability_bins_cover_every_sample_including_full_confidence() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.75, 0.25], [0.2, 0.8]])
    table = reliability(probs, np.array([0, 1, 0, 1]), 4)
    assert [row["count"] for row in table] == [0, 1, 1, 2]  # 0.5 -> (0.25, 0.5]; 1.0 -> the last bin
    assert table[1]["accuracy"] == 0.0 and table[3]["confidence"] == pytest.approx(0.9)


def test_relative_robustness_is_the_area_under_the_curve_over_unit_severity() -> None:
    assert relative_robustness([80.0] * 7) == pytest.approx(80.0)
    assert relative_robustness([100.0, 75.0, 50.0, 25.0, 0.0]) == pytest.approx(50.0)
    assert relative_robustness([100.0, 0.0, 0.0]) == pytest.approx(25.0)
    assert relative_robustness([42.0]) == 42.0


def test_effective_robustness_is_positive_for_a_flatter_curve_and_zero_for_a_parallel_one() -> None:
    reference = [80.0, 70.0, 60.0, 50.0]
    assert effective_robustness([90.0, 85.0, 80.0, 75.0], reference) > 0
    assert effective_robustness([90.0, 70.0, 50.0, 30.0], reference) < 0
    assert effective_robustness([95.0, 85.0, 75.0, 65.0], reference) == pytest.approx(0.0)
    assert effective_robustness([90.0, 85.0, 80.0, 75.0], reference) == pytest.approx(
        relative_robustness([90.0, 85.0, 80.0, 75.0]) - relative_robustness(reference) - 10.0
    )
    with pytest.raises(ValueError):
        effective_robustness([1.0, 2.0], reference)


def test_late_fusion_averages_log_probabilities_over_present_modalities_only() -> None:
    logits = {"image": torch.tensor([[2.0, 0.0], [2.0, 0.0]]), "audio": torch.tensor([[0.0, 3.0], [0.0, 3.0]])}
    mask = torch.tensor([[True, True, False], [True, False, False]])
    fused = late_fusion_logits(logits, mask, ("image", "audio", "text"))
    expected_first = (torch.log_softmax(logits["image"][0], 0) + torch.log_softmax(logits["audio"][0], 0)) / 2
    assert torch.allclose(fused[0], expected_first)
    assert torch.allclose(fused[1], torch.log_softmax(logits["image"][1], 0))  # audio absent: not averaged in
    assert accuracy(fused, torch.tensor([1, 0]), torch.tensor([True, True])) == 100.0
