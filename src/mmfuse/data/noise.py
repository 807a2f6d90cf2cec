"""The noise models, one implementation each, used wherever noise is made.

The avdigits `hard` preset degrades its clips with `add_noise` and its transcripts with
`typos`; the evaluate stage's robustness curves corrupt the raw test media with the same
functions (plus `pixel_noise`, `blur` and `occlude` on images); the traffic simulator
shifts live requests with them too. Every function takes its randomness as an explicit
`rng`, so a seed reproduces the noise exactly.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
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


def salt_pepper(grey: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """`share` of the pixels set to black or white at random (dead or hot sensor pixels)."""
    hit = rng.random(grey.shape) < share
    return np.where(hit, (rng.random(grey.shape) < 0.5).astype(np.float32), grey).astype(np.float32)


def invert(grey: np.ndarray, amount: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Contrast inversion blended in by `amount` (1: the negative, as a camera in another mode sends)."""
    return ((1.0 - amount) * grey + amount * (1.0 - grey)).astype(np.float32)


def clip_gain(signal: np.ndarray, gain_db: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """`gain_db` of gain, then clipping at full scale (an overdriven microphone)."""
    return np.clip(signal * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


DROPOUT_BLOCK = 160  # samples per lost block: 20 ms at 8 kHz, a typical packet


def drop_blocks(signal: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """`share` of the clip's 160-sample blocks zeroed at random (packets lost on the way)."""
    out = signal.astype(np.float32).copy()
    blocks = -(-len(out) // DROPOUT_BLOCK)
    for block in np.flatnonzero(rng.random(blocks) < share):
        out[block * DROPOUT_BLOCK : (block + 1) * DROPOUT_BLOCK] = 0.0
    return out


RANDOM_WORDS = ("window", "green", "later", "engine", "maybe", "table", "river", "north", "quiet", "paper")


def random_words(text: str, share: float, rng: np.random.Generator) -> str:
    """Each word replaced, with probability `share`, by an unrelated word (another operator's note)."""
    return " ".join(
        RANDOM_WORDS[rng.integers(len(RANDOM_WORDS))] if rng.random() < share else word for word in text.split(" ")
    )


# Latin letters and the Cyrillic letters that look like them: a note typed on another keyboard layout.
_LOOKALIKES = dict(zip("aceopxyiABCEHKMOPTX", "асеорхуіАВСЕНКМОРТХ"))


def other_script(text: str, share: float, rng: np.random.Generator) -> str:
    """Each letter that has a Cyrillic look-alike written with it, with probability `share`."""
    return "".join(_LOOKALIKES[ch] if ch in _LOOKALIKES and rng.random() < share else ch for ch in text)


def jpeg(grey: np.ndarray, quality: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """The image saved as a JPEG of `quality` (1-95) and read back: block and ringing artefacts of a
    camera that compresses hard; deterministic, `rng` is unused."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=int(quality)
    )
    return (np.asarray(Image.open(buffer), dtype=np.float32) / 255).astype(np.float32)


def quantise(signal: np.ndarray, bits: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Every sample rounded to one of 2^`bits` levels over [-1, 1] (a cheap converter or codec);
    deterministic, `rng` is unused."""
    step = 2.0 / 2 ** int(bits)
    return np.clip(np.round(signal / step) * step, -1.0, 1.0).astype(np.float32)


def truncate(text: str, share: float, rng: np.random.Generator | None = None) -> str:
    """The last `share` of the characters lost (a note cut off in transit); deterministic, `rng` is unused."""
    return text[: len(text) - int(round(len(text) * share))]
