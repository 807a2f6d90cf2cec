"""Training-time audio augmentation (time shift + SpecAugment masks) on the log-mel batch.

The audio CNN memorises the ~2,000 training clips within a few epochs (train loss near
zero, val loss rising); shifting the clip in time and hiding random frame and mel-bin
bands makes it learn the word rather than the take. Hidden cells are set to the clip's
own floor, which is what padding looks like, so the model's utterance normalisation
treats them as absent instead of as a loud band. Draws come from the global torch RNG,
which training seeds per epoch, so augmentation replays exactly on resume.
"""

from __future__ import annotations

import torch

from mmfuse.params.train import AugmentParams


def _band(size: int, count: int, width: int) -> torch.Tensor:
    """[count, size] bool: one random band of up to `width` cells per row."""
    lengths = torch.randint(0, width + 1, (count, 1))
    starts = (torch.rand(count, 1) * (size - lengths + 1)).floor()
    positions = torch.arange(size).unsqueeze(0)
    return (positions >= starts) & (positions < starts + lengths)


def augment_audio(audio: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """[B, mels, frames] -> the same shape, shifted circularly in time and masked."""
    count, mels, frames = audio.shape
    if params.time_shift > 0:
        shift = torch.randint(-params.time_shift, params.time_shift + 1, (count, 1, 1))
        index = (torch.arange(frames).view(1, 1, frames) - shift) % frames
        audio = audio.gather(2, index.expand(count, mels, frames))
    hidden = _band(frames, count, params.time_mask).unsqueeze(1) | _band(mels, count, params.freq_mask).unsqueeze(2)
    floor = audio.amin(dim=2, keepdim=True)
    return torch.where(hidden, floor, audio)
