"""Calibration: expected calibration error, temperature scaling and reliability-diagram data.

A fusion model that sums unimodal log-probabilities tends to be overconfident (evidence is
counted as if independent), and the monitoring flow reads confidences, so a temperature
fitted on val travels with the artifact and serving divides its logits by it. One scalar
cannot change any argmax, so accuracy is untouched (Guo et al., 2017).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence; bin k holds (k/n, (k+1)/n], the first also 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> list[dict[str, float]]:
    """Per confidence bin: its range, the mean confidence, the accuracy and the sample count.

    Empty bins are kept (with zero count) so that diagrams of several models line up.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = _bins(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    safe = np.maximum(count, 1)
    return [
        {
            "lower": k / n_bins,
            "upper": (k + 1) / n_bins,
            "confidence": float(conf_sum[k] / safe[k]),
            "accuracy": float(correct_sum[k] / safe[k]),
            "count": int(count[k]),
        }
        for k in range(n_bins)
    ]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """ECE (a fraction in [0, 1]): the count-weighted mean gap |accuracy - confidence| over equal-width bins."""
    if len(labels) == 0:
        return 0.0
    table = reliability(probs, labels, n_bins)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / len(labels))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / temperature)."""
    logp = log_softmax(logits.astype(np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T), by L-BFGS on log T.

    Optimising log T keeps T positive without constraints; the gradient is analytic:
    d NLL / d log T = mean(z_y - E_p[z]) / T.
    """
    z = logits.astype(np.float64)
    rows = np.arange(len(labels))

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        temperature = float(np.exp(x[0]))
        scaled = z / temperature
        logp = log_softmax(scaled, axis=1)
        expected = (softmax(scaled, axis=1) * z).sum(axis=1)
        grad = float(np.mean(z[rows, labels] - expected)) / temperature
        return float(-logp[rows, labels].mean()), np.array([grad])

    result = minimize(objective, np.zeros(1), jac=True, method="L-BFGS-B", bounds=[(-5.0, 5.0)])
    return float(np.exp(result.x[0]))


def calibrate(
    val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray, n_bins: int
) -> dict[str, Any]:
    """Fit T on val, score test before and after: temperature, ECE and NLL both ways, reliability tables."""
    temperature = round(fit_temperature(val_logits, val_labels), 6)  # the very value serving will divide by
    before = softmax(test_logits.astype(np.float64), axis=1)
    after = softmax(test_logits.astype(np.float64) / temperature, axis=1)
    return {
        "temperature": temperature,
        "ece_before": round(expected_calibration_error(before, test_labels, n_bins), 6),
        "ece_after": round(expected_calibration_error(after, test_labels, n_bins), 6),
        "nll_before": round(negative_log_likelihood(test_logits, test_labels), 6),
        "nll_after": round(negative_log_likelihood(test_logits, test_labels, temperature), 6),
        "reliability": {
            "before": reliability(before, test_labels, n_bins),
            "after": reliability(after, test_labels, n_bins),
        },
    }
