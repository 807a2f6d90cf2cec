"""Audio transforms: decode WAV -> mono at one rate -> spectral gating -> trim -> log-mel.

Pure numpy/scipy functions (no torchaudio, no librosa) on float32 waveforms in
[-1, 1]. Gating runs before trimming because an energy-based voice detector only
finds the word once the stationary noise under it is gone. The spectra and logarithms are
computed in float64 and rounded to float32 once, at the end: in float32, numpy's
CPU-specific kernels (AVX-512, AVX2 or older) gave log-mels differing in the last bit of
1 in 7 values between machines; in float64 the differences lie far below float32's rounding
(tests/unit/test_preprocess_stage.py emulates an older CPU).
"""

from __future__ import annotations

import io
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf
from scipy import ndimage, sparse

from mmfuse.data.wav import truncation
from mmfuse.errors import ConfigError, MediaError
from mmfuse.params.preprocess import AudioParams
from mmfuse.preprocess.payload import read_payload

_TINY = 1e-12


def decode_audio(source: bytes | Path, params: AudioParams) -> tuple[np.ndarray, int]:
    """Decode a WAV (or any libsndfile format) to mono float32 samples and their rate.

    Stereo is averaged to mono; int16/int32/float are all scaled to [-1, 1] by soundfile.
    The length is checked from the header before the samples are read.
    """
    data = read_payload(source, "audio", params.max_bytes)
    cut = truncation(data)
    if cut:
        raise MediaError(cut, modality="audio")
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            rate, frames = handle.samplerate, handle.frames
            if not params.min_input_rate <= rate <= params.max_input_rate:
                raise MediaError(
                    f"sample rate {rate} Hz is outside the accepted {params.min_input_rate}-{params.max_input_rate} Hz.",  # noqa: E501
                    modality="audio",
                )
            if frames == 0:
                raise MediaError("the file holds 0 samples.", modality="audio")
            if frames < params.min_seconds * rate:
                raise MediaError(
                    f"{frames / rate * 1000:.1f} ms is shorter than the minimum of {params.min_seconds} s.",
                    modality="audio",
                )
            if frames > params.max_seconds * rate:
                raise MediaError(
                    f"{frames / rate:.1f} s is longer than the limit of {params.max_seconds} s.", modality="audio"
                )
            samples = handle.read(dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as exc:  # sf.LibsndfileError is a RuntimeError
        raise MediaError(f"the bytes are not a readable WAV file ({exc}).", modality="audio") from exc
    if samples.shape[0] == 0:
        raise MediaError("the file holds 0 samples.", modality="audio")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise MediaError(f"{bad} of {samples.size} samples are NaN or infinite.", modality="audio")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased, exact rational ratio) to the target rate."""
    if rate == target:
        return wave
    from scipy.signal import resample_poly  # ~1 s to import: paid only when a clip needs it

    divisor = gcd(rate, target)
    return resample_poly(wave, target // divisor, rate // divisor).astype(np.float32)


@lru_cache(maxsize=8)
def hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention), float64, read-only."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    window.setflags(write=False)
    return window


def stft(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred STFT (zero padding of n_fft // 2), Hann window: complex128 [n_fft // 2 + 1, frames]."""
    padded = np.zeros(len(wave) + 2 * (n_fft // 2))  # np.pad is slow for this
    padded[n_fft // 2 : n_fft // 2 + len(wave)] = wave
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop] * hann(n_fft)
    return scipy.fft.rfft(frames, axis=1).T


def istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Inverse of `stft` by weighted overlap-add; returns exactly `length` samples."""
    window = hann(n_fft)
    frames = scipy.fft.irfft(spec.T, n=n_fft, axis=1) * window
    n_frames = frames.shape[0]
    index = (np.arange(n_frames) * hop)[:, None] + np.arange(n_fft)
    total = n_fft + hop * (n_frames - 1)
    summed = np.bincount(index.ravel(), weights=frames.ravel(), minlength=total)
    norm = np.bincount(index.ravel(), weights=np.tile(window * window, n_frames), minlength=total)
    out = summed / np.maximum(norm, _TINY)
    start = n_fft // 2
    return out[start : start + length].astype(np.float32)


def reduce_noise(wave: np.ndarray, params: AudioParams) -> np.ndarray:
    """Stationary spectral gating with the noise profile estimated from the clip itself.

    The quietest `gate_noise_quantile` of frames give a per-frequency mean and std in
    dB; bins below mean + gate_n_std * std are attenuated by gate_prop_decrease, with
    the mask smoothed over a few bins and frames so the gating does not whistle.
    """
    spec = stft(wave, params.n_fft, params.hop_length)
    magnitude_db = 20.0 * np.log10(np.abs(spec) + _TINY)
    energy = np.mean(np.abs(spec) ** 2, axis=0)
    n_quiet = max(1, int(np.ceil(params.gate_noise_quantile * spec.shape[1])))
    quiet = np.argsort(energy, kind="stable")[:n_quiet]
    profile = magnitude_db[:, quiet]
    threshold = profile.mean(axis=1) + params.gate_n_std * profile.std(axis=1)
    mask = (magnitude_db > threshold[:, None]).astype(np.float64)
    mask = ndimage.uniform_filter(mask, size=(params.gate_smooth_bins, params.gate_smooth_frames), mode="nearest")
    gain = 1.0 - params.gate_prop_decrease * (1.0 - mask)
    return istft(spec * gain, params.n_fft, params.hop_length, len(wave))


def voice_bounds(wave: np.ndarray, params: AudioParams) -> tuple[int, int]:
    """Energy-based voice-activity detection: [start, end) samples from the first to the
    last frame (trim_frame samples) within trim_top_db of the loudest frame."""
    size = params.trim_frame
    n_frames = -(-len(wave) // size)
    padded = np.zeros(n_frames * size)
    padded[: len(wave)] = wave
    energy_db = 10.0 * np.log10(np.mean(padded.reshape(n_frames, size) ** 2, axis=1) + _TINY)
    active = np.flatnonzero(energy_db >= energy_db.max() - params.trim_top_db)
    return int(active[0] * size), int(min(len(wave), (active[-1] + 1) * size))


def trim_silence(wave: np.ndarray, params: AudioParams) -> np.ndarray:
    """Cut leading and trailing silence (see `voice_bounds`)."""
    start, end = voice_bounds(wave, params)
    return wave[start:end]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> sparse.csr_array:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1]; refuses a geometry with empty filters.

    Sparse on purpose: each FFT bin feeds at most two filters, and a dense product would
    go through multi-threaded BLAS, which stalls badly inside a process pool.
    """
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(fmin)), _hz_to_mel(np.float64(fmax)), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(bank.sum(axis=1) == 0)
    if empty.size:
        raise ConfigError(
            f"preprocess.audio: {n_mels} mel bands over {fmin}-{fmax} Hz leave band(s) {empty.tolist()} "
            f"without any FFT bin at n_fft={n_fft}; lower n_mels or raise n_fft."
        )
    return sparse.csr_array(bank)


def log_mel(wave: np.ndarray, params: AudioParams) -> np.ndarray:
    """Log-mel power spectrogram in dB, [n_mels, frames] float32 (frames follow the clip length)."""
    fmax = params.fmax if params.fmax is not None else params.sample_rate / 2
    bank = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, fmax)
    power = np.abs(stft(wave, params.n_fft, params.hop_length)) ** 2
    return (10.0 * np.log10(bank @ power + params.log_floor)).astype(np.float32)


def fit_frames(features: np.ndarray, params: AudioParams) -> np.ndarray:
    """Centre-crop or centre-pad (with the log floor, i.e. digital silence) to n_frames."""
    target, frames = params.n_frames, features.shape[1]
    if frames >= target:
        start = (frames - target) // 2
        return np.ascontiguousarray(features[:, start : start + target])
    before = (target - frames) // 2
    out = np.full((features.shape[0], target), 10.0 * np.log10(params.log_floor), dtype=np.float32)
    out[:, before : before + frames] = features
    return out


def clean_audio(wave: np.ndarray, rate: int, params: AudioParams) -> np.ndarray:
    """Decoded mono wave -> cleaned wave at params.sample_rate (resample, gate, trim)."""
    wave = resample(wave, rate, params.sample_rate)
    if params.denoise:
        wave = reduce_noise(wave, params)
    if params.trim:
        wave = trim_silence(wave, params)
    return wave


def audio_features(source: bytes | Path, params: AudioParams) -> np.ndarray:
    """One audio payload or file -> un-normalised log-mel [n_mels, n_frames] float32."""
    wave, rate = decode_audio(source, params)
    return fit_frames(log_mel(clean_audio(wave, rate, params), params), params)
