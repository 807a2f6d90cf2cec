"""Traffic simulator: real multipart requests to a running service, optionally shifted.

It exercises the whole loop the monitoring flow watches (service -> inference log ->
drift check -> retraining) with held-out data, and the shifts are the failure modes the
drift checks must catch: a noisier microphone, a blurry camera, garbled notes, a change
in which classes occur.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

from mmfuse.data.manifest import read_manifest
from mmfuse.data.media import MediaStore, open_media
from mmfuse.data.noise import add_noise, blur, typos
from mmfuse.errors import MMFuseError

SHIFTS = ("audio-noise", "image-blur", "text-garble", "label-prior")
NOISE_SNR_DB = -9.5  # white noise at 3x the clip's RMS: unmistakable
BLUR_SIGMA = 2.5  # pixels
GARBLE_RATE = 1.0  # every character of the note substituted, dropped or doubled
PRIOR_LABELS = 2  # label-prior keeps only this many labels


def _noisy_wav(data: bytes, rng: np.random.Generator) -> bytes:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    out = io.BytesIO()
    sf.write(out, np.clip(add_noise(samples, NOISE_SNR_DB, rng), -1, 1), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _blurred(data: bytes) -> bytes:
    grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
    out = io.BytesIO()
    Image.fromarray(np.round(blur(grey, BLUR_SIGMA, None) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _pick(rows: pd.DataFrame, n: int, shift: str | None, rng: np.random.Generator) -> pd.DataFrame:
    if shift == "label-prior":
        labels = sorted(rows["label"].unique())
        keep = rng.choice(labels, size=min(PRIOR_LABELS, len(labels)), replace=False)
        rows = rows[rows["label"].isin(keep)]
    return rows.iloc[rng.choice(len(rows), size=n, replace=n > len(rows))]


def _payload(store: MediaStore, row: pd.Series, shift: str | None, rng: np.random.Generator) -> tuple[dict, dict]:
    files: dict[str, tuple[str, bytes, str]] = {}
    if row["image"]:
        image = store.read(row["image"])
        files["image"] = ("image.png", _blurred(image) if shift == "image-blur" else image, "image/png")
    if row["audio"]:
        audio = store.read(row["audio"])
        files["audio"] = ("audio.wav", _noisy_wav(audio, rng) if shift == "audio-noise" else audio, "audio/wav")
    data = {}
    if row["text"]:
        data["text"] = typos(row["text"], GARBLE_RATE, rng) if shift == "text-garble" else row["text"]
    return files, data


def simulate_traffic(
    url: str,
    manifest: Path,
    n: int,
    shift: str | None = None,
    seed: int = 0,
    token: str | None = None,
    feedback: float = 0.0,
    split: str = "test",
    client: httpx.Client | None = None,
    capture: bool = False,
) -> dict[str, Any]:
    """Send `n` /predict requests drawn from `split` of the manifest; return counts.

    `feedback` is the share of answered requests whose true label is then sent to
    /feedback. `client` lets tests pass an in-process client (its base URL wins). `capture` asks
    the service to keep each request's raw inputs (X-MMFuse-Capture), for `mmfuse harvest`.
    Returns {"sent", "answered", "errors" (status -> count), "feedback", "feedback_errors", "correct", "shift"}.
    """
    if shift is not None and shift not in SHIFTS:
        raise MMFuseError(f"unknown shift {shift!r}; choose one of {', '.join(SHIFTS)}.")
    if not 0.0 <= feedback <= 1.0:
        raise MMFuseError(f"feedback must be a share between 0 and 1, got {feedback}.")
    frame = read_manifest(Path(manifest))
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise MMFuseError(f"{manifest} has no {split!r} rows to send.")
    rng = np.random.default_rng(seed)
    store = open_media(Path(manifest).parent)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if capture:
        headers["X-MMFuse-Capture"] = "true"
    own = client is None
    http = client or httpx.Client(base_url=url, timeout=60.0)
    counts: dict[str, Any] = {
        "sent": 0,
        "answered": 0,
        "errors": {},
        "feedback": 0,
        "feedback_errors": {},
        "correct": 0,
        "shift": shift,
    }
    try:
        for _, row in _pick(rows, n, shift, rng).iterrows():
            files, data = _payload(store, row, shift, rng)
            response = http.post("/predict", files=files or None, data=data, headers=headers)
            counts["sent"] += 1
            if response.status_code != 200:
                counts["errors"][str(response.status_code)] = counts["errors"].get(str(response.status_code), 0) + 1
                continue
            counts["answered"] += 1
            if rng.random() < feedback:
                body = {"request_id": response.json()["request_id"], "label": str(row["label"])}
                answer = http.post("/feedback", json=body, headers=headers)
                if answer.status_code != 200:
                    counts["feedback_errors"][str(answer.status_code)] = (
                        counts["feedback_errors"].get(str(answer.status_code), 0) + 1
                    )
                    continue
                counts["feedback"] += 1
                counts["correct"] += int(answer.json()["correct"])
    finally:
        if own:
            http.close()
    return counts
