"""Harvest: labelled, captured traffic becomes a dataset in the manifest contract.

Every request that opted in to capture (its raw inputs kept beside the inference log) and
later got its true label through /feedback is a training sample the model has not seen,
drawn from today's inputs rather than last year's. `harvest` writes the ones not harvested
before into <harvest_dir>/<window>/ (manifest.csv, images/, audio/, harvest.json), which
`data.extra` then merges into the dataset (the ingest stage).

Why this shape:
- The validate stage's own Great Expectations suites judge every harvested row against the
  ingested dataset, so a label outside the known classes, media that do not decode or break
  the input contract, a sample identical to an earlier one, or an image or clip identical to
  one in another split (a test sample coming back as traffic) is refused with the validate
  stage's words, row by row, and does not enter; the rest does.
- A share of each harvest (`monitor.harvest_holdout`) becomes the recent-traffic test set
  (split test_recent): never trained on, it is what promotion scores a retrained model on
  beside the original test split. Which requests: the first share in sha256 order of their
  content (media digests and text), so the split is exact, independent of arrival order, the
  same on a rerun, and a repeated request lands beside its first (refused as a duplicate, not
  as leakage that would also refuse the first).
- "Since the last harvest" is what the earlier windows' manifests hold (their request_id
  column), not a separate watermark that could disagree with them.
- The window's folder appears in one rename, complete, or not at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf
from PIL import Image, UnidentifiedImageError
from rich.console import Console

from mmfuse.data.manifest import RECENT_SPLIT, REQUIRED_COLUMNS, read_manifest
from mmfuse.errors import MMFuseError, ValidationFailed
from mmfuse.inference.log import labelled_captures
from mmfuse.io import write_json
from mmfuse.modality import MEDIA
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.validate import ValidateParams
from mmfuse.validation.facts import collect_facts
from mmfuse.validation.runner import row_failures
from mmfuse.validation.suites import DUPLICATE_CHECK, build_checks, validation_table

MANIFEST = "manifest.csv"
SUMMARY = "harvest.json"
ID_PREFIX = "fb-"  # harvested sample ids: fb-<request id>
_FOLDERS = {"image": "images", "audio": "audio"}


@dataclass(frozen=True)
class Harvest:
    """What one harvest did: its window, where the dataset went (None when nothing was kept),
    how many labelled captures were new, the rows kept per split, and why each refused request was."""

    window: str
    path: Path | None
    candidates: int
    kept: dict[str, int] = field(default_factory=dict)
    refused: dict[str, list[str]] = field(default_factory=dict)

    @property
    def manifest(self) -> Path | None:
        return self.path / MANIFEST if self.path is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "path": str(self.path) if self.path is not None else None,
            "candidates": self.candidates,
            "kept": self.kept,
            "refused": self.refused,
        }


def harvested_requests(harvest_dir: Path) -> set[str]:
    """The request ids every earlier window of `harvest_dir` holds."""
    found: set[str] = set()
    for manifest in sorted(Path(harvest_dir).glob(f"*/{MANIFEST}")):
        found.update(read_manifest(manifest).get("request_id", pd.Series(dtype=str)))
    return found


def windows(harvest_dir: Path) -> list[Path]:
    """The manifests of every harvest under `harvest_dir`, oldest first (what `data.extra` lists)."""
    return sorted(Path(harvest_dir).glob(f"*/{MANIFEST}"))


def holdout_ids(captures: pd.DataFrame, share: float) -> set[str]:
    """The request ids of the first `share` of `captures` in sha256 order of their content."""
    content = captures["image"].map(lambda p: Path(p).name) + "|" + captures["audio"].map(lambda p: Path(p).name)
    keys = (content + "|" + captures["text"]).map(lambda key: hashlib.sha256(key.encode()).hexdigest())
    ranked = captures.assign(_key=keys).sort_values(["_key", "request_id"])["request_id"].tolist()
    return set(ranked[: round(len(ranked) * share)])


def _extension(kind: str, path: Path) -> str:
    """A file name suffix from the content (Pillow, libsndfile); ".bin" when neither reads it,
    which validation then refuses as undecodable."""
    try:
        if kind == "image":
            with Image.open(path) as image:
                return f".{image.format.lower()}"
        return f".{sf.info(str(path)).format.lower()}"
    except (OSError, UnidentifiedImageError, RuntimeError, AttributeError, sf.LibsndfileError):
        return ".bin"


def _stage_rows(captures: pd.DataFrame, holdout: set[str], staging: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Copy the captures' media into `staging` and return their manifest rows, and the requests
    refused before validation (media no longer in the capture store)."""
    rows, refused = [], {}
    for capture in captures.itertuples(index=False):
        row = {
            "sample_id": f"{ID_PREFIX}{capture.request_id}",
            "label": str(capture.label),
            "split": RECENT_SPLIT if capture.request_id in holdout else "train",
            "image": "",
            "audio": "",
            "text": capture.text,
            "request_id": capture.request_id,
            "captured_at": capture.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        lost = [kind for kind in MEDIA if getattr(capture, kind) and not Path(getattr(capture, kind)).is_file()]
        if lost:
            refused[capture.request_id] = [
                f"its {kind} is no longer in the capture store (retention, the size cap or `mmfuse forget`)"
                for kind in lost
            ]
            continue
        for kind in MEDIA:
            source = getattr(capture, kind)
            if source:
                rel = f"{_FOLDERS[kind]}/{Path(source).name}{_extension(kind, Path(source))}"
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / rel)
                row[kind] = rel
        rows.append(row)
    return pd.DataFrame(rows, columns=[*REQUIRED_COLUMNS, "request_id", "captured_at"]), refused


