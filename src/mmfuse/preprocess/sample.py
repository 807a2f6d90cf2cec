"""The single-sample API: what the service calls, and what the batch stage composes.

`preprocess_sample` runs exactly the transforms of the `preprocess` stage on one raw
sample and normalises it with the statistics fitted on train, so serving sees the
tensors training saw (tests/unit/test_preprocess_stage.py checks bit equality).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmfuse.data.manifest import text_given
from mmfuse.preprocess.audio import audio_features
from mmfuse.preprocess.image import image_features
from mmfuse.preprocess.state import PreprocessState
from mmfuse.preprocess.text import clean_text


def preprocess_sample(
    image: bytes | Path | None,
    audio: bytes | Path | None,
    text: str | bytes | None,
    state: PreprocessState,
) -> dict[str, torch.Tensor]:
    """One raw sample -> image [1,H,W] float32, audio [n_mels,n_frames] float32,
    text [max_len] int64, mask [3] bool (image, audio, text).

    A missing modality (None, or an empty text) gives zeros and mask False. Bad input
    raises MediaError naming the modality and the problem.
    """
    params = state.params
    shapes = state.shapes()
    out = {
        "image": torch.zeros(shapes["image"], dtype=torch.float32),
        "audio": torch.zeros(shapes["audio"], dtype=torch.float32),
        "text": torch.zeros(shapes["text"], dtype=torch.int64),
    }
    text = text if text_given(text) else None
    mask = [image is not None, audio is not None, text is not None]
    if image is not None:
        out["image"] = torch.from_numpy(state.normalise_image(image_features(image, params.image))[None])
    if audio is not None:
        out["audio"] = torch.from_numpy(state.normalise_audio(audio_features(audio, params.audio)))
    if text is not None:
        out["text"] = torch.from_numpy(state.encode_text(clean_text(text, params.text)))
    out["mask"] = torch.tensor(mask, dtype=torch.bool)
    return out
