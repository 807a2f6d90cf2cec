"""The noise models, one implementation each, used wherever noise is made.

The avdigits `hard` preset degrades its clips with `add_noise` and its transcripts with
`typos`; the evaluate stage's robustness curves corrupt the raw test media with the same
functions (plus `pixel_noise`, `blur` and `occlude` on images); the traffic simulator
shifts live requests with them too. Every function takes its randomness as an explicit
`rng`, so a seed reproduces the noise exactly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TYPO_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def typos(word: str, rate: float, rng: np.random.Generator) -> str:
    """Each character is, with probability `rate`, substituted, deleted or followed by an inserted letter."""
    out = []
    for char in word:
        if rng.random() >= rate:
            out.append(char)
            continue
        operation = rng.integers(3)
        letter = TYPO_ALPHABET[rng.integers(len(TYPO_ALPHABET))]
        if operation == 0:
            out.append(letter)  # substitute
        elif operation == 2:
            out.extend([char, letter])  # insert
        # operation 1: delete
    return "".join(out)


def add_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise at `snr_db` relative to the clip's own RMS."""
    rms = float(np.sqrt(np.mean(signal**2)))
    return (signal + rng.normal(0.0, rms / 10 ** (snr_db / 20), size=signal.shape)).astype(np.float32)


def pixel_noise(grey: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise on [0, 1] pixels, clipped back to the valid range (sensor noise)."""
    return np.clip(grey + rng.normal(0.0, std, grey.shape), 0.0, 1.0).astype(np.float32)


def blur(grey: np.ndarray, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian blur of `sigma` pixels (defocus or motion); deterministic, `rng` is unused."""
    return ndimage.gaussian_filter(grey, sigma, mode="nearest").astype(np.float32)


def occlude(grey: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A black rectangle covering `share` of the area (same aspect as the image) at a random place."""
    height, width = grey.shape
    scale = np.sqrt(share)
    box_h, box_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1))
    out = grey.copy()
    out[top : top + box_h, left : left + box_w] = 0.0
    return out