def _earlier(raw_manifest: Path, harvest_dir: Path) -> list[Path]:
    """The ingested dataset and every earlier harvest not merged into it yet: what a harvest must
    not duplicate or leak into."""
    merged = set(read_manifest(raw_manifest).get("request_id", pd.Series(dtype=str)))
    pending = [m for m in windows(harvest_dir) if not set(read_manifest(m)["request_id"]) <= merged]
    return [raw_manifest, *pending]


def _validate(
    frame: pd.DataFrame,
    staging: Path,
    datasets: list[Path],
    validate: ValidateParams,
    contract: PreprocessParams,
    docs_dir: Path,
    console: Console,
) -> dict[str, list[str]]:
    """The validate stage's suites over `datasets` (manifests; the first is the ingested one, whose
    train split defines the classes) plus the harvest: reasons per refused request.

    Harvested train rows are held to the known classes too (the validate stage checks that for
    evaluation rows only: in a dataset, train defines the classes; here the model does)."""
    earlier = [read_manifest(path) for path in datasets]
    facts = [
        collect_facts(frame_, path.parent, validate.audio_silence_dbfs, console=console)
        for frame_, path in zip(earlier, datasets)
    ]
    facts.append(collect_facts(frame, staging, validate.audio_silence_dbfs, console=console))
    manifest = pd.concat([f[list(REQUIRED_COLUMNS)] for f in (*earlier, frame)], ignore_index=True)
    table = validation_table(manifest, pd.concat(facts, ignore_index=True))
    first = len(manifest) - len(frame)
    harvested = table.index >= first
    table.loc[harvested, "eval_label"] = table.loc[harvested, "label"]
    raw = earlier[0]
    known = sorted(set(raw.loc[raw["split"].eq("train") & raw["label"].ne(""), "label"]))
    checks = build_checks(validate, contract, known)
    failing, whole = row_failures(table, checks, docs_dir, refusing=(DUPLICATE_CHECK,))
    if whole:
        raise ValidationFailed(
            "the harvest cannot be judged: the dataset with it fails a whole-table check:\n  " + "\n  ".join(whole)
        )
    return {  # table rows are 1-based
        frame["request_id"].iloc[row - 1 - first]: reasons for row, reasons in sorted(failing.items()) if row > first
    }


def harvest(
    log: Path,
    harvest_dir: Path,
    raw_manifest: Path,
    *,
    holdout: float,
    validate: ValidateParams,
    contract: PreprocessParams,
    docs_dir: Path,
    now: datetime | None = None,
    console: Console | None = None,
) -> Harvest:
    """Turn the feedback-labelled captures of `log` not harvested before into <harvest_dir>/<window>/.

    `raw_manifest` is the ingested dataset the harvest is validated against (its classes, its
    test samples); `holdout` the share held out as test_recent; Data Docs of the check go to
    `docs_dir`. Raises ValidationFailed only when the dataset itself cannot be judged.
    """
    console = console or Console(stderr=True)
    window = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    harvest_dir = Path(harvest_dir)
    captures = labelled_captures(log)
    captures = captures[~captures["request_id"].isin(harvested_requests(harvest_dir))]
    if captures.empty:
        return Harvest(window, None, 0)
    if not Path(raw_manifest).is_file():
        raise MMFuseError(f"no ingested dataset at {raw_manifest} to check a harvest against: run `dvc repro` first.")
    target = harvest_dir / window
    if target.exists():
        raise MMFuseError(f"{target} already exists: one harvest per second at most; try again.")
    harvest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{window}.tmp-", dir=harvest_dir))
    try:
        frame, refused = _stage_rows(captures, holdout_ids(captures, holdout), staging)
        if not frame.empty:
            datasets = _earlier(Path(raw_manifest), harvest_dir)
            refused.update(_validate(frame, staging, datasets, validate, contract, docs_dir, console))
        kept = frame[~frame["request_id"].isin(refused)]
        result = Harvest(window, None, len(captures), {}, dict(sorted(refused.items())))
        if kept.empty:
            return result
        for kind in MEDIA:  # media only refused rows named
            for rel in set(frame[kind]) - set(kept[kind]) - {""}:
                (staging / rel).unlink()
        kept.to_csv(staging / MANIFEST, index=False, lineterminator="\n")
        counts = {str(k): int(v) for k, v in kept["split"].value_counts().sort_index().items()}
        result = Harvest(window, target, len(captures), counts, result.refused)
        write_json(staging / SUMMARY, {**result.to_dict(), "path": None})
        staging.chmod(0o755)
        os.replace(staging, target)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
