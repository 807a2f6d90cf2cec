"""Known-answer tests for the audio transforms, on synthetic signals."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.errors import ConfigError, MediaError
from mmfuse.params.preprocess import AudioParams
from mmfuse.preprocess.audio import (
    audio_features,
    decode_audio,
    istft,
    log_mel,
    mel_filterbank,
    reduce_noise,
    resample,
    stft,
    voice_bounds,
)

RATE = 8000


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("start_s", [0.2, 0.2053, 0.3117])
def test_trim_finds_a_tone_padded_with_silence_within_10_ms(make_tone, start_s):
    tone = make_tone(440, 0.3, RATE)
    start = int(start_s * RATE)
    wave = np.zeros(start + len(tone) + int(0.25 * RATE), dtype=np.float32)
    wave[start : start + len(tone)] = tone
    wave += np.random.default_rng(0).normal(0, 1e-4, wave.shape).astype(np.float32)  # -74 dB room hiss

    found_start, found_end = voice_bounds(wave, AudioParams(trim=True))

    assert abs(found_start - start) <= 0.010 * RATE
    assert abs(found_end - (start + len(tone))) <= 0.010 * RATE


def test_spectral_gating_reduces_white_noise_by_measured_db(make_tone):
    t = np.arange(RATE) / RATE
    clean = np.where((t > 0.3) & (t < 0.7), make_tone(440, 1.0, RATE), 0).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.1, RATE).astype(np.float32)

    out = reduce_noise(clean + noise, AudioParams(denoise=True))

    overall_db = 10 * np.log10(np.mean(noise**2) / np.mean((out - clean) ** 2))
    quiet = t < 0.25
    noise_only_db = 10 * np.log10(np.mean(noise[quiet] ** 2) / np.mean(out[quiet] ** 2))
    inside = (t > 0.35) & (t < 0.65)
    tone_db = 10 * np.log10(np.mean(out[inside] ** 2) / np.mean(clean[inside] ** 2))
    assert overall_db >= 8.0  # measured 10.4 dB
    assert noise_only_db >= 15.0  # measured 18.8 dB
    assert abs(tone_db) <= 1.5  # the tone itself survives (measured -0.9 dB)


def test_stft_inverts_exactly():
    wave = np.random.default_rng(2).normal(0, 0.3, 3001).astype(np.float32)
    back = istft(stft(wave, 256, 80), 256, 80, len(wave))
    np.testing.assert_allclose(back, wave, atol=1e-5)


@pytest.mark.parametrize(
    ("rate", "target"), [(16000, 8000), (22050, 8000), (44100, 8000), (48000, 8000), (8000, 16000)]
)
def test_resampling_preserves_a_tone_frequency(make_tone, rate, target):
    out = resample(make_tone(1000, 1.0, rate), rate, target)
    assert len(out) == target
    assert dominant_frequency(out, target) == pytest.approx(1000, abs=2)


def test_resampling_removes_content_above_the_new_nyquist(make_tone):
    out = resample(make_tone(6000, 1.0, 48000), 48000, RATE)  # 6 kHz cannot exist at 8 kHz
    assert np.sqrt(np.mean(out**2)) < 0.01


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_32", "FLOAT"])
def test_decodes_stereo_at_any_rate_and_depth_to_the_same_mono(make_wav, make_tone, subtype):
    left = make_tone(500, 0.5, 48000, 0.4)
    stereo = np.stack([left, -left * 0.5], axis=1)

    wave, rate = decode_audio(make_wav(stereo, 48000, subtype), AudioParams())
    features = audio_features(make_wav(stereo, 48000, subtype), AudioParams())

    assert rate == 48000 and wave.dtype == np.float32
    np.testing.assert_allclose(wave, left * 0.25, atol=1e-4)  # channel mean, scaled to [-1, 1]
    assert features.shape == (40, 100) and features.dtype == np.float32


def test_log_mel_puts_a_tone_in_the_right_band(make_tone):
    params = AudioParams()
    features = log_mel(make_tone(1000, 0.5, RATE), params)
    assert features.shape == (40, 1 + (RATE // 2) // 80)
    weights = mel_filterbank(RATE, 256, 40, 0.0, 4000.0).toarray()
    expected = np.argmax(weights[:, int(round(1000 / (RATE / 256)))])
    assert abs(int(np.argmax(features[:, 25])) - expected) <= 1


def test_too_many_mel_bands_for_the_fft_is_a_config_error():
    with pytest.raises(ConfigError, match="without any FFT bin"):
        log_mel(np.zeros(800, dtype=np.float32), AudioParams(n_mels=128, n_fft=64, hop_length=32))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda wav: b"", "audio: the payload is empty"),
        (lambda wav: wav(np.zeros(0, dtype=np.float32)), "audio: the file holds 0 samples"),
        (
            lambda wav: wav(np.insert(np.full(800, 0.1, dtype=np.float32), 400, np.nan), subtype="FLOAT"),
            "audio: 1 of 801 samples are NaN",
        ),
        (lambda wav: wav(np.zeros(11 * 8000, dtype=np.float32)), "audio: 11.0 s is longer than the limit"),
        (lambda wav: wav(np.zeros(1, dtype=np.float32)), "audio: 0.1 ms is shorter than the minimum of 0.05 s"),
        (lambda wav: wav(np.zeros(400, dtype=np.float32), rate=4000), "audio: sample rate 4000 Hz is outside"),
        (lambda wav: b"RIFF\x00\x00\x00\x00WAVEnot really", "audio: the bytes are not a readable WAV"),
    ],
    ids=["empty", "zero-samples", "nan", "too-long", "too-short", "rate", "garbage"],
)
def test_bad_audio_gives_a_specific_media_error(make_wav, payload, message):
    with pytest.raises(MediaError, match=message) as raised:
        audio_features(payload(make_wav), AudioParams())
    assert raised.value.modality == "audio"
    assert str(raised.value) == f"audio: {raised.value.message}"


def test_missing_audio_file_is_a_media_error(tmp_path):
    with pytest.raises(MediaError, match="audio: cannot read") as raised:
        audio_features(tmp_path / "nope.wav", AudioParams())
    assert raised.value.modality == "audio"
