"""The manifest contract: one row per sample, media paths relative to the dataset root.

Structural problems (unreadable file, missing columns) raise ManifestError at once.
Row-level problems (unsafe path, no modality, bad split) are flagged per row so the
validate stage can report every offending row through Great Expectations.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

import pandas as pd

from mmfuse.errors import ManifestError
from mmfuse.modality import MODALITIES
from mmfuse.params.data import DataParams

# Unicode categories (first letter) that text normalisation turns into spaces: punctuation,
# symbols, control/format characters, separators.
BLANK_CATEGORIES = ("P", "S", "C", "Z")

REQUIRED_COLUMNS = ("sample_id", "label", "split", "image", "audio", "text")
# Every dataset needs train, val and test. test_clean is optional: undegraded twins of test
# samples (avdigits writes them, see data.clean_twin), reported apart as clean-input
# figures and never used for a choice. test_recent is optional too: the share of harvested
# traffic held out (`mmfuse harvest`), never trained on, which promotion scores beside test.
REQUIRED_SPLITS = ("train", "val", "test")
RECENT_SPLIT = "test_recent"
SPLITS = (*REQUIRED_SPLITS, "test_clean", RECENT_SPLIT)
# What an extra dataset (`data.extra`, e.g. a harvest) may add: training data and recent-traffic
# test data; never val or test, so the original test split stays comparable across versions.
EXTRA_SPLITS = ("train", RECENT_SPLIT)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest with every column as text.

    Text is kept verbatim: "n/a" or "" is data here, not a missing value.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist.")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path).astype(object).where(lambda f: f.notna(), "").astype(str)
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
        else:
            raise ManifestError(f"manifest {path} must be .csv or .parquet.")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks required column(s) {missing}; the contract needs {list(REQUIRED_COLUMNS)}."
        )
    if frame.empty:
        raise ManifestError(f"manifest {path} has no rows.")
    return frame


def unsafe_path_reason(rel: str) -> str | None:
    """Why a manifest media path is not allowed, or None when it is safe."""
    if rel == "":
        return None
    if "\\" in rel or rel.startswith("/") or PurePosixPath(rel).is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        return "is absolute"
    if ".." in PurePosixPath(rel).parts:
        return "leaves the dataset root"
    return None


def link_problems(dataset_root: Path, media: list[str]) -> list[str]:
    """The symbolic links in a dataset folder that cannot be ingested, one sentence each.

    A dangling link anywhere in the folder (DVC hashes the whole folder and stops on it with
    a bare "[Errno 2]"), and a media file the manifest names that leaves the folder through a
    link, its own or a folder's (`resolve_media` refuses it; it would be reported as missing).
    Links inside the folder, and the folder itself being a link, are fine.
    """
    root = Path(dataset_root).resolve()
    problems = []
    for folder, dirs, files in os.walk(root):
        for name in sorted([*dirs, *files]):
            path = Path(folder) / name
            if path.is_symlink() and not path.exists():
                problems.append(
                    f"{path} is a link to {os.readlink(path)}, which does not exist: restore its target or remove it"
                )
    for rel in media:
        path = root / rel
        if not path.exists():
            continue  # missing files are the validate stage's to report, row by row
        try:
            resolve_media(root, rel)
        except ManifestError:
            problems.append(
                f"{path} (named by the manifest) links to {path.resolve()}, outside the dataset folder {root}: "
                "copy the file into the folder instead"
            )
    return problems


def resolve_media(dataset_root: Path, rel: str) -> Path:
    """Resolve a manifest path inside the dataset root, refusing anything that escapes it."""
    reason = unsafe_path_reason(rel)
    if reason:
        raise ManifestError(f"media path {rel!r} {reason}; paths must be relative to the dataset root.")
    root = Path(dataset_root).resolve()
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root):
        raise ManifestError(f"media path {rel!r} leaves the dataset root (through a link).")
    return resolved


def _carries_text(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] not in BLANK_CATEGORIES and category != "Mn"


def text_given(text: str | bytes | None) -> bool:
    """Whether a text counts as given, in a manifest, in preprocessing and in a request alike: one
    that normalises to nothing (only whitespace, punctuation, symbols, control characters or
    combining marks: "  ", "?!", a zero-width space) is no text, so it never reaches the model
    as an empty sequence. Bytes that are not UTF-8 count as given: preprocessing names the fault."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return bool(text) and any(map(_carries_text, unicodedata.normalize("NFKC", text)))


def given(frame: pd.DataFrame) -> pd.DataFrame:
    """[rows x MODALITIES] bool: the modalities each manifest row carries (a path, or a `text_given` text)."""
    out = frame[list(MODALITIES)].ne("")
    out["text"] = frame["text"].map(text_given)
    return out


def row_flags(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-row booleans the validate stage turns into expectations."""
    flags = pd.DataFrame(index=frame.index)
    flags["has_modality"] = given(frame).any(axis=1)
    flags["image_path_safe"] = frame["image"].map(lambda p: unsafe_path_reason(p) is None)
    flags["audio_path_safe"] = frame["audio"].map(lambda p: unsafe_path_reason(p) is None)
    return flags


def dataset_name(params: DataParams) -> str:
    """avdigits, or the name of the folder that holds your manifest."""
    if params.dataset == "avdigits":
        return "avdigits"
    return Path(params.dataset).parent.name or "dataset"


def dataset_manifest(params: DataParams, raw_root: Path) -> Path:
    """The ingested manifest that every later stage reads."""
    name = "manifest.parquet" if params.dataset.endswith(".parquet") else "manifest.csv"
    return Path(raw_root) / dataset_name(params) / name
