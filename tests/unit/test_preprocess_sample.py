"""The single-sample API the service calls: shapes, missing modalities, state round trip,
and clear errors for bad input. (Equality with the batch stage: test_preprocess_stage.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfuse.errors import MediaError
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.preprocess.sample import preprocess_sample
from mmfuse.preprocess.state import PreprocessState
from mmfuse.preprocess.text import Vocabulary


@pytest.fixture
def state() -> PreprocessState:
    return PreprocessState(
        params=PreprocessParams(),
        labels=("0", "1"),
        vocab=Vocabulary.fit(["one", "zero"], min_freq=1),
        image_mean=0.13,
        image_std=0.3,
        audio_mean=tuple(np.linspace(-60, -40, 40).tolist()),
        audio_std=(10.0,) * 40,
    )


def test_all_modalities_give_the_declared_shapes_and_dtypes(state, make_image, make_digit, make_wav, make_tone):
    out = preprocess_sample(make_image(make_digit(1)), make_wav(make_tone(440, 0.4, 16000), 16000), "One", state)
    assert {k: (v.dtype, list(v.shape)) for k, v in out.items()} == {
        "image": (torch.float32, [1, 28, 28]),
        "audio": (torch.float32, [40, 100]),
        "text": (torch.int64, [24]),
        "mask": (torch.bool, [3]),
    }
    assert out["mask"].tolist() == [True, True, True]
    assert out["text"][:3].tolist() == [state.vocab.tokens.index(c) for c in "one"]


def test_missing_modalities_are_zeros_with_mask_false(state):
    out = preprocess_sample(None, None, "", state)
    assert out["mask"].tolist() == [False, False, False]
    assert not out["image"].any() and not out["audio"].any() and not out["text"].any()


def test_a_path_and_bytes_give_the_same_tensors(state, make_wav, make_tone, tmp_path):
    payload = make_wav(make_tone(300, 0.5, 8000))
    (tmp_path / "clip.wav").write_bytes(payload)
    from_bytes = preprocess_sample(None, payload, None, state)
    from_path = preprocess_sample(None, tmp_path / "clip.wav", None, state)
    assert torch.equal(from_bytes["audio"], from_path["audio"])


def test_state_round_trips_through_json_exactly(state):
    again = PreprocessState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda img, wav, digit: (None, b"", None), "audio: the payload is empty"),
        (lambda img, wav, digit: (None, wav(np.zeros(0, dtype=np.float32)), None), "audio: the file holds 0 samples"),
        (
            lambda img, wav, digit: (None, wav(np.full(800, np.nan, dtype=np.float32), subtype="FLOAT"), None),
            "audio: 800 of 800 samples are NaN",
        ),
        (lambda img, wav, digit: (img(np.zeros((1, 1), dtype=np.uint8)), None, None), "image: 1x1 pixels is too small"),
        (lambda img, wav, digit: (img(digit(2))[:80], None, None), "image: the PNG data is truncated"),
        (lambda img, wav, digit: (None, None, "x" * 100_000), "text: 100000 characters is over the limit"),
        (lambda img, wav, digit: (None, None, b"\xff\xfe\x00bad"), "text: the bytes are not valid UTF-8"),
    ],
    ids=["empty-audio", "zero-sample-wav", "nan-audio", "1x1-image", "truncated-png", "huge-text", "not-utf8"],
)
def test_bad_input_gives_a_clear_media_error(state, make_image, make_wav, make_digit, inputs, message):
    with pytest.raises(MediaError, match=message):
        preprocess_sample(*inputs(make_image, make_wav, make_digit), state)
