"""The per-modality trust: calibrated to its false-alarm rate on held-out data, alarmed by inputs unlike training."""

from __future__ import annotations

import numpy as np
import torch

from mmfuse.models.trust import (
    Assessment,
    Encoded,
    fit_gate,
    fit_trust,
    gate_features,
    mixture,
    subset_bits,
    subset_evidence,
    subset_posterior,
)

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


def _aux(split: Encoded) -> torch.Tensor:
    """Unimodal logits [N, M, 5] (the gate reads their energy; these tests fit no gate)."""
    return torch.zeros(split.embeddings.shape[0], 3, 5)


def test_clean_inputs_are_set_aside_at_the_false_alarm_rate_and_shifted_ones_always() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (5, 16))
    train_labels, val_labels, test_labels = (rng.integers(0, 5, n) for n in (4000, 2000, 4000))
    train = _split(rng, train_labels, centres)
    labelled = train.labelled(MODALITIES, torch.from_numpy(train_labels))
    trust = fit_trust(MODALITIES, labelled, _split(rng, val_labels, centres), 0.05)
    test = _split(rng, test_labels, centres)
    clean = trust.assess(test.embeddings, test.present, test.inputs, _aux(test)).trusted
    assert 0.03 < 1 - float(clean.double().mean()) < 0.07  # the val-calibrated rate holds on fresh data
    test.embeddings[:, 1] += 6.0  # the audio sensor goes wrong: its embedding leaves the training clusters
    test.inputs["image"] = 1.0 - test.inputs["image"]  # the camera inverts: only its input statistics move
    assessment = trust.assess(test.embeddings, test.present, test.inputs, _aux(test))
    scores, trusted = assessment.scores, assessment.trusted
    assert float(trusted[:, 1].double().mean()) < 0.01 and float(trusted[:, 0].double().mean()) < 0.05
    assert float(trusted[:, 2].double().mean()) > 0.9
    assert bool((scores >= 0).all() and (scores <= 1).all())


def test_absent_modalities_get_no_score_and_are_never_trusted() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, (3, 8))
    labels = rng.integers(0, 3, 300)
    split = _split(rng, labels, centres)
    trust = fit_trust(MODALITIES, split.labelled(MODALITIES, torch.from_numpy(labels)), split, false_alarm=0.01)
    partial = split.present.clone()
    partial[:, 2] = False
    assessment = trust.assess(split.embeddings, partial, split.inputs, _aux(split))
    assert bool(assessment.scores[:, 2].isnan().all()) and not bool(assessment.trusted[:, 2].any())
    assert not bool(assessment.weights("weighted")[:, 2].any()) and not bool(assessment.weights("fused")[:, 2].any())


def _log_probs(rng: np.random.Generator, n: int, classes: int) -> torch.Tensor:
    """Random normalised log-probabilities [n, 8, classes] of the 8 subsets of 3 modalities."""
    return torch.log_softmax(torch.from_numpy(rng.normal(0, 2, (n, 8, classes))), dim=2)


def test_the_mixture_is_trusting_all_at_weight_one_and_a_subset_at_weights_zero_or_one() -> None:
    log_probs = _log_probs(np.random.default_rng(2), 6, 4)
    assert torch.allclose(mixture(log_probs, torch.ones(6, 3, dtype=torch.float64)), log_probs[:, 7])
    only_audio_text = torch.tensor([[0.0, 1.0, 1.0]]).expand(6, 3)
    assert torch.allclose(mixture(log_probs, only_audio_text), log_probs[:, 0b110])
    assert bool(subset_bits(3)[0b110].tolist() == [False, True, True])
    halfway = mixture(log_probs, torch.tensor([[0.5, 1.0, 1.0]]).expand(6, 3))
    expected = torch.log(0.5 * log_probs[:, 0b111].exp() + 0.5 * log_probs[:, 0b110].exp())
    assert torch.allclose(halfway, expected)
    assert torch.allclose(halfway.exp().sum(dim=1), torch.ones(6, dtype=torch.float64))


