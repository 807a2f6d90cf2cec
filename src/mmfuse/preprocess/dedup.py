"""Duplicate and leakage detection across a dataset, from per-record fingerprints.

Two measures per medium: an exact content hash (sha256 of the decoded samples, so a
re-encoded file with the same pixels still matches) and a cheap near-duplicate
signature (a grid x grid area-averaged thumbnail of the decoded image or of the
log-mel, centred and scaled to unit norm) compared by correlation distance, which
ignores gain, brightness and contrast and barely moves under re-compression.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mmfuse.data.manifest import REQUIRED_SPLITS, SPLITS
from mmfuse.params.preprocess import DedupParams

RULES = (
    "A duplicate record duplicates another record's whole content: the same modalities present, "
    "each exactly equal or near (texts: equal after normalisation). Only train is cleaned, keeping "
    "the first record by sample id; val and test are never altered. Leakage: an image or audio "
    "shared (exactly or nearly) between train and val/test removes the train record; a text counts "
    "only from text_leak_min_chars characters on, since short transcripts are meant to recur in "
    "every split. Content shared between val and test is only reported (warnings)."
)
MEDIA = ("image", "audio")
_BLOCK = 1024


def content_hash(array: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of the decoded content."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _cell_weights(n: int, grid: int) -> np.ndarray:
    """[grid, n]: the share of each of n unit-wide pixels inside each of grid equal cells."""
    edges = np.linspace(0.0, n, grid + 1)
    pixels = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def signature(matrix: np.ndarray, grid: int) -> np.ndarray:
    """Near-duplicate signature of a 2-D signal: [grid * grid] float64, zero mean, unit norm.

    Exact area averaging to a coarse grid (independent of the input resolution) removes
    re-compression and sensor noise; centring and scaling remove gain and brightness.
    A flat input has no shape and gives all zeros.
    """
    height, width = matrix.shape
    values = (_cell_weights(height, grid) @ matrix.astype(np.float64) @ _cell_weights(width, grid).T).ravel()
    values -= values.mean()
    norm = np.linalg.norm(values)
    return values / norm if norm > 0 else values


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each signature in `a`: the correlation distance to its nearest in `b`, and its index."""
    right = b.T
    distances = np.empty(len(a))
    index = np.empty(len(a), dtype=np.int64)
    for start in range(0, len(a), _BLOCK):
        block = 1.0 - a[start : start + _BLOCK] @ right
        index[start : start + _BLOCK] = np.argmin(block, axis=1)
        distances[start : start + _BLOCK] = block[np.arange(len(block)), index[start : start + _BLOCK]]
    return distances, index


@dataclass(frozen=True)
class Fingerprints:
    """Per-record fingerprints, row-aligned; None where a modality is absent."""

    sample_ids: list[str]
    splits: list[str]
    image_sha: list[str | None]
    audio_sha: list[str | None]
    text_raw: list[str | None]
    text_norm: list[str | None]
    image_signature: np.ndarray  # [records, grid * grid] float64: distances near 0 need the precision
    audio_signature: np.ndarray

    def media(self, modality: str) -> tuple[list[str | None], np.ndarray]:
        if modality == "image":
            return self.image_sha, self.image_signature
        return self.audio_sha, self.audio_signature


@dataclass(frozen=True)
class DedupResult:
    keep: np.ndarray  # bool per record
    report: dict[str, Any]


def _limit(params: DedupParams, modality: str) -> float:
    return params.image_max_distance if modality == "image" else params.audio_max_distance


def shared_content(
    fp: Fingerprints, params: DedupParams, rows: np.ndarray, others: np.ndarray
) -> dict[int, dict[str, Any]]:
    """Records of `rows` that share one modality's content with a record of `others`, and how."""
    found: dict[int, dict[str, Any]] = {}
    for modality in MEDIA:
        sha, signatures = fp.media(modality)
        left = np.array([i for i in rows if sha[i] is not None], dtype=np.int64)
        right = np.array([j for j in others if sha[j] is not None], dtype=np.int64)
        if not len(left) or not len(right):
            continue
        first_with_sha = {sha[j]: int(j) for j in right[::-1]}
        distances, index = nearest(signatures[left], signatures[right])
        for i, distance, j in zip(left.tolist(), distances, right[index].tolist()):
            if i in found:
                continue
            if sha[i] in first_with_sha:
                found[i] = {"modality": modality, "match": "exact", "distance": 0.0, "other": first_with_sha[sha[i]]}
            elif distance <= _limit(params, modality):
                found[i] = {"modality": modality, "match": "near", "distance": float(distance), "other": j}
    long_texts = {
        fp.text_norm[j]: int(j)
        for j in others[::-1]
        if fp.text_norm[j] is not None and len(fp.text_norm[j]) >= params.text_leak_min_chars
    }
    for i in rows.tolist():
        if i not in found and fp.text_norm[i] in long_texts:
            found[i] = {"modality": "text", "match": "near", "distance": 0.0, "other": long_texts[fp.text_norm[i]]}
    return found


