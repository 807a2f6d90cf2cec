"""The per-modality trust: calibrated to its false-alarm rate on held-out data, alarmed by inputs unlike training."""

from __future__ import annotations

import numpy as np
import torch

from mmfuse.models.trust import fit_trust

MODALITIES = ("image", "audio", "text")


def _embeddings(rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray) -> torch.Tensor:
    """[N, 3, D]: every modality a noisy copy of its class centre."""
    return torch.from_numpy(np.stack([centres[labels] + rng.normal(0, 1, (len(labels), centres.shape[1]))] * 3, 1))


def test_clean_inputs_are_set_aside_at_the_false_alarm_rate_and_shifted_ones_always() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (5, 16))
    train_labels, val_labels, test_labels = (rng.integers(0, 5, n) for n in (4000, 2000, 4000))
    present = {n: torch.ones(n, 3, dtype=torch.bool) for n in (4000, 2000)}
    trust = fit_trust(
        MODALITIES,
        _embeddings(rng, train_labels, centres),
        present[4000],
        torch.from_numpy(train_labels),
        _embeddings(rng, val_labels, centres),
        present[2000],
        false_alarm=0.05,
    )
    test = _embeddings(rng, test_labels, centres)
    clean = trust.trusted(trust.scores(test, present[4000]), present[4000])
    assert 0.03 < 1 - float(clean.double().mean()) < 0.07  # the val-calibrated rate holds on fresh data
    test[:, 1] += 6.0  # the audio sensor goes wrong
    scores = trust.scores(test, present[4000])
    trusted = trust.trusted(scores, present[4000])
    assert float(trusted[:, 1].double().mean()) < 0.01 and float(trusted[:, 0].double().mean()) > 0.9
    assert bool((scores >= 0).all() and (scores <= 1).all())


def test_absent_modalities_get_no_score_and_are_never_trusted() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, (3, 8))
    labels = rng.integers(0, 3, 300)
    present = torch.ones(300, 3, dtype=torch.bool)
    emb = _embeddings(rng, labels, centres)
    trust = fit_trust(MODALITIES, emb, present, torch.from_numpy(labels), emb, present, false_alarm=0.01)
    partial = present.clone()
    partial[:, 2] = False
    scores = trust.scores(emb, partial)
    assert bool(scores[:, 2].isnan().all()) and not bool(trust.trusted(scores, partial)[:, 2].any())