def test_the_gate_learns_to_doubt_a_modality_whose_distance_betrays_a_broken_sensor() -> None:
    rng = np.random.default_rng(3)
    n, classes = 3000, 5
    labels = torch.from_numpy(rng.integers(0, classes, n))
    broken = torch.from_numpy(rng.random(n) < 0.4)
    distances = torch.from_numpy(np.exp(rng.normal(0, 0.3, (n, 3))))
    distances[broken, 0] *= 20.0  # a broken image lies far from training ...
    logits = torch.from_numpy(rng.normal(0, 1, (n, 8, classes)))
    image_subsets = subset_bits(3)[:, 0]
    wrong = (labels + 1) % classes
    for k in range(8):  # the image knows the label best, unless it is broken: then it misleads
        logits[torch.arange(n), k, labels] += 4.0 if bool(image_subsets[k]) else 0.5
        if bool(image_subsets[k]):
            logits[broken, k, wrong[broken]] += 8.0
    log_probs = torch.log_softmax(logits, dim=2)
    trusted = torch.ones(n, 3, dtype=torch.bool)
    features = gate_features(distances, torch.zeros(n, 3, classes))  # the energy says nothing here: all heads flat
    gate = fit_gate(features, trusted, log_probs, labels, np.zeros((3, 2)))
    assert gate.slope[0, 0] > 1.0  # the image is doubted the further it lies ...
    assert gate.slope[1, 0] == gate.slope[2, 0] == gate.slope[0, 0]  # ... and so would audio and text be
    with torch.inference_mode():  # callers evaluate in inference mode: the fit still has its gradients
        again = fit_gate(features, trusted, log_probs, labels, np.zeros((3, 2)))
    assert np.array_equal(again.slope, gate.slope) and np.array_equal(again.bias, gate.bias)
    reliability = gate.reliability(features)
    assert float(reliability[broken, 0].quantile(0.99)) < 0.2 < 0.8 < float(reliability[~broken, 0].median())
    mixed = mixture(log_probs, torch.where(trusted, reliability, 0.0)).argmax(dim=1)
    trusting = log_probs[:, 7].argmax(dim=1)
    assert float((mixed == labels).double().mean()) > float((trusting == labels).double().mean()) + 0.15


def test_a_modality_never_seen_broken_gets_a_finite_trust_not_certainty() -> None:
    """The fit's data cannot bound the bias of a modality that is always right: by likelihood
    alone every parameter ran off past 9,000; the prior keeps them where the data can be read."""
    subset_bits.cache_clear()
    with torch.inference_mode():  # serving asks first: the shared subsets must still serve the fit's autograd
        subset_bits(3)
    rng = np.random.default_rng(4)
    n, classes = 2000, 5
    labels = torch.from_numpy(rng.integers(0, classes, n))
    logits = torch.from_numpy(rng.normal(0, 1, (n, 8, classes)))
    for k, with_audio in enumerate(subset_bits(3)[:, 1].tolist()):  # audio knows the label, always
        logits[torch.arange(n), k, labels] += 6.0 if with_audio else 1.0
    features = gate_features(torch.from_numpy(rng.normal(0, 0.3, (n, 3))), torch.zeros(n, 3, classes))
    present = torch.ones(n, 3, dtype=torch.bool)
    gate = fit_gate(features, present, torch.log_softmax(logits, dim=2), labels, np.zeros((3, 2)))
    assert float(np.abs(gate.bias).max()) < 10.0 and float(gate.slope.max()) < 10.0
    assert float(gate.bias[1]) == float(gate.bias.max())  # audio still the most believed


