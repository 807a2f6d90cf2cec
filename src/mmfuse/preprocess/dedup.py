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
    rows = np.add.reduce(_cell_weights(height, grid)[:, :, None] * matrix.astype(np.float64)[None], axis=1)
    values = np.add.reduce(rows[:, None, :] * _cell_weights(width, grid)[None], axis=2).ravel()
    values -= values.mean()
    norm = np.sqrt(np.add.reduce(values * values))
    return values / norm if norm > 0 else values


def dot_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[n] dot products of the rows of `x` and `y` [n, d], summed by numpy's own reduction.

    Not BLAS: OpenBLAS picks its kernel by CPU, and its products differ in the last bits
    between kernels (a fresh `dvc repro` on an AVX-512 machine reported 30 of the dedup
    report's distances differently from the lock written on another x86-64 machine; forcing
    OPENBLAS_CORETYPE=Haswell here reproduced it). Elementwise products are exact and numpy's
    reduction adds in an order fixed by the shape alone, so signatures and distances, and
    every dedup decision made from them, are the same bits on every machine.
    """
    return np.add.reduce(x * y, axis=1)


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each signature in `a`: the correlation distance to its nearest in `b`, and its index (all pairs)."""
    right = b.T
    distances = np.empty(len(a))
    index = np.empty(len(a), dtype=np.int64)
    for start in range(0, len(a), _BLOCK):
        block = 1.0 - a[start : start + _BLOCK] @ right
        index[start : start + _BLOCK] = np.argmin(block, axis=1)
        distances[start : start + _BLOCK] = block[np.arange(len(block)), index[start : start + _BLOCK]]
    return distances, index


# Near pairs are found by random-hyperplane LSH (SimHash): a signature's key in a band is the
# signs of its projections on `bits` fixed random directions, and only pairs sharing a key in one
# of the bands are compared exactly. Two unit signatures at correlation distance d differ in one
# sign with probability acos(1 - d) / pi, so with 1024 directions a pair at audio's limit (3e-3,
# 32 bands of 32 bits) shares some band with probability 1 - 5e-9, and one at the image limit
# (1e-4, 16 bands of 64 bits) with 1 - 3e-10 (`miss_probability`). Distinct digits and clips
# rarely share a band, so the work grows with the records, not with their pairs; where they do
# (very alike records: avdigits' hard images are rebuilt from a few PCA components), a block of
# records whose candidates would outnumber a quarter of all its pairs is compared with every
# record instead, so memory stays one block of distances (rows x records) either way. A block
# holds _ROWS rows, fewer against many records: at most _PAIRS pairs (16 MB of distances). At
# 100,000 samples, blocks of 128 rows made deduplication the stage's largest memory, 317 MB
# above the rest of it (its resident memory sampled every 0.1 s); the pairs found do not depend
# on the block.
_PROJECTIONS = 1024
_BITS = (64, 32)  # per band, most selective first
_MAX_MISS = 1e-6  # no band size reaches this (a limit far looser than the defaults): all pairs
_ROWS = 128
_PAIRS = 1 << 21
_ROWS_PROJECTED = 2048  # 16 MB of projections
_SCREEN_MARGIN = 1e-9  # BLAS products of unit vectors err by ~1e-16: no pair within the limit escapes