def _earlier_matches(
    fp: Fingerprints, params: DedupParams, members: np.ndarray, media: list[str]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each position in `members`: earlier positions whose every medium in `media` is near, with distances."""
    matches: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(members), _BLOCK):
        block = members[start : start + _BLOCK]
        positions = np.arange(start, start + len(block))
        close = np.arange(len(members))[None, :] < positions[:, None]
        distance = np.zeros(close.shape)
        for modality in media:
            signatures = fp.media(modality)[1]
            d = 1.0 - signatures[block] @ signatures[members].T
            close &= d <= _limit(params, modality)
            distance = np.maximum(distance, d)
        for row in np.flatnonzero(close.any(axis=1)):
            columns = np.flatnonzero(close[row])
            matches[int(positions[row])] = (columns, distance[row, columns])
    return matches


def duplicate_records(fp: Fingerprints, params: DedupParams, rows: np.ndarray) -> dict[int, dict[str, Any]]:
    """Records of `rows` whose whole content duplicates an earlier kept record of `rows`.

    Candidates share the modalities present and the normalised text; among them, a
    record goes when every medium is near one earlier record that was itself kept.
    """
    groups: dict[tuple[bool, bool, str | None], list[int]] = {}
    for i in rows.tolist():
        groups.setdefault((fp.image_sha[i] is not None, fp.audio_sha[i] is not None, fp.text_norm[i]), []).append(i)
    found: dict[int, dict[str, Any]] = {}
    for (has_image, has_audio, _), members in groups.items():
        if len(members) == 1:
            continue
        media = [modality for modality, present in zip(MEDIA, (has_image, has_audio)) if present]
        matches = _earlier_matches(fp, params, np.array(members), media)
        kept = np.zeros(len(members), dtype=bool)
        for position, i in enumerate(members):
            columns, distances = matches.get(position, (np.empty(0, dtype=np.int64), np.empty(0)))
            alive = np.flatnonzero(kept[columns])
            if not alive.size:
                kept[position] = True
                continue
            j = members[columns[alive[0]]]
            exact = all(
                getattr(fp, column)[i] == getattr(fp, column)[j] for column in ("image_sha", "audio_sha", "text_raw")
            )
            found[i] = {"match": "exact" if exact else "near", "distance": float(distances[alive[0]]), "other": j}
    return found


def _entries(fp: Fingerprints, found: dict[int, dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    entries = []
    for i, why in sorted(found.items()):
        details = {key: value for key, value in why.items() if key != "other"}
        entries.append(
            {
                "sample_id": fp.sample_ids[i],
                "split": fp.splits[i],
                "reason": reason,
                **details,
                "other_id": fp.sample_ids[why["other"]],
                "other_split": fp.splits[why["other"]],
            }
        )
    return entries


def find_duplicates(fp: Fingerprints, params: DedupParams) -> DedupResult:
    """Decide which train records to drop (leakage first, then duplicates) and report why."""
    splits = np.array(fp.splits)
    train = np.flatnonzero(splits == "train")
    leaks = shared_content(fp, params, train, np.flatnonzero(splits != "train"))
    duplicates = duplicate_records(fp, params, np.array([i for i in train.tolist() if i not in leaks], dtype=np.int64))
    shared_eval = shared_content(fp, params, np.flatnonzero(splits == "val"), np.flatnonzero(splits == "test"))
    keep = np.ones(len(fp.sample_ids), dtype=bool)
    keep[list(leaks) + list(duplicates)] = False
    removed = _entries(fp, leaks, "leakage: shares content with val/test") + _entries(
        fp, duplicates, "duplicate record within train"
    )
    return DedupResult(
        keep=keep,
        report={
            "rules": RULES,
            "params": params.model_dump(),
            "counts": {
                "train_leakage_removed": len(leaks),
                "train_duplicates_removed": len(duplicates),
                "val_test_shared": len(shared_eval),
                "kept": {
                    split: int(np.sum(keep & (splits == split)))
                    for split in SPLITS
                    if split in REQUIRED_SPLITS or (splits == split).any()
                },
            },
            "removed": sorted(removed, key=lambda entry: entry["sample_id"]),
            "warnings": _entries(fp, shared_eval, "shares content with test (not removed)"),
        },
    )
