"""Set-aside in serving: an untrusted modality is answered as missing, and the answer says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_service_support import build_artifact, png, wav

from mmfuse.errors import MMFuseError
from mmfuse.inference.predictor import Predictor, RawSample
from mmfuse.models.artifact import load_model
from mmfuse.models.trust import TRUST, ModalityTrust, Trust, load_trust, save_trust


def _trust(artifact: Path, unusual: set[str]) -> Trust:
    """A trust under which every input of the `unusual` modalities scores 1 (more unusual than all of val)."""
    model, _ = load_model(artifact)
    classes, dim = model.spec.n_classes, model.spec.arch.embed_dim

    def fitted(m: str) -> ModalityTrust:
        size = dim + (2 if m == "text" else 3)  # the embedding and the input statistics (`input_features`)
        return ModalityTrust(np.zeros((classes, size)), np.eye(size), np.array([0.0 if m in unusual else 1e12]))

    return Trust(model.spec.modalities, {m: fitted(m) for m in model.spec.modalities}, 0.99)


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


def test_when_every_input_is_untrusted_the_most_usual_one_answers(artifact: Path) -> None:
    save_trust(artifact / TRUST, _trust(artifact, {"image", "audio", "text"}))
    _, answer = _answer(Predictor(artifact, "test"), RawSample(image=png(), audio=wav(), text="three"))
    assert len(answer.modalities_used) == 1 and len(answer.modalities_set_aside) == 2


def test_a_model_without_trust_believes_every_input(artifact: Path) -> None:
    _, answer = _answer(Predictor(artifact, "test"), RawSample(image=png(), audio=wav(), text="three"))
    assert answer.modalities_used == ["image", "audio", "text"] and answer.modalities_set_aside == []
    assert answer.trust == {}


def test_trust_files_round_trip_byte_identically_and_refuse_garbage(artifact: Path, tmp_path: Path) -> None:
    trust = _trust(artifact, {"audio"})
    save_trust(tmp_path / "a.safetensors", trust)
    save_trust(tmp_path / "b.safetensors", load_trust(tmp_path / "a.safetensors"))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(b"not a trust file")
    with pytest.raises(MMFuseError, match="not a readable trust file"):
        load_trust(tmp_path / "bad.safetensors")
