"""Per-file facts read from the media, so that Great Expectations can check plain columns.

GX validates tables, not files, so each referenced image and audio clip is opened once
here and reduced to a few numbers (decodable?, size, sample rate, duration, clipping,
silence, sha256). A file that cannot be read is a fact (``decodable=False`` plus the
reason), never an exception: validation must report every bad file, not stop at the first.

This module is imported by the worker processes, so it must stay light: no Great
Expectations import here.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmfuse.data.manifest import unsafe_path_reason
from mmfuse.data.media import MediaStore, open_media
from mmfuse.data.wav import truncation
from mmfuse.errors import ManifestError
from mmfuse.modality import MEDIA

WORKERS = 2
CHUNK_SIZE = 500  # files per task: big enough to amortise pickling, small enough for a live progress bar
SILENCE_FRAME_S = 0.020
INTEGER_CLIP_LEVEL = 0.999  # of full scale: an integer sample this close to the rail has hit it
FLOAT_CLIP_LEVEL = 1.0
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})

IMAGE_COLUMNS = ("decodable", "error", "width", "height", "mode", "sha256")
AUDIO_COLUMNS = (
    "decodable",
    "error",
    "sample_rate",
    "channels",
    "duration_s",
    "peak",
    "clipping_share",
    "silence_share",
    "sha256",
)
MISSING = "missing"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _error_text(exc: BaseException) -> str:
    """A short, stable reason: no object addresses, so the summary stays byte-identical across runs."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, sf.LibsndfileError):
        return exc.error_string
    return _ADDRESS.sub("", f"{type(exc).__name__}: {exc}")


def _read_bytes(store: MediaStore, rel: str) -> bytes | dict[str, Any]:
    """The file's bytes, or the not-decodable fact explaining why there are none."""
    try:
        return store.read(rel)
    except FileNotFoundError:
        return {"decodable": False, "error": MISSING}
    except ManifestError as exc:  # a link leaving the dataset folder
        return {"decodable": False, "error": str(exc)}
    except OSError as exc:
        return {"decodable": False, "error": _error_text(exc)}


def image_facts(store: MediaStore, rel: str) -> dict[str, Any]:
    """Decode an image fully (``load()``: a truncated PNG often opens fine and fails only on load)."""
    data = _read_bytes(store, rel)
    if isinstance(data, dict):
        return data
    facts: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            facts.update(decodable=True, width=image.width, height=image.height, mode=image.mode)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a fact about the file
        facts.update(decodable=False, error=_error_text(exc))
    return facts


def clip_level(subtype: str) -> float:
    """The |sample| at or above which a sample counts as clipped, for a soundfile subtype.

    Integer PCM (and the companded codecs) cannot represent anything beyond full scale, so
    a clipped waveform is flattened just below it: samples within 0.1 % of full scale count.
    Float data has no rail: values may legitimately exceed 1.0 (the avdigits ``hard`` preset
    adds noise that does), so only samples at or beyond full scale (|x| >= 1.0) count, as
    those are the ones that clip when the clip is played or converted to integer PCM.
    """
    return FLOAT_CLIP_LEVEL if subtype in FLOAT_SUBTYPES else INTEGER_CLIP_LEVEL


def silence_share(samples: np.ndarray, sample_rate: int, silence_dbfs: float) -> float:
    """Share of 20 ms frames whose RMS (over all channels) is below ``silence_dbfs`` dBFS.

    Frames do not overlap; a trailing partial frame is dropped unless the clip is shorter
    than one frame, in which case the whole clip is the one frame. Empty audio is all silence.
    """
    if samples.size == 0:
        return 1.0
    power = np.square(samples, dtype=np.float64).mean(axis=1)
    frame = max(1, round(sample_rate * SILENCE_FRAME_S))
    n_frames = len(power) // frame
    if n_frames == 0:
        rms = np.sqrt(power.mean(keepdims=True))
    else:
        rms = np.sqrt(power[: n_frames * frame].reshape(n_frames, frame).mean(axis=1))
    return float(np.mean(rms < 10.0 ** (silence_dbfs / 20.0)))