def miss_probability(limit: float, bits: int) -> float:
    """Chance that LSH with `bits` per band never pairs two signatures exactly `limit` apart."""
    differ = np.arccos(np.clip(1.0 - limit, -1.0, 1.0)) / np.pi
    return float((1.0 - (1.0 - differ) ** bits) ** (_PROJECTIONS // bits))


def band_bits(limit: float) -> int | None:
    """The most selective band size that still finds pairs at `limit`; None: compare all pairs."""
    return next((bits for bits in _BITS if miss_probability(limit, bits) <= _MAX_MISS), None)


@lru_cache(maxsize=8)
def _directions(dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((dim, _PROJECTIONS))


def band_keys(signatures: np.ndarray, bits: int) -> np.ndarray:
    """[n, bands] uint64: each band's sign bits as one integer. Projected _ROWS_PROJECTED rows at a
    time: all at once, the projections of 28,000 val/test records took 230 MB."""
    directions = _directions(signatures.shape[1])
    keys = np.empty((len(signatures), _PROJECTIONS // bits), dtype=np.uint64)
    for start in range(0, len(signatures), _ROWS_PROJECTED):
        signs = (signatures[start : start + _ROWS_PROJECTED] @ directions) > 0
        packed = np.packbits(signs.reshape(len(signs), -1, bits), axis=2, bitorder="little")
        keys[start : start + len(signs)] = packed.view(f"<u{bits // 8}").reshape(len(signs), -1)
    return keys


def near_pairs(a: np.ndarray, b: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i of `a`, j of `b`) at correlation distance <= `limit`, sorted by (i, j), with its distance.

    LSH candidates (see above) are checked exactly, so there are no false pairs.
    """
    bits = band_bits(limit)
    if bits is not None:
        keys_b = band_keys(b, bits)
        orders = [np.argsort(keys_b[:, band], kind="stable") for band in range(keys_b.shape[1])]
        sorted_keys = [keys_b[order, band] for band, order in enumerate(orders)]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rows = max(1, min(_ROWS, _PAIRS // max(len(b), 1)))
    for start in range(0, len(a), rows):
        block = a[start : start + rows]
        pairs = lsh_candidates(block, b, bits, orders, sorted_keys) if bits is not None else None
        if pairs is None:  # BLAS screens every pair with a margin far above its rounding; `dot_rows` decides
            left, right = np.nonzero(1.0 - block @ b.T <= limit + _SCREEN_MARGIN)
        else:
            left, right = pairs
        distance = 1.0 - dot_rows(block[left], b[right])
        close = distance <= limit
        found.append((left[close] + start, right[close], distance[close]))
    if not found:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    left, right, distance = (np.concatenate(parts) for parts in zip(*found))
    return left, right, distance


def lsh_candidates(
    block: np.ndarray, b: np.ndarray, bits: int, orders: list[np.ndarray], sorted_keys: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The distinct (row of block, j of b) pairs sharing a band key, sorted; None when they are too many."""
    keys = band_keys(block, bits)
    spans = []
    for band, column in enumerate(sorted_keys):
        lo = np.searchsorted(column, keys[:, band], "left")
        spans.append((lo, np.searchsorted(column, keys[:, band], "right") - lo))
    if sum(int(counts.sum()) for _, counts in spans) > len(block) * len(b) // 4:
        return None
    codes = []
    for (lo, counts), order in zip(spans, orders):
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        right = order[np.repeat(lo, counts) + offsets]
        codes.append(np.repeat(np.arange(len(block)), counts) * len(b) + right)
    code = np.unique(np.concatenate(codes))
    return code // len(b), code % len(b)


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
        nearest_near: dict[int, tuple[float, int]] = {}  # per left position: its nearest near right record
        for i, j, distance in zip(*near_pairs(signatures[left], signatures[right], _limit(params, modality))):
            if int(i) not in nearest_near or distance < nearest_near[int(i)][0]:
                nearest_near[int(i)] = (float(distance), int(right[j]))
        for position, i in enumerate(left.tolist()):
            if i in found:
                continue
            if sha[i] in first_with_sha:
                found[i] = {"modality": modality, "match": "exact", "distance": 0.0, "other": first_with_sha[sha[i]]}
            elif position in nearest_near:
                distance, j = nearest_near[position]
                found[i] = {"modality": modality, "match": "near", "distance": distance, "other": j}
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
    """For each position in `members`: earlier positions whose every medium in `media` is near, with distances
    (the largest over media), in ascending position order. Without media every earlier position
    matches; only the first is listed (it is always kept, so it is the one `duplicate_records` takes)."""
    if not media:
        return {position: (np.zeros(1, dtype=np.int64), np.zeros(1)) for position in range(1, len(members))}
    signatures = fp.media(media[0])[1][members]
    later, earlier, distance = near_pairs(signatures, signatures, _limit(params, media[0]))
    keep = earlier < later
    later, earlier, distance = later[keep], earlier[keep], distance[keep]
    for modality in media[1:]:
        signatures = fp.media(modality)[1][members]
        other = 1.0 - dot_rows(signatures[later], signatures[earlier])
        keep = other <= _limit(params, modality)
        later, earlier, distance = later[keep], earlier[keep], np.maximum(distance, other)[keep]
    positions, starts = np.unique(later, return_index=True)  # pairs come sorted by (later, earlier)
    return {
        int(position): (columns, distances)
        for position, columns, distances in zip(
            positions, np.split(earlier, starts[1:]), np.split(distance, starts[1:])
        )
    }


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