def test_heads_that_agree_are_evidence_for_each_other_and_a_dissenter_loses_belief() -> None:
    sure = torch.tensor([[8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0]])  # logits naming class 0 / class 1
    agree = torch.stack([sure[0], sure[0], sure[0]]).unsqueeze(0)  # [1, 3, 4]: all name class 0
    dissent = torch.stack([sure[0], sure[1], sure[0]]).unsqueeze(0)  # audio names class 1
    evidence = subset_evidence(torch.cat([agree, dissent]))
    assert torch.allclose(evidence[:, [0, 0b001, 0b010, 0b100]], torch.zeros(2, 4, dtype=torch.float64))
    assert float(evidence[0, 0b011]) > 1.0 and float(evidence[1, 0b011]) < -1.0  # image+audio: agree, then not
    assert float(evidence[1, 0b101]) == float(evidence[0, 0b101]) > 1.0  # image+text agree either way
    prior = torch.full((2, 3), 0.9, dtype=torch.float64)
    believed = subset_posterior(prior, evidence) @ subset_bits(3).double()
    assert float(believed[0, 1]) > 0.9 > 0.5 > float(believed[1, 1])  # the dissenting audio is doubted
    assert torch.allclose(subset_posterior(prior), subset_posterior(prior, torch.zeros(2, 8)))
    only_audio = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)  # a lone input: nothing to disagree with
    assert torch.allclose(subset_posterior(only_audio, evidence[1:]), subset_posterior(only_audio))


def test_torn_frames_are_unlike_training_even_when_level_and_spread_are_typical() -> None:
    """Audio whose frames alternate with lost ones: the inputs' mean and spread stay those of
    training, only the roughness along frames betrays it (and only if the covariance's ridge
    does not drown a statistic that varies little)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 4, (5, 16))
    train_labels, val_labels, test_labels = (rng.integers(0, 5, n) for n in (4000, 2000, 2000))
    splits = [_split(rng, labels, centres) for labels in (train_labels, val_labels, test_labels)]
    for split in splits:  # smooth, quiet clips: each band slowly varying over time, all far smaller than the embedding
        n = split.embeddings.shape[0]
        steps = torch.from_numpy(rng.normal(0, 0.001, (n, 4, 10))).float()
        split.inputs["audio"] = steps.cumsum(dim=2) + torch.from_numpy(rng.normal(0, 0.01, (n, 4, 1))).float()
    train, val, test = splits
    trust = fit_trust(MODALITIES, train.labelled(MODALITIES, torch.from_numpy(train_labels)), val, 0.01)
    torn = test.inputs["audio"].clone()
    torn[:, :, 1::2] = torn[:, :, 1::2].flip(0)  # every other frame from another clip: same level and spread
    clean = trust.assess(test.embeddings, test.present, test.inputs, _aux(test)).trusted[:, 1]
    test.inputs["audio"] = torn
    broken = trust.assess(test.embeddings, test.present, test.inputs, _aux(test)).trusted[:, 1]
    assert float(clean.double().mean()) > 0.95 and float(broken.double().mean()) < 0.05


def test_an_answer_always_names_an_input_it_used_even_when_every_one_is_doubted() -> None:
    """A text-only request whose text the gate doubts (reliability under half a typical text's) still
    names the text as used; with two doubted inputs, the relatively more believed one."""
    present = torch.tensor([[False, False, True], [True, True, False], [True, True, True]])
    reliability = torch.tensor([[0.0, 0.0, 0.1], [0.2, 0.3, 0.0], [0.9, 0.1, 0.9]], dtype=torch.float64)
    typical = torch.tensor([0.5, 0.9, 0.9], dtype=torch.float64)
    nan = torch.full(present.shape, torch.nan, dtype=torch.float64)
    no_evidence = torch.zeros(3, 8, dtype=torch.float64)
    assessment = Assessment(present, nan, present, nan.unsqueeze(2), reliability, typical, no_evidence)
    used = assessment.used("weighted")
    assert used.tolist() == [[False, False, True], [True, False, False], [True, False, True]]
    assert not (used & ~present).any()