def audio_facts(store: MediaStore, rel: str, silence_dbfs: float) -> dict[str, Any]:
    """Decode a clip fully; clipping and silence as documented in clip_level and silence_share."""
    data = _read_bytes(store, rel)
    if isinstance(data, dict):
        return data
    facts: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    cut = truncation(data)  # libsndfile would read the part that arrived without a word
    if cut:
        facts.update(decodable=False, error=cut)
        return facts
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            sample_rate, channels, subtype = sound.samplerate, sound.channels, sound.subtype
            samples = sound.read(dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a fact about the file
        facts.update(decodable=False, error=_error_text(exc))
        return facts
    if not np.isfinite(samples).all():
        facts.update(decodable=False, error="contains NaN or infinite samples")
        return facts
    magnitude = np.abs(samples)
    facts.update(
        decodable=True,
        sample_rate=sample_rate,
        channels=channels,
        duration_s=len(samples) / sample_rate,
        peak=float(magnitude.max(initial=0.0)),
        clipping_share=float(np.mean(magnitude >= clip_level(subtype))) if samples.size else 0.0,
        silence_share=silence_share(samples, sample_rate, silence_dbfs),
    )
    return facts


def read_chunk(root: Path, tasks: list[tuple[str, str]], silence_dbfs: float) -> list[dict[str, Any]]:
    """Facts for a chunk of ``(kind, path)`` tasks of the dataset at `root`, in order: a worker's unit of work."""
    store = open_media(root)
    return [
        image_facts(store, rel) if kind == "image" else audio_facts(store, rel, silence_dbfs) for kind, rel in tasks
    ]


def _run_tasks(
    root: Path, tasks: list[tuple[str, str]], silence_dbfs: float, workers: int, chunk_size: int, console: Console
) -> list[dict[str, Any]]:
    """Read all tasks in chunks, on a process pool when there is more than one chunk.

    Workers are spawned, so, as always with spawn, a script that calls this must guard
    its entry point with ``if __name__ == "__main__":``.
    """
    chunks = [tasks[i : i + chunk_size] for i in range(0, len(tasks), chunk_size)]
    results: list[list[dict[str, Any]]] = [[] for _ in chunks]
    columns = (TextColumn("reading media"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("media", total=len(tasks))
        if len(chunks) <= 1 or workers <= 1:
            for index, chunk in enumerate(chunks):
                results[index] = read_chunk(root, chunk, silence_dbfs)
                progress.advance(bar, len(chunk))
        else:
            # spawn, not fork: the caller may hold threads (Prefect, the progress bar), and
            # forking a threaded process can deadlock.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(read_chunk, root, chunk, silence_dbfs): i for i, chunk in enumerate(chunks)}
                for future in as_completed(futures):
                    index = futures[future]
                    results[index] = future.result()
                    progress.advance(bar, len(chunks[index]))
    return [facts for chunk in results for facts in chunk]


def collect_facts(
    frame: pd.DataFrame,
    dataset_root: Path,
    silence_dbfs: float,
    *,
    workers: int = WORKERS,
    chunk_size: int = CHUNK_SIZE,
    console: Console | None = None,
) -> pd.DataFrame:
    """Facts for every row of a manifest, as ``image_*`` and ``audio_*`` columns plus ``text_length``.

    The result shares ``frame``'s index. Rows without a file of a modality, or whose path
    is unsafe, hold nulls in that modality's columns (GX skips nulls in value checks).
    Each distinct file is read once, however many rows reference it.
    """
    # empty and unsafe paths are not opened (the manifest suite reports unsafe ones)
    targets = {kind: [rel if rel and not unsafe_path_reason(rel) else None for rel in frame[kind]] for kind in MEDIA}
    tasks = sorted({(kind, rel) for kind, rels in targets.items() for rel in rels if rel is not None})
    console = console or Console(stderr=True)
    read = dict(zip(tasks, _run_tasks(Path(dataset_root), tasks, silence_dbfs, workers, chunk_size, console)))

    out = pd.DataFrame(index=frame.index)
    for kind, names in (("image", IMAGE_COLUMNS), ("audio", AUDIO_COLUMNS)):
        rows = [read[(kind, rel)] if rel is not None else {} for rel in targets[kind]]
        table = pd.DataFrame.from_records(rows, columns=list(names), index=frame.index)
        table["decodable"] = table["decodable"].astype(object).where(table["decodable"].notna(), None)
        for name in names:
            out[f"{kind}_{name}"] = table[name]
    out["text_length"] = frame["text"].str.len()
    return out
