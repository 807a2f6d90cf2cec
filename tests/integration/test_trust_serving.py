"""Set-aside in serving: an untrusted modality is answered as missing, and the answer says why."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_service_support import build_artifact, png, wav

from mmfuse.errors import MMFuseError
from mmfuse.inference.predictor import Predictor, RawSample
from mmfuse.models.artifact import load_model
from mmfuse.models.trust import TRUST, Gate, ModalityTrust, Trust, load_trust, save_trust


def _trust(
    artifact: Path, unusual: set[str], reliability: dict[str, float] | None = None, far: set[str] = frozenset()
) -> Trust:
    """A trust under which every input of the `unusual` modalities scores 1 (more unusual than all of val);
    with `reliability`, served `weighted`: each modality weighed by that constant chance (slope 0), except
    the `far` ones, whose gate reads every input's head as far less sure than in training (weight about 0)."""
    model, _ = load_model(artifact)
    classes, dim = model.spec.n_classes, model.spec.arch.embed_dim

    def fitted(m: str) -> ModalityTrust:
        size = dim + (2 if m == "text" else 5)  # the embedding and the input statistics (`input_features`)
        return ModalityTrust(np.zeros((classes, size)), np.eye(size), np.array([0.0 if m in unusual else 1e12]))

    per_modality = {m: fitted(m) for m in model.spec.modalities}
    if reliability is None:
        return Trust(model.spec.modalities, per_modality, 0.99)
    modalities = model.spec.modalities
    chance = np.array([reliability.get(m, 1.0 - 1e-12) for m in modalities])
    centre = np.array([[0.0, -1e3 if m in far else 0.0] for m in modalities])
    slope = np.array([[0.0, 1.0 if m in far else 0.0] for m in modalities])
    return Trust(modalities, per_modality, 0.99, Gate(centre, np.log(chance / (1 - chance)), slope), "weighted")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return build_artifact(tmp_path / "artifact")


def _answer(predictor: Predictor, sample: RawSample):
    prepared = predictor.prepare(sample)
    scores = predictor.forward([prepared])[0]
    return scores, predictor.explain(prepared, scores, "r1")


def test_an_untrusted_image_is_set_aside_and_the_answer_is_the_one_without_it(artifact: Path) -> None:
    save_trust(artifact / TRUST, _trust(artifact, {"image"}))
    predictor = Predictor(artifact, "test")
    scores, answer = _answer(predictor, RawSample(image=png(), audio=wav(), text="three"))
    assert answer.modalities_set_aside == ["image"] and answer.modalities_used == ["audio", "text"]
    assert answer.trust["image"].score == 1.0 and not answer.trust["image"].trusted
    assert answer.trust["audio"].trusted and answer.trust["audio"].threshold == 0.99
    assert answer.notes == ["image set aside: unlike training image, score 1.000 > 0.99"]
    assert set(answer.contributions) == {"audio", "text"}
    without, _ = _answer(predictor, RawSample(audio=wav(), text="three"))
    assert torch.allclose(scores.probabilities, without.probabilities)


def test_a_weighed_modality_pulls_the_answer_only_as_far_as_it_is_believed(artifact: Path) -> None:
    sample = RawSample(image=png(), audio=wav(), text="three")
    save_trust(artifact / TRUST, _trust(artifact, set()))
    everything, _ = _answer(Predictor(artifact, "test"), sample)
    without, _ = _answer(Predictor(artifact, "test"), RawSample(audio=wav(), text="three"))
    save_trust(artifact / TRUST, _trust(artifact, set(), {"image": 0.3}))
    scores, answer = _answer(Predictor(artifact, "test"), sample)
    believed = answer.trust["image"].weight  # the prior 0.3, moved by how well the image agrees with the others
    assert 0.0 < believed < 1.0 and believed != pytest.approx(0.3)
    assert answer.trust["audio"].weight == pytest.approx(1.0)
    expected = believed * everything.probabilities.double() + (1 - believed) * without.probabilities.double()
    assert torch.allclose(scores.probabilities.double(), expected, atol=1e-5)
    assert float(scores.probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    # set aside only when believed less than half as much as a typical image (its prior, 0.3)
    assert answer.modalities_set_aside == (["image"] if believed < 0.5 * 0.3 else [])
    save_trust(artifact / TRUST, _trust(artifact, set(), {"image": 0.3}, far={"image"}))
    scores, answer = _answer(Predictor(artifact, "test"), sample)
    assert answer.modalities_set_aside == ["image"] and answer.trust["image"].weight == pytest.approx(0.0)
    assert answer.notes == ["image set aside: weighed 0.00, far below a typical image (score 0.000)"]
    assert torch.allclose(scores.probabilities, without.probabilities, atol=1e-5)


def test_when_every_input_is_untrusted_the_most_usual_one_answers(artifact: Path) -> None:
    save_trust(artifact / TRUST, _trust(artifact, {"image", "audio", "text"}))
    _, answer = _answer(Predictor(artifact, "test"), RawSample(image=png(), audio=wav(), text="three"))
    assert len(answer.modalities_used) == 1 and len(answer.modalities_set_aside) == 2


def test_a_model_without_trust_believes_every_input(artifact: Path) -> None:
    _, answer = _answer(Predictor(artifact, "test"), RawSample(image=png(), audio=wav(), text="three"))
    assert answer.modalities_used == ["image", "audio", "text"] and answer.modalities_set_aside == []
    assert answer.trust == {}


def test_trust_files_round_trip_byte_identically_and_refuse_garbage(artifact: Path, tmp_path: Path) -> None:
    trust = _trust(artifact, {"audio"}, {"image": 0.4})
    save_trust(tmp_path / "a.safetensors", trust)
    again = load_trust(tmp_path / "a.safetensors")
    assert again.method == "weighted" and np.array_equal(again.gate.bias, trust.gate.bias)
    save_trust(tmp_path / "b.safetensors", again)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(b"not a trust file")
    with pytest.raises(MMFuseError, match="not a readable trust file"):
        load_trust(tmp_path / "bad.safetensors")


def test_the_note_says_whether_a_modality_looked_unreliable_alone_or_was_contradicted(artifact: Path) -> None:
    save_trust(artifact / TRUST, _trust(artifact, set(), {"image": 0.9}))
    predictor = Predictor(artifact, "test")
    prepared = predictor.prepare(RawSample(image=png(), audio=wav(), text="three"))
    scores = predictor.forward([prepared])[0]
    unimodal = scores.unimodal.clone()
    unimodal[0] = torch.nn.functional.one_hot(torch.tensor(1), unimodal.shape[1]).float()  # the image reads label 1
    doubted = dataclasses.replace(
        scores,
        unimodal=unimodal,
        trusted=torch.tensor([False, True, True]),
        weight=torch.tensor([0.02, 1.0, 1.0], dtype=torch.float64),
    )
    label = predictor.labels[1]
    contradicted = predictor.explain(prepared, dataclasses.replace(doubted, alone=torch.ones(3)), "r1")
    assert contradicted.modalities_set_aside == ["image"]
    assert contradicted.notes == [
        f"image set aside: it reads {label!r}, which the other inputs contradict (weighed 0.02, score 0.000)"
    ]
    weak = predictor.explain(prepared, dataclasses.replace(doubted, alone=torch.tensor([0.1, 1.0, 1.0])), "r1")
    assert weak.notes == ["image set aside: weighed 0.02, far below a typical image (score 0.000)"]
