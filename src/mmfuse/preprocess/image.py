"""Image transforms: decode any PNG/JPEG to grey, resize to a fixed square, denoise.

All functions are pure and take and give float32 arrays in [0, 1], so the batch stage
and the service produce bit-identical features from the same bytes. The filters compute
in float64 and round to float32 once, at the end: numpy picks its exp and its reductions by
the CPU it runs on (AVX-512, AVX2 or older kernels), and in float32 those differed in the
last bit of 1 in 4 pixels between kernels (tests/unit/test_preprocess_stage.py, emulating an
older CPU); in float64 such differences lie far below float32's rounding, so the same bytes
come out on any x86-64 machine.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mmfuse.errors import MediaError
from mmfuse.params.preprocess import ImageParams
from mmfuse.preprocess.payload import read_payload

ACCEPTED_FORMATS = ("PNG", "JPEG")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_image(source: bytes | Path, params: ImageParams) -> np.ndarray:
    """Decode a PNG/JPEG (grey, colour, palette or 16-bit) to grey float32 [h, w] in [0, 1].

    Sizes are checked before pixels are decoded, so a decompression bomb costs nothing.
    """
    data = read_payload(source, "image", params.max_bytes)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise MediaError("the bytes are not a decodable PNG or JPEG image.", modality="image") from exc
    except Image.DecompressionBombError as exc:  # Pillow refuses before allocating: name our limit
        raise MediaError(
            f"the image declares too many pixels ({exc}); each side must be <= {params.max_side}.", modality="image"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"the image header is truncated or corrupt ({exc}).", modality="image") from exc
    if img.format not in ACCEPTED_FORMATS:
        raise MediaError(
            f"format {img.format} is not accepted; send one of {', '.join(ACCEPTED_FORMATS)}.", modality="image"
        )
    width, height = img.size
    if min(width, height) < params.min_side:
        raise MediaError(
            f"{width}x{height} pixels is too small; each side must be >= {params.min_side}.", modality="image"
        )
    if max(width, height) > params.max_side:
        raise MediaError(
            f"{width}x{height} pixels is too large; each side must be <= {params.max_side}.", modality="image"
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"the {img.format} data is truncated or corrupt ({exc}).", modality="image") from exc
    if "exif" in img.info:  # camera JPEGs store their rotation as a tag
        ImageOps.exif_transpose(img, in_place=True)
    if img.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img, dtype=np.float32) / np.float32(65535.0)
    return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0)


def resize(grey: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize to size x size; no-op when already there.

    The aspect ratio is not kept: a digit photographed in a 4:3 frame is squeezed rather
    than padded with a guessed background.
    """
    if grey.shape == (size, size):
        return grey
    resized = Image.fromarray(grey.astype(np.float32, copy=False)).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _neighbourhood(grey: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's (2r+1)^2 neighbours as stacked shifted images [k, H, W] (reflect at the
    borders), and each shift's squared distance [k, 1, 1]: one vectorised pass per filter."""
    side = 2 * radius + 1
    padded = np.pad(grey.astype(np.float64), radius, mode="reflect")
    views = np.lib.stride_tricks.sliding_window_view(padded, grey.shape).reshape(side * side, *grey.shape)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    distance2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(-1, 1, 1)
    return views, distance2


def _weighted_mean(views: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (np.einsum("kij,kij->ij", weights, views) / weights.sum(axis=0)).astype(np.float32)


def bilateral(grey: np.ndarray, radius: int, sigma_space: float, sigma_range: float) -> np.ndarray:
    """Edge-preserving smoothing: neighbours weigh by distance and by intensity likeness."""
    views, distance2 = _neighbourhood(grey, radius)
    exponent = distance2 / (-2 * sigma_space**2) + (views - grey) ** 2 / (-2 * sigma_range**2)
    return _weighted_mean(views, np.exp(exponent))


def nl_means(grey: np.ndarray, patch: int, search: int, h: float) -> np.ndarray:
    """Non-local means (Buades et al.): average the pixels of the search window whose
    surrounding patch looks alike, weighted by exp(-patch distance / h^2)."""
    views, _ = _neighbourhood(grey, search // 2)
    distance = ndimage.uniform_filter((views - grey) ** 2, size=(1, patch, patch), mode="reflect")
    return _weighted_mean(views, np.exp(distance / (-h * h)))


def denoise(grey: np.ndarray, params: ImageParams) -> np.ndarray:
    """Apply the configured denoiser (params.image.denoise) to a grey float32 image."""
    method = params.denoise
    if method == "none":
        return grey
    if method == "median":
        return ndimage.median_filter(grey, size=params.median_size, mode="reflect")
    if method == "gaussian":
        return ndimage.gaussian_filter(grey, sigma=params.gaussian_sigma, mode="reflect")
    if method == "bilateral":
        return bilateral(grey, params.bilateral_radius, params.bilateral_sigma_space, params.bilateral_sigma_range)
    return nl_means(grey, params.nlmeans_patch, params.nlmeans_search, params.nlmeans_h)


def prepare_image(grey: np.ndarray, params: ImageParams) -> np.ndarray:
    """Decoded grey image -> un-normalised feature [size, size] float32 (resize, then denoise)."""
    return denoise(resize(grey, params.size), params).astype(np.float32, copy=False)


def image_features(source: bytes | Path, params: ImageParams) -> np.ndarray:
    """One image payload or file -> un-normalised feature [size, size] float32."""
    return prepare_image(decode_image(source, params), params)
