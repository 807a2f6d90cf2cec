"""A tiny synthetic task in the processed-split layout: every modality carries the label, noisily."""

from __future__ import annotations

import torch

N_CLASSES = 4
IMAGE, MELS, FRAMES, TEXT_LEN, VOCAB = 8, 8, 16, 6, 12


def make_split(count: int, seed: int) -> dict[str, torch.Tensor]:
    """Image: a bright quadrant per class; audio: a flickering mel band per class, with padding frames
    at the end; text: the class's token somewhere (or only padding). All with noise."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.arange(count) % N_CLASSES
    image = torch.randn(count, 1, IMAGE, IMAGE, generator=gen)
    for i, y in enumerate(label.tolist()):
        r, c = divmod(y, 2)
        image[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 1.5
    audio = torch.randn(count, MELS, FRAMES, generator=gen)
    flicker = torch.tensor([3.0, -3.0]).repeat(FRAMES // 2)  # a temporal pattern: per-clip normalisation keeps it
    audio[torch.arange(count), label * 2] += flicker
    audio[:, :, -4:] = -3.0  # constant padding floor, as the preprocess stage pads short clips
    text = torch.zeros(count, TEXT_LEN, dtype=torch.int64)
    informative = torch.rand(count, generator=gen) < 0.7
    position = torch.randint(0, TEXT_LEN, (count,), generator=gen)
    text[torch.arange(count), position] = torch.where(
        informative, label + 2, torch.randint(2, VOCAB, (count,), generator=gen)
    )
    mask = torch.ones(count, 3, dtype=torch.bool)
    mask[::7, 2] = False  # some samples lack text, as in avdigits (empty transcripts)
    return {"image": image, "audio": audio, "text": text, "mask": mask, "label": label}
