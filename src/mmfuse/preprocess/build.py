"""The preprocess stage's work: manifest -> deduplicated, normalised tensors per split.

Flow: read and check the manifest; decode and featurise every record as Dask tasks
(`mmfuse.preprocess.cluster`: a local cluster, or the one $MMFUSE_DASK_ADDRESS names; the
per-record transforms are the very functions `preprocess_sample` uses), the features waiting
on disk with their moments (`Spill`) and only per-record fingerprints in memory;
drop train duplicates and train records leaking into val/test; fit normalisation
and the vocabulary on what is left of train; normalise every split, a shard at a time, with
the same `PreprocessState` methods the service uses; write everything atomically.

Outputs are byte-identical across runs, worker counts and clusters: records are processed in
(split, sample_id) order in fixed chunks, results are reassembled by chunk index whatever
order workers finish in, the normalisation statistics are float64 sums over records in that
order, and JSON is written with sorted keys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from distributed import Client, as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmfuse.data.manifest import (
    REQUIRED_SPLITS,
    SPLITS,
    given,
    read_manifest,
    text_given,
)
from mmfuse.data.media import open_media
from mmfuse.errors import ManifestError, MediaError, MMFuseError
from mmfuse.io import atomic_dir, write_json
from mmfuse.modality import AUDIO, IMAGE, MODALITIES, TEXT
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.preprocess.audio import clean_audio, decode_audio, fit_frames, log_mel
from mmfuse.preprocess.cluster import dask_client
from mmfuse.preprocess.dedup import Fingerprints, content_hash, find_duplicates, signature
from mmfuse.preprocess.image import decode_image, prepare_image
from mmfuse.preprocess.payload import read_media
from mmfuse.preprocess.processed import SHARD_ROWS, split_dir, write_index, write_shard
from mmfuse.preprocess.state import PreprocessState
from mmfuse.preprocess.text import Vocabulary, clean_text

FORMAT = "mmfuse.processed/2"  # 2: each split a folder of shards (mmfuse.preprocess.processed)
_MAX_LISTED_ERRORS = 10

Record = tuple[str, str, str, str]  # sample_id, image path, audio path, text, as in the manifest ("" = absent)


def analyse_records(
    records: list[Record], root: Path, params: PreprocessParams, spill: Spill, chunk: int
) -> dict[str, Any]:
    """Featurise chunk `chunk` of the records (runs in a worker): un-normalised features and
    their moments, written to `spill` here, and returned: content hashes and near-duplicate
    signatures, plus one message per bad record.

    Media are read here too (from the packed shards, or checking loose paths stay inside
    `root`), and features written here, so that work is spread over the cores and only
    fingerprints travel back: sending the features to the stage's process and writing them
    there cost it about a core of its own.
    """
    n, size, audio = len(records), params.image.size, params.audio
    cells = params.dedup.grid**2
    out: dict[str, Any] = {
        "image": np.zeros((n, size, size), dtype=np.float32),
        "audio": np.zeros((n, audio.n_mels, audio.n_frames), dtype=np.float32),
        "image_signature": np.zeros((n, cells)),
        "audio_signature": np.zeros((n, cells)),
        "present": np.zeros((n, len(MODALITIES)), dtype=bool),
        # per-record sums and sums of squares: train statistics without a pass over all features
        "image_moments": np.zeros((n, 2)),
        "audio_moments": np.zeros((n, 2, audio.n_mels)),
        "image_sha": [None] * n,
        "audio_sha": [None] * n,
        "text_norm": [None] * n,
        "errors": [],
    }
    store = open_media(root)
    for k, (sample_id, image_path, audio_path, text) in enumerate(records):
        try:
            if image_path:
                pixels = decode_image(read_media(store, image_path, "image", params.image.max_bytes), params.image)
                out["image"][k] = prepare_image(pixels, params.image)
                out["image_moments"][k] = _moments(out["image"][k], axis=None)
                out["image_sha"][k] = content_hash(pixels)
                out["image_signature"][k] = signature(pixels, params.dedup.grid)
                out["present"][k, 0] = True
            if audio_path:
                wave, rate = decode_audio(read_media(store, audio_path, "audio", audio.max_bytes), audio)
                mel = log_mel(clean_audio(wave, rate, audio), audio)
                out["audio"][k] = fit_frames(mel, audio)
                out["audio_moments"][k] = _moments(out["audio"][k], axis=1)
                out["audio_sha"][k] = f"{rate}:{content_hash(wave)}"
                out["audio_signature"][k] = signature(mel, params.dedup.grid)
                out["present"][k, 1] = True
            if text_given(text):
                out["text_norm"][k] = clean_text(text, params.text)
                out["present"][k, 2] = True
        except MMFuseError as exc:  # MediaError, or ManifestError for a path leaving the root
            out["errors"].append(f"{sample_id}: {exc}")
    spill.put(chunk, out)
    return out


def _moments(features: np.ndarray, axis: int | None) -> np.ndarray:
    values = features.astype(np.float64)
    return np.stack([values.sum(axis=axis), np.square(values).sum(axis=axis)])


def _mean_std(total: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of `count` values from their summed moments [2, ...] (std 1 where it would be 0)."""
    if count == 0:
        return np.zeros(total.shape[1:]), np.ones(total.shape[1:])
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _ordered_records(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[Record]]:
    """Check the manifest for this stage's needs and list records in (split, sample_id) order."""
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise ManifestError(f"manifest splits {unknown} are not among {list(SPLITS)}.")
    duplicated = frame["sample_id"][frame["sample_id"].duplicated()].tolist()
    if duplicated:
        raise ManifestError(f"sample_id must be unique; repeated: {duplicated[:_MAX_LISTED_ERRORS]}.")
    empty = frame["sample_id"][~given(frame).any(axis=1)].tolist()
    if empty:
        raise ManifestError(f"records without any modality: {empty[:_MAX_LISTED_ERRORS]}.")
    frame = frame.assign(_order=frame["split"].map(SPLITS.index)).sort_values(["_order", "sample_id"], kind="stable")
    frame = frame.drop(columns="_order").reset_index(drop=True)
    return frame, list(frame[["sample_id", "image", "audio", "text"]].itertuples(index=False, name=None))


