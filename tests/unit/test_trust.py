"""The per-modality trust: calibrated to its false-alarm rate on held-out data, alarmed by inputs unlike training."""

from __future__ import annotations

import numpy as np
import torch

from mmfuse.models.trust import Encoded, fit_trust

MODALITIES = ("image", "audio", "text")


def _split(rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray) -> Encoded:
    """Every modality's embedding a noisy copy of its class centre; inputs drawn as a preprocessed split's."""
    n = len(labels)
    emb = torch.from_numpy(np.stack([centres[labels] + rng.normal(0, 1, (n, centres.shape[1]))] * 3, 1))
    inputs = {
        "image": torch.from_numpy(rng.normal(0, 1, (n, 1, 6, 6))).float(),
        "audio": torch.from_numpy(rng.normal(0, 1, (n, 4, 10))).float(),
        "text": torch.from_numpy(rng.integers(1, 9, (n, 12)) * (rng.random((n, 12)) < 0.5)),
    }
    return Encoded(emb, torch.ones(n, 3, dtype=torch.bool), inputs)


def test_clean_inputs_are_set_aside_at_the_false_alarm_rate_and_shifted_ones_always() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (5, 16))
    train_labels, val_labels, test_labels = (rng.integers(0, 5, n) for n in (4000, 2000, 4000))
    train = _split(rng, train_labels, centres)
    trust = fit_trust(MODALITIES, train, torch.from_numpy(train_labels), _split(rng, val_labels, centres), 0.05)
    test = _split(rng, test_labels, centres)
    clean = trust.trusted(trust.scores(test.embeddings, test.present, test.inputs), test.present)
    assert 0.03 < 1 - float(clean.double().mean()) < 0.07  # the val-calibrated rate holds on fresh data
    test.embeddings[:, 1] += 6.0  # the audio sensor goes wrong: its embedding leaves the training clusters
    test.inputs["image"] = 1.0 - test.inputs["image"]  # the camera inverts: only its input statistics move
    scores = trust.scores(test.embeddings, test.present, test.inputs)
    trusted = trust.trusted(scores, test.present)
    assert float(trusted[:, 1].double().mean()) < 0.01 and float(trusted[:, 0].double().mean()) < 0.05
    assert float(trusted[:, 2].double().mean()) > 0.9
    assert bool((scores >= 0).all() and (scores <= 1).all())


def test_absent_modalities_get_no_score_and_are_never_trusted() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, (3, 8))
    labels = rng.integers(0, 3, 300)
    split = _split(rng, labels, centres)
    trust = fit_trust(MODALITIES, split, torch.from_numpy(labels), split, false_alarm=0.01)
    partial = split.present.clone()
    partial[:, 2] = False
    scores = trust.scores(split.embeddings, partial, split.inputs)
    assert bool(scores[:, 2].isnan().all()) and not bool(trust.trusted(scores, partial)[:, 2].any())
