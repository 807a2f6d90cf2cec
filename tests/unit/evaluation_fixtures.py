"""Synthetic predictors and report inputs for the evaluation unit tests (no trained model needed)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import numpy as np
from scipy.special import softmax

from mmfuse.evaluation.calibration import calibrate
from mmfuse.evaluation.metrics import classification_metrics
from mmfuse.evaluation.robustness import effective_robustness, relative_robustness


def calibrated_logits(count: int, classes: int, seed: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): a perfectly calibrated predictor by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(count, classes))
    probs = softmax(logits, axis=1)
    labels = (probs.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return logits, labels


def synthetic_results(labels_count: int = 3, with_speakers: bool = True) -> dict[str, Any]:
    """A results dict shaped like run_evaluation's, built by the real metric functions from synthetic data."""
    names = [str(i) for i in range(labels_count)]
    val_logits, val_labels = calibrated_logits(600, labels_count, seed=1)
    test_logits, test_labels = calibrated_logits(600, labels_count, seed=2)
    predicted = test_logits.argmax(axis=1)
    model = {"modalities": ["image", "audio", "text"], **classification_metrics(test_labels, predicted, names)}
    unimodal = {"modalities": ["image"], **classification_metrics(test_labels, np.roll(predicted, 1), names)}
    fused_curve, reference = [90.0, 85.0, 70.0], [88.0, 80.0, 60.0]
    subsets = {
        "image": {"fused": 60.0, "dedicated": 61.0, "gap_points": 1.0},
        "image+audio+text": {"fused": 90.0, "dedicated": 90.0, "gap_points": 0.0},
    }
    return {
        "split": "test",
        "fusion": "late",
        "labels": names,
        "headline": {
            "fused_accuracy": 90.0,
            "fusion_gain_points": 5.0,
            "worst_subset_gap_points": 1.0,
            "macro_f1": model["macro_f1"],
            "late_fusion_accuracy": 88.0,
            "ece_before": 0.1,
            "ece_after": 0.02,
            "temperature": 1.5,
            "trust_method": "weighted",
            "robust_accuracy": 90.5,
            "corruption_regret_points": 3.0,
            "false_setaside_rate": 0.01,
        },
        "subsets": subsets,
        "models": {"fused": model, "image": unimodal},
        "calibration": calibrate(val_logits * 3, val_labels, test_logits * 3, test_labels, 10),
        "robustness": {
            "image_noise": {
                "modality": "image",
                "unit": "pixel noise std",
                "levels": [None, 0.1, 0.2],
                "accuracy": {"fused": fused_curve, "late_fusion": reference, "image": [60.0, 40.0, 20.0]},
                "summary": {
                    "fused": {
                        "relative": relative_robustness(fused_curve),
                        "effective": effective_robustness(fused_curve, reference),
                    },
                    "late_fusion": {"relative": relative_robustness(reference), "effective": 0.0},
                    "image": {"relative": 40.0, "effective": -3.0},
                },
            }
        },
        "speakers": {
            "alice": {
                "count": 10,
                "accuracy": {"fused": 70.0, "image": 80.0, "audio": 50.0, "text": 40.0},
                "best_single": "image",
                "fusion_worse": True,
            },
            "bob": {
                "count": 12,
                "accuracy": {"fused": 90.0, "image": 80.0, "audio": 50.0, "text": 40.0},
                "best_single": "image",
                "fusion_worse": False,
            },
        }
        if with_speakers
        else {},
        "parameters": {
            "fused": {"parameters": 1000, "weights_mib": 0.004},
            "image": {"parameters": 400, "weights_mib": 0.002},
        },
    }


def synthetic_measurements() -> dict[str, Any]:
    timing = {
        "per_sample_ms": 1.0,
        "per_batch_ms": 10.0,
        "batch_size": 256,
        "peak_inference_mib": 3.0,
        "threads": 2,
    }
    return {"models": {"fused": timing, "image": timing}, "process_peak_rss_mib": 300.0}


class ReferenceCollector(HTMLParser):
    """Every src/href value of a page, and the number of <img> tags."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.images += tag == "img"
        self.references += [value or "" for name, value in attrs if name in ("src", "href")]
