"""One convolutional encoder factory for every modality.

Image, log-mel audio and token text differ only in what comes before the convolutions
(nothing, or a token embedding) and in the number of spatial axes, so a
single `ConvEncoder` serves all three: one place to change depth, width or pooling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mmfuse.errors import ConfigError
from mmfuse.params.train import EncoderParams


class UtteranceNorm(nn.Module):
    """Per-clip, per-mel-bin standardisation over the clip's own frames, padding frames excluded.

    Clips shorter than the log-mel window are padded with a constant floor far below the
    noise (a digital-silence log floor), so across a batch the pad-versus-speech step is
    ten times larger than the spectral detail that tells digits apart, and batch-norm
    scales the detail away (an audio CNN then stays near chance on the `hard` preset).
    Standardising each clip over its non-padding frames (cepstral mean and variance
    normalisation) also removes the stationary noise floor. A frame counts as padding
    when every mel bin sits at the clip's minimum for that bin.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        floor = x.amin(dim=2, keepdim=True)
        frames = (x > floor + 1e-6).any(dim=1, keepdim=True).to(x.dtype)
        count = frames.sum(dim=2, keepdim=True).clamp_min(1.0)
        mean = (x * frames).sum(dim=2, keepdim=True) / count
        var = ((x - mean).square() * frames).sum(dim=2, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + 1e-5) * frames


class _TokenEmbedding(nn.Module):
    """[B, L] token ids -> [B, token_dim, L]; id 0 is padding and stays a zero vector."""

    def __init__(self, vocab_size: int, token_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, token_dim, padding_idx=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x).transpose(1, 2)


class ConvEncoder(nn.Module):
    """front -> [stride-2 conv, batch-norm, ReLU] per width -> readout -> embedding.

    Stride-2 convolutions rather than conv + max-pool: the same accuracy on avdigits
    (image 62.6 % vs 61.8 % val) for a fraction of the compute, which matters on 2 CPU cores.

    The readout depends on what position means. Over a sequence (audio frames, text
    characters) global average + max pooling makes the embedding independent of where the
    word sits. Over an image plane the final map is flattened instead: where a stroke is
    tells a 6 from a 9, and global pooling capped clean MNIST at about 90 %.
    """

    def __init__(
        self,
        front: nn.Module,
        spatial: Sequence[int],
        in_channels: int,
        params: EncoderParams,
        embed_dim: int,
    ) -> None:
        super().__init__()
        conv, norm = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[len(spatial)]
        layers: list[nn.Module] = [front]
        sizes = list(spatial)
        for width in params.channels:
            layers += [
                conv(in_channels, width, params.kernel_size, stride=2, padding=params.kernel_size // 2, bias=False),
                norm(width),
                nn.ReLU(inplace=True),
            ]
            in_channels, sizes = width, [(size + 1) // 2 for size in sizes]
        self.features = nn.Sequential(*layers)
        self.flatten = len(spatial) == 2
        readout = in_channels * math.prod(sizes) if self.flatten else 2 * in_channels
        self.project = nn.Sequential(nn.Linear(readout, embed_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x).flatten(2)
        pooled = maps.flatten(1) if self.flatten else torch.cat([maps.mean(dim=2), maps.amax(dim=2)], dim=1)
        return self.project(pooled)


def build_encoder(
    modality: str,
    params: EncoderParams,
    input_shape: Sequence[int],
    embed_dim: int,
    vocab_size: int,
    token_dim: int,
) -> ConvEncoder:
    """The encoder of one modality; `input_shape` is one sample's shape from the processed meta."""
    if modality == "image":
        front, channels, spatial = nn.Identity(), input_shape[0], input_shape[1:]
    elif modality == "audio":
        # Mel bins as channels, convolution over time (TC-ResNet style keyword spotting):
        # several times cheaper on CPU than a 2-D CNN over the mel x time plane.
        front, channels, spatial = UtteranceNorm(), input_shape[0], input_shape[1:]
    elif modality == "text":
        front, channels, spatial = _TokenEmbedding(vocab_size, token_dim), token_dim, input_shape
    else:
        raise ConfigError(f"unknown modality {modality!r}; expected image, audio or text.")
    return ConvEncoder(front, spatial, channels, params, embed_dim)
