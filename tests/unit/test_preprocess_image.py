"""Image decoding, resizing and denoising on synthetic pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmfuse.errors import MediaError
from mmfuse.params.preprocess import ImageParams
from mmfuse.preprocess.image import decode_image, denoise, image_features


def test_grey_png_at_the_output_size_is_only_scaled(make_image, make_digit):
    pixels = make_digit(3)
    features = image_features(make_image(pixels), ImageParams(denoise="none"))
    assert features.dtype == np.float32 and features.shape == (28, 28)
    np.testing.assert_array_equal(features, pixels.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_colour_and_any_size_become_grey_at_the_fixed_size(make_image, make_digit, fmt):
    grey = np.asarray(Image.fromarray(make_digit(5)).resize((90, 64)))
    colour = np.stack([grey, grey, grey], axis=2)
    features = image_features(
        make_image(colour, fmt, quality=95) if fmt == "JPEG" else make_image(colour), ImageParams()
    )
    assert features.shape == (28, 28)
    assert 0.0 <= features.min() and features.max() <= 1.0
    reference = image_features(make_image(make_digit(5)), ImageParams())
    assert np.corrcoef(features.ravel(), reference.ravel())[0, 1] > 0.8


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    pixels = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    grey = decode_image(tmp_path / "deep.png", ImageParams())
    assert grey.min() == 0.0 and grey.max() == 1.0


@pytest.mark.parametrize("method", ["median", "gaussian", "bilateral", "nlmeans"])
def test_every_denoiser_brings_a_noisy_image_closer_to_the_clean_one(method):
    clean = np.kron(np.array([[0.25, 0.75], [0.75, 0.25]], dtype=np.float32), np.ones((14, 14), dtype=np.float32))
    noisy = (clean + np.random.default_rng(0).normal(0, 0.08, clean.shape)).astype(np.float32)
    out = denoise(noisy, ImageParams(denoise=method))
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert np.mean((out - clean) ** 2) < 0.7 * np.mean((noisy - clean) ** 2)


def test_median_removes_salt_and_pepper_exactly(make_digit):
    clean = (make_digit(9) > 0).astype(np.float32)
    noisy = clean.copy()
    noisy[5, 20] = 1.0 - noisy[5, 20]
    assert np.array_equal(denoise(noisy, ImageParams(denoise="median")), denoise(clean, ImageParams(denoise="median")))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda img, digit: img(np.zeros((1, 1), dtype=np.uint8)), r"image: 1x1 pixels is too small"),
        (lambda img, digit: img(digit(1))[:60], "image: the PNG data is truncated or corrupt"),
        (lambda img, digit: b"", "image: the payload is empty"),
        (lambda img, digit: b"GIF89a not an accepted image", "image: the bytes are not a decodable"),
        (lambda img, digit: img(digit(1), "BMP"), "image: format BMP is not accepted"),
        (lambda img, digit: img(np.zeros((8, 5000), dtype=np.uint8)), "image: 5000x8 pixels is too large"),
    ],
    ids=["1x1", "truncated", "empty", "not-an-image", "bmp", "too-large"],
)
def test_bad_images_give_a_specific_media_error(make_image, make_digit, payload, message):
    with pytest.raises(MediaError, match=message) as raised:
        image_features(payload(make_image, make_digit), ImageParams())
    assert raised.value.modality == "image"  # structured: the service blames the field without parsing
    assert str(raised.value) == f"image: {raised.value.message}"


def test_oversized_payload_is_refused_before_decoding(make_image, make_digit):
    with pytest.raises(MediaError, match="image: the payload is .* over the limit of 100"):
        image_features(make_image(make_digit(1)), ImageParams(max_bytes=100))
