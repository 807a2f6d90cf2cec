"""DVC stage 6: the drift reference, built by the serving code itself over a held-out split.

Running the real `Predictor` (not a re-implementation over processed tensors) makes the
reference's input statistics, embeddings and confidences exactly what the inference log
would hold had those samples been served, so monitoring compares like with like.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmfuse.data.manifest import read_manifest
from mmfuse.data.media import MediaStore, open_media
from mmfuse.errors import MMFuseError
from mmfuse.inference.log import STAT_COLUMNS
from mmfuse.inference.predictor import InputProblem, Predictor, RawSample
from mmfuse.io import atomic_file
from mmfuse.modality import FLAGS, MODALITIES

REFERENCE_COLUMNS: tuple[str, ...] = (
    "sample_id",
    *FLAGS,
    *STAT_COLUMNS,
    "embedding",
    "prediction",
    "confidence",
    "true_label",
)


def _raw_sample(store: MediaStore, row: pd.Series) -> RawSample:
    return RawSample(
        image=store.read(row["image"]) if row["image"] else None,
        audio=store.read(row["audio"]) if row["audio"] else None,
        text=row["text"] or None,
    )


def build_reference(
    artifact_dir: Path,
    raw_manifest: Path,
    split: str,
    out_path: Path,
    calibration: Path | None = None,
    batch_size: int = 64,
    trust: Path | None = None,
) -> Path:
    """Score `split` of the manifest with the serving Predictor and write the reference Parquet.

    `calibration` (evaluate's calibration.json) and `trust` (its trust.safetensors) are
    used when the artifact has none yet, as before promotion. One torch thread and a fixed row order make the bytes
    identical for identical inputs, so a second `dvc repro` does nothing. A sample the
    service would refuse is skipped (the service would not log it either).
    """
    manifest = read_manifest(Path(raw_manifest))
    rows = manifest[manifest["split"] == split].sort_values("sample_id", kind="stable")
    if rows.empty:
        raise MMFuseError(f"{raw_manifest} has no {split!r} rows to build the drift reference from.")
    predictor = Predictor(Path(artifact_dir), version="reference", calibration=calibration, trust=trust)
    store = open_media(Path(raw_manifest).parent)
    records: list[dict] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows.iloc[start : start + batch_size]
            prepared, kept = [], []
            for _, row in batch.iterrows():
                try:
                    prepared.append(predictor.prepare(_raw_sample(store, row)))
                    kept.append(row)
                except InputProblem:
                    continue
            if not prepared:
                continue
            for row, sample, scores in zip(kept, prepared, predictor.forward(prepared)):
                best = int(torch.argmax(scores.probabilities))
                records.append(
                    {
                        "sample_id": row["sample_id"],
                        **{f"has_{m}": m in sample.used for m in MODALITIES},
                        **{name: sample.stats.get(name) for name in STAT_COLUMNS},
                        "embedding": scores.embedding.flatten().to(torch.float32).tolist(),
                        "prediction": predictor.labels[best],
                        "confidence": float(scores.probabilities[best]),
                        "true_label": str(row["label"]),
                    }
                )
    finally:
        torch.set_num_threads(threads)
    if not records:
        raise MMFuseError(f"no {split!r} sample of {raw_manifest} could be scored: nothing to use as a reference.")
    write_reference(pd.DataFrame.from_records(records), Path(out_path))
    return Path(out_path)


def write_reference(frame: pd.DataFrame, out_path: Path) -> None:
    """Write the reference with a fixed schema, atomically (embedding as a list<float32> column)."""
    fields = [
        pa.field("sample_id", pa.string()),
        *(pa.field(flag, pa.bool_()) for flag in FLAGS),
        *(pa.field(name, pa.float64()) for name in STAT_COLUMNS),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("prediction", pa.string()),
        pa.field("confidence", pa.float64()),
        pa.field("true_label", pa.string()),
    ]
    data = frame[list(REFERENCE_COLUMNS)].copy()
    data[list(STAT_COLUMNS)] = data[list(STAT_COLUMNS)].astype(float)
    table = pa.Table.from_pandas(data, schema=pa.schema(fields), preserve_index=False).replace_schema_metadata(None)
    with atomic_file(out_path, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")


def read_reference(path: Path) -> pd.DataFrame:
    """The reference as monitoring uses it: embeddings as float32 arrays, like `read_log`."""
    frame = pd.read_parquet(path)
    missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise MMFuseError(f"{path} is not a drift reference: it lacks {missing}.")
    frame["embedding"] = [pd.Series(e).to_numpy(dtype="float32") for e in frame["embedding"]]
    return frame