class Spill:
    """Every chunk's image and audio features (un-normalised) and their per-record moments, in
    files until the splits are written: the workers write them (`put`), the stage reads them.

    The normalisation needs train statistics, and those need deduplication over every record
    first, so features wait somewhere: on disk, not in memory, which held 3.7 GB at 100,000
    samples (benchmarks/results/scale.json). One chunk per file, in the chunk order of
    `_analyse_all`; `take` and `summed` read each chunk the rows fall in once per call. Nothing
    is cached between calls: Dask keeps a task's arguments while its result is held, and a
    cached chunk in each shard task's copy of the spill grew a worker by ~6 MB a shard
    (578 MB at the 49 shards of 100,000 samples).
    """

    def __init__(self, folder: Path, params: PreprocessParams) -> None:
        self.folder, self.chunk_size = Path(folder), params.chunk_size
        n_mels = params.audio.n_mels
        self.shapes = {  # per record: shape and dtype
            "image": ((params.image.size, params.image.size), np.float32),
            "audio": ((n_mels, params.audio.n_frames), np.float32),
            "image_moments": ((2,), np.float64),
            "audio_moments": ((2, n_mels), np.float64),
        }

    def put(self, chunk: int, result: dict[str, Any]) -> None:
        """Move the features out of a chunk's `result` into files (each written whole, then renamed:
        a task Dask reruns after a lost worker never leaves half a file behind)."""
        for key in self.shapes:
            target = self.folder / f"{chunk:05d}-{key}.npy"
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            with open(partial, "wb") as handle:
                np.save(handle, result.pop(key), allow_pickle=False)
            os.replace(partial, target)

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        """[len(rows), *shape]: the values `key` of records `rows` (ascending), a fresh copy."""
        shape, dtype = self.shapes[key]
        out = np.empty((len(rows), *shape), dtype=dtype)
        for held, values in self._parts(key, rows):
            out[held] = values
        return out

    def summed(self, key: str, rows: np.ndarray) -> np.ndarray:
        """The values `key` of records `rows` (ascending) added one record at a time, in record
        order: the same bits as numpy's sum over axis 0 of them held whole, which adds row by row."""
        total = np.zeros(self.shapes[key][0], dtype=np.float64)
        for _, values in self._parts(key, rows):
            for value in values:
                total += value
        return total

    def _parts(self, key: str, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(which of `rows` a chunk holds, their values), chunk by chunk in order."""
        chunk_of = rows // self.chunk_size
        for chunk in np.unique(chunk_of):
            held = chunk_of == chunk
            values = np.load(self.folder / f"{int(chunk):05d}-{key}.npy", allow_pickle=False)
            yield held, values[rows[held] - chunk * self.chunk_size]


def _progress(step: str) -> Progress:
    return Progress(TextColumn(step), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def _analyse_all(
    client: Client, records: list[Record], root: Path, params: PreprocessParams, spill: Spill
) -> dict[str, Any]:
    """Run `analyse_records` over fixed chunks as Dask tasks, with a progress bar; the workers
    write features to `spill`, the per-record fingerprints they return are copied into place."""
    size = params.chunk_size
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    merged: dict[str, Any] = {"errors": []}
    futures = {
        client.submit(analyse_records, part, root, params, spill, i, pure=False): i for i, part in enumerate(chunks)
    }
    with _progress("preprocess") as progress:
        task = progress.add_task("records", total=len(records))
        for future in as_completed(futures):
            index, result = futures.pop(future), future.result()
            future.release()  # the worker may drop its copy now
            start = index * size
            for key, part in result.items():
                if key == "errors":
                    merged[key].extend(part)
                    continue
                if key not in merged:
                    merged[key] = (
                        np.zeros((len(records), *part.shape[1:]), part.dtype)
                        if isinstance(part, np.ndarray)
                        else [None] * len(records)
                    )
                merged[key][start : start + len(part)] = part
            progress.advance(task, len(chunks[index]))
    merged["errors"] = sorted(merged["errors"])
    return merged


def _label_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically after them."""
    return sorted(labels, key=lambda label: (0, int(label), "") if label.isdigit() else (1, 0, label))


def fit_state(
    features: dict[str, Any], spill: Spill, labels: list[str], train: np.ndarray, params: PreprocessParams
) -> PreprocessState:
    """Normalisation statistics, vocabulary and label list from the kept train records only."""
    present = features["present"]
    images = np.flatnonzero(train & present[:, IMAGE])
    clips = np.flatnonzero(train & present[:, AUDIO])
    image_mean, image_std = _mean_std(spill.summed("image_moments", images), len(images) * params.image.size**2)
    audio_mean, audio_std = _mean_std(spill.summed("audio_moments", clips), len(clips) * params.audio.n_frames)
    texts = [text for text, used in zip(features["text_norm"], train & present[:, TEXT]) if used]
    return PreprocessState(
        params=params,
        labels=tuple(_label_order({label for label, used in zip(labels, train) if used})),
        vocab=Vocabulary.fit(texts, params.text.min_freq),
        image_mean=float(image_mean),
        image_std=float(image_std),
        audio_mean=tuple(float(v) for v in audio_mean),
        audio_std=tuple(float(v) for v in audio_std),
    )


def shard_tensors(
    spill: Spill,
    rows: np.ndarray,
    present: np.ndarray,
    texts: list[str | None],
    labels: np.ndarray,
    state: PreprocessState,
) -> dict[str, np.ndarray]:
    """The tensors of records `rows` (ascending), given their `present` mask, normalised texts and
    label ids: image and audio normalised with the train statistics (elementwise, so a shard gives
    the same bits as a whole split), absent ones 0."""
    image, audio = spill.take("image", rows), spill.take("audio", rows)
    state.normalise_image(image, out=image)
    state.normalise_audio(audio, out=audio)
    image[~present[:, IMAGE]] = 0.0
    audio[~present[:, AUDIO]] = 0.0
    text = np.zeros((len(rows), state.params.text.max_len), dtype=np.int64)
    for k, normalised in enumerate(texts):
        if present[k, TEXT]:
            text[k] = state.encode_text(normalised)
    return {"image": image[:, None], "audio": audio, "text": text, "mask": present, "label": labels}


def write_part(folder: Path, number: int, *arguments: Any) -> int:
    """Shard `number` of a split into `folder` (runs in a worker); `arguments` are `shard_tensors`'
    (the spill, the rows, ...). Returns the shard's row count."""
    tensors = shard_tensors(*arguments)
    write_shard(folder, number, tensors)
    return len(tensors["label"])


def _write_splits(
    client: Client,
    out: Path,
    features: dict[str, Any],
    spill: Spill,
    frame: pd.DataFrame,
    keep: np.ndarray,
    state: PreprocessState,
) -> dict[str, int]:
    """Every split as its index, then shards of SHARD_ROWS records (`mmfuse.preprocess.processed`),
    each shard a Dask task (a worker holds one shard at a time); returns the records per split.

    The shards are written by the workers, like the features they come from, not by the stage's
    process on one core (benchmarks/scale.py at 100,000 samples, two workers: 110 s with the
    stage writing them, 91 s with the workers; runs of this benchmark spread widely, though).
    """
    ids = {label: i for i, label in enumerate(state.labels)}
    labels = frame["label"].map(ids).fillna(-1).astype(np.int64).to_numpy()  # -1: never written (not in train)
    split_of, sample_ids = frame["split"].to_numpy(), frame["sample_id"].tolist()
    counts, futures = {}, []
    for split in SPLITS:
        rows = np.flatnonzero(keep & (split_of == split))
        if split not in REQUIRED_SPLITS and not len(rows):
            continue  # an optional split the dataset does not have: no folder
        counts[split] = len(rows)
        folder = split_dir(out, split)
        empty = shard_tensors(spill, rows[:0], features["present"][:0], [], labels[:0], state)
        write_index(folder, [sample_ids[i] for i in rows], empty, SHARD_ROWS)
        for number, start in enumerate(range(0, len(rows), SHARD_ROWS)):
            part = rows[start : start + SHARD_ROWS]
            fields = (features["present"][part], [features["text_norm"][i] for i in part], labels[part], state)
            futures.append(client.submit(write_part, folder, number, spill, part, *fields, pure=False))
    with _progress("write") as progress:
        task = progress.add_task("records", total=int(keep.sum()))
        for future in as_completed(futures):
            progress.advance(task, future.result())
            future.release()  # the worker may drop the task and its arguments now
    return counts


def build_processed(manifest_path: Path, out_dir: Path, params: PreprocessParams) -> dict[str, Any]:
    """Preprocess a whole dataset into out_dir (a folder of shards per split, meta.json,
    dedup_report.json); returns a summary (records per split, records removed)."""
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    frame, records = _ordered_records(read_manifest(manifest_path))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.spill-", dir=out_dir.parent) as folder,
        dask_client(params.workers) as client,
    ):
        spill = Spill(Path(folder), params)
        features = _analyse_all(client, records, manifest_path.parent, params, spill)
        if features["errors"]:
            errors = features["errors"]
            listed = "\n  ".join(errors[:_MAX_LISTED_ERRORS])
            raise MediaError(f"{len(errors)} record(s) cannot be preprocessed (run `mmfuse validate`):\n  {listed}")
        splits, labels, sample_ids = frame["split"].tolist(), frame["label"].tolist(), frame["sample_id"].tolist()
        dedup = find_duplicates(
            Fingerprints(
                sample_ids=sample_ids,
                splits=splits,
                image_sha=features["image_sha"],
                audio_sha=features["audio_sha"],
                text_raw=[record[3] or None for record in records],
                text_norm=features["text_norm"],
                image_signature=features["image_signature"],
                audio_signature=features["audio_signature"],
            ),
            params.dedup,
        )
        split_of = np.array(splits)
        state = fit_state(features, spill, labels, dedup.keep & (split_of == "train"), params)
        unseen = sorted({label for label, split in zip(labels, splits) if split != "train"} - set(state.labels))
        if unseen:
            raise ManifestError(f"labels {unseen} occur in val/test but not in (deduplicated) train.")
        with atomic_dir(out_dir) as staging:
            counts = _write_splits(client, staging, features, spill, frame, dedup.keep, state)
            write_json(staging / "meta.json", {"format": FORMAT, "counts": counts, **state.to_dict()})
            write_json(staging / "dedup_report.json", dedup.report)
    return {"out_dir": str(out_dir), "counts": counts, "removed": dedup.report["counts"]}
