"""The inference log: one SQLite row per served prediction, written off the request path.

Monitoring reads it (`read_log`) to check live inputs for drift against the training
reference and, once `/feedback` has brought the true label, to measure live accuracy.

Why this shape:
- SQLite in WAL mode: embedded, one file, readers never block the writer, and several
  server worker processes can append to the same file (each has its own writer thread;
  SQLite serialises their short transactions).
- A background writer thread fed by a bounded queue: a request only pays for a
  `put_nowait` (serialising the row is the writer's job); the writer batches whatever
  has queued into one transaction. When the
  queue is full (the disk cannot keep up) records are dropped and counted rather than
  slowing or failing predictions: the log is for monitoring, the answer is for the user.
- Retention by row count (`serve.log_max_rows`) and by age (`serve.log_max_age_days`):
  the oldest rows go first, so the file cannot grow without bound on a long-running
  server, and nothing is kept longer than the age limit (pruned when the log opens and
  with every write).
- A challenger served in shadow gets its own table (`shadow`, one row per request it
  scored, joined to `inference` by request id): the champion's rows stay as they were,
  and the feedback stored on a request judges both answers.
- Raw inputs are kept only for requests that opt in (`serve.capture`, or the request's
  `X-MMFuse-Capture` header), so that labelled traffic can become training data: a
  `captured` row names the request's text and its media, stored once per content (sha256)
  under `captured/` beside the log, within a size cap (`serve.capture_max_mb`; past it, new
  captures are skipped and counted). Retention removes captured rows with their request,
  and media no row names any more are deleted with them; `forget` removes one request
  and everything kept of it.
- Input statistics are computed from the preprocessed tensors by `input_statistics`, a
  pure function the drift reference can apply to the processed splits, so live and
  reference statistics are measured the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from mmfuse.modality import FLAGS, MODALITIES
from mmfuse.preprocess.text import UNK_ID

LOG_ENV = "MMFUSE_INFERENCE_LOG"
DEFAULT_LOG = Path("data/inference/log.sqlite")
SCHEMA_VERSION = 3  # 2: per-modality trust and set-aside (older logs gain the columns, NULL); 3: shadow, captured
TRUST_COLUMNS: tuple[str, ...] = tuple(f"{m}_trust" for m in MODALITIES)  # NULL where absent or no trust model
SET_ASIDE_COLUMNS: tuple[str, ...] = tuple(f"{m}_set_aside" for m in MODALITIES)  # given but not believed
STAT_COLUMNS: tuple[str, ...] = (
    "image_bytes",
    "audio_bytes",
    "text_chars",
    "image_mean",
    "image_std",
    "audio_mean",
    "audio_std",
    "text_tokens",
    "text_unk_share",
)
_WRITE_BATCH = 512  # records per transaction at most: bounds how long one commit holds the write lock
_LINGER_S = 0.05  # after a first record, let more arrive: one commit per ~50 ms under load, not one per request
_FEEDBACK_GRACE_S = 0.5  # how long an unknown request id may still be in another worker's writer queue
_CAPTURE_GRACE_S = 60.0  # a media file this young may belong to a row another worker is committing
_BUSY_TIMEOUT_MS = 5000  # another worker's commit holds the lock for milliseconds; wait rather than fail

logger = logging.getLogger(__name__)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS inference (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    model_version TEXT NOT NULL,
    {", ".join(f"{flag} INTEGER NOT NULL" for flag in FLAGS)},
    {", ".join(f"{name} REAL" for name in STAT_COLUMNS)},
    embedding BLOB NOT NULL,
    prediction TEXT NOT NULL,
    confidence REAL NOT NULL,
    probabilities TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    true_label TEXT,
    feedback_ts REAL,
    {", ".join(f"{name} REAL" for name in TRUST_COLUMNS)},
    {", ".join(f"{name} INTEGER" for name in SET_ASIDE_COLUMNS)}
);
CREATE INDEX IF NOT EXISTS inference_ts ON inference (ts);
CREATE TABLE IF NOT EXISTS shadow (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    prediction TEXT,
    confidence REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS shadow_version ON shadow (model_version);
CREATE TABLE IF NOT EXISTS captured (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    image TEXT,
    audio TEXT,
    text TEXT
);
"""
_COLUMNS = (
    "request_id",
    "ts",
    "endpoint",
    "model_version",
    *FLAGS,
    *STAT_COLUMNS,
    "embedding",
    "prediction",
    "confidence",
    "probabilities",
    "latency_ms",
    *TRUST_COLUMNS,
    *SET_ASIDE_COLUMNS,
)
_TABLES = ("inference", "shadow", "captured")
_PRUNE = "DELETE FROM {table} WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?"
_EXPIRE = "DELETE FROM {table} WHERE ts < ?"


def log_path() -> Path:
    """$MMFUSE_INFERENCE_LOG, else data/inference/log.sqlite under the working directory."""
    return Path(os.environ.get(LOG_ENV) or DEFAULT_LOG)


def input_statistics(
    sample: dict[str, torch.Tensor], image_bytes: int | None, audio_bytes: int | None, text_chars: int | None
) -> dict[str, float | None]:
    """Per-request input statistics: raw sizes plus summaries of the preprocessed tensors.

    `sample` is one output of `preprocess_sample`; an absent modality's statistics are None
    (not zero), so monitoring can tell "missing" from "silent" or "blank".
    """
    present = dict(zip(MODALITIES, sample["mask"].tolist()))
    stats: dict[str, float | None] = dict.fromkeys(STAT_COLUMNS)
    if present["image"]:
        stats.update(
            image_bytes=image_bytes, image_mean=float(sample["image"].mean()), image_std=float(sample["image"].std())
        )
    if present["audio"]:
        stats.update(
            audio_bytes=audio_bytes, audio_mean=float(sample["audio"].mean()), audio_std=float(sample["audio"].std())
        )
    if present["text"]:
        tokens = sample["text"]
        count = int(torch.count_nonzero(tokens))
        unknown = int(torch.count_nonzero(tokens == UNK_ID))
        stats.update(text_chars=text_chars, text_tokens=count, text_unk_share=unknown / count if count else 0.0)
    return stats


@dataclass(frozen=True)
class LogRecord:
    """One served prediction; `row` (run by the writer thread) turns it into the stored columns."""

    INSERT: ClassVar[str] = f"INSERT INTO inference ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"

    request_id: str
    ts: float  # unix seconds (UTC)
    endpoint: str
    model_version: str
    present: tuple[bool, ...]  # image, audio, text: the modalities the model used
    stats: dict[str, float | None]  # input_statistics(...)
    embedding: np.ndarray  # float32 [modalities x embed_dim], flattened in mask order
    prediction: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float
    trust: tuple[float | None, ...] = (None,) * len(MODALITIES)  # image, audio, text: trust score where given
    set_aside: tuple[bool, ...] = (False,) * len(MODALITIES)  # image, audio, text: given but set aside

    def row(self) -> tuple[Any, ...]:
        return (
            self.request_id,
            self.ts,
            self.endpoint,
            self.model_version,
            *(int(p) for p in self.present),
            *(self.stats.get(name) for name in STAT_COLUMNS),
            np.ascontiguousarray(self.embedding, dtype="<f4").tobytes(),
            self.prediction,
            self.confidence,
            json.dumps(self.probabilities),
            self.latency_ms,
            *self.trust,
            *(int(s) for s in self.set_aside),
        )


@dataclass(frozen=True)
class ShadowRecord:
    """The challenger's answer to a request the champion answered (in shadow: never returned).

    `error` names why it gave none (an InputProblem kind, "non_finite" or "model_error"),
    which counts as a disagreement: a challenger that refuses what the champion answers is worse.
    """

    INSERT: ClassVar[str] = (
        "INSERT OR REPLACE INTO shadow (request_id, ts, model_version, prediction, confidence, error) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    )

    request_id: str
    ts: float
    model_version: str
    prediction: str | None
    confidence: float | None
    error: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.request_id, self.ts, self.model_version, self.prediction, self.confidence, self.error)


@dataclass(frozen=True)
class CaptureRecord:
    """The raw inputs of a request that opted in to capture (the writer stores the media)."""

    INSERT: ClassVar[str] = (
        "INSERT OR REPLACE INTO captured (request_id, ts, image, audio, text) VALUES (?, ?, ?, ?, ?)"
    )

    request_id: str
    ts: float
    image: bytes | None
    audio: bytes | None
    text: str | None


Record = LogRecord | ShadowRecord | CaptureRecord
RECORDS = (LogRecord, ShadowRecord, CaptureRecord)


class MediaStore:
    """Content-addressed media beside the log (`captured/<sha256[:2]>/<sha256>`), within a size cap.

    Files are written to a temporary name and renamed, so a crash never leaves a torn file
    under a content name; identical uploads are stored once.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.size = sum(p.stat().st_size for p in self.files())

    def files(self) -> list[Path]:
        return [p for p in self.root.glob("??/*") if p.is_file() and not p.name.endswith(".tmp")]

    def path(self, digest: str) -> Path:
        return media_path(self.root, digest)

    def fits(self, *payloads: bytes | None) -> bool:
        new = sum(len(b) for b in payloads if b is not None and not self.path(_sha(b)).exists())
        return self.size + new <= self.max_bytes

    def put(self, data: bytes) -> str:
        digest = _sha(data)
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
            partial.write_bytes(data)
            os.replace(partial, target)
            self.size += len(data)
        return digest

    def remove(self, digest: str) -> None:
        path = self.path(digest)
        if path.exists():
            self.size -= path.stat().st_size
            path.unlink()

    def keep_only(self, digests: set[str]) -> None:
        """Delete every file whose content no row names. A file written in the last minute is
        spared: another worker may not have committed the row naming it yet."""
        recent = time.time() - _CAPTURE_GRACE_S
        for path in self.files():
            if path.name not in digests and path.stat().st_mtime < recent:
                self.remove(path.name)


def media_path(root: Path, digest: str) -> Path:
    """Where the content `digest` lives in the media store at `root`."""
    return Path(root) / digest[:2] / digest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_root(path: Path) -> Path:
    """Where the captured media of the log at `path` live."""
    return Path(path).parent / "captured"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, fast commits
    return conn


def ensure_schema(path: Path) -> None:
    """Create the log file and table if needed (idempotent; safe from several processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path)
    try:
        conn.executescript(_SCHEMA)
        known = {row[1] for row in conn.execute("PRAGMA table_info(inference)")}
        for name, kind in [*((c, "REAL") for c in TRUST_COLUMNS), *((c, "INTEGER") for c in SET_ASIDE_COLUMNS)]:
            if name not in known:  # a log written before schema 2 keeps its rows; the new columns read NULL
                conn.execute(f"ALTER TABLE inference ADD COLUMN {name} {kind}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        conn.close()


class InferenceLog:
    """Asynchronous appender for one log file; `record` never blocks and never raises."""

    def __init__(
        self, path: Path, max_rows: int, queue_size: int, max_age_days: float, capture_max_bytes: int = 0
    ) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_days * 86_400
        self.dropped = 0  # records refused because the queue was full
        self.failed = 0  # records lost to an SQLite error
        self.capture_skipped = 0  # captures refused because the media store was full
        self.media = MediaStore(media_root(self.path), capture_max_bytes)
        ensure_schema(self.path)
        conn = _connect(self.path)
        try:
            with conn:
                for table in _TABLES:
                    conn.execute(_EXPIRE.format(table=table), (time.time() - self.max_age_s,))
            self._collect(conn)
        finally:
            conn.close()
        self._queue: queue.Queue[Record | threading.Event | None] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
        self._thread.start()

    def record(self, record: Record) -> bool:
        """Queue one record for writing; False when it had to be dropped."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("inference log queue full: %d records dropped so far", self.dropped)
            return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued before this call is committed; False on timeout."""
        if self._closed:
            return True
        barrier = threading.Event()
        try:
            self._queue.put(barrier, timeout=timeout)
        except queue.Full:
            return False
        return barrier.wait(timeout)

    def feedback(self, request_id: str, label: str) -> str | None:
        """Store the true label beside its request; return that request's prediction, None if unknown.

        Synchronous, since the caller must learn whether the request exists. A prediction
        made a moment ago may still sit in a writer queue: this process's is flushed, and
        another worker's (with serve.workers > 1) is given `_FEEDBACK_GRACE_S` to commit,
        so a client sending feedback right after its prediction is not told "unknown".
        """
        deadline = time.monotonic() + _FEEDBACK_GRACE_S
        flushed = False
        while True:
            conn = _connect(self.path)
            try:
                updated = conn.execute(
                    "UPDATE inference SET true_label = ?, feedback_ts = ? WHERE request_id = ? RETURNING prediction",
                    (label, time.time(), request_id),
                ).fetchone()
            finally:
                conn.close()
            if updated is not None:
                return str(updated[0])
            if not flushed:
                self.flush()
                flushed = True
            elif time.monotonic() >= deadline:
                return None
            else:
                time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        conn = _connect(self.path)
        try:
            stop = False
            while not stop:
                items = [self._queue.get()]
                if isinstance(items[0], RECORDS):
                    time.sleep(_LINGER_S)
                while len(items) < _WRITE_BATCH:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                records = [item for item in items if isinstance(item, RECORDS)]
                if records:
                    self._write(conn, records)
                for item in items:
                    if isinstance(item, threading.Event):
                        item.set()
                stop = any(item is None for item in items)
        finally:
            conn.close()

    def _captured_row(self, record: CaptureRecord) -> tuple[Any, ...] | None:
        """Store the media (within the cap) and return the `captured` row; None when skipped."""
        if not self.media.fits(record.image, record.audio):
            self.capture_skipped += 1
            if self.capture_skipped == 1 or self.capture_skipped % 1000 == 0:
                logger.warning("capture store full: %d captures skipped so far", self.capture_skipped)
            return None
        image, audio = (self.media.put(b) if b is not None else None for b in (record.image, record.audio))
        return (record.request_id, record.ts, image, audio, record.text)

    def _collect(self, conn: sqlite3.Connection) -> None:
        """Drop captured rows whose request is gone, then every media file no row names."""
        with conn:
            conn.execute("DELETE FROM captured WHERE request_id NOT IN (SELECT request_id FROM inference)")
        named = conn.execute("SELECT image, audio FROM captured WHERE image IS NOT NULL OR audio IS NOT NULL")
        self.media.keep_only({digest for row in named for digest in row if digest is not None})

    def forget(self, request_id: str) -> bool:
        """Delete one request and everything kept of it (prediction, shadow answer, captured
        inputs and media no other request shares); False when the log holds no such request."""
        self.flush()
        conn = _connect(self.path)
        try:
            with conn:
                media = conn.execute("SELECT image, audio FROM captured WHERE request_id = ?", (request_id,))
                digests = {digest for row in media.fetchall() for digest in row if digest is not None}
                found = conn.execute("DELETE FROM inference WHERE request_id = ?", (request_id,)).rowcount
                for table in ("shadow", "captured"):
                    conn.execute(f"DELETE FROM {table} WHERE request_id = ?", (request_id,))
                for digest in digests:
                    shared = conn.execute("SELECT 1 FROM captured WHERE ? IN (image, audio) LIMIT 1", (digest,))
                    if shared.fetchone() is None:
                        self.media.remove(digest)
        finally:
            conn.close()
        return bool(found)

    def _write(self, conn: sqlite3.Connection, records: list[Record]) -> None:
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for record in records:
            try:
                row = self._captured_row(record) if isinstance(record, CaptureRecord) else record.row()
                if row is not None:
                    rows.setdefault(record.INSERT, []).append(row)
            except Exception:  # one malformed record must neither stop the writer nor take its batch down
                self.failed += 1
                logger.exception("inference log: record %s could not be prepared", record.request_id)
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for insert, batch in rows.items():
                    conn.executemany(insert, batch)
                removed = 0
                for table in _TABLES:
                    removed += conn.execute(_PRUNE.format(table=table), (self.max_rows,)).rowcount
                    removed += conn.execute(_EXPIRE.format(table=table), (time.time() - self.max_age_s,)).rowcount
            if removed and self.media.size:
                self._collect(conn)
        except sqlite3.Error:
            lost = sum(len(batch) for batch in rows.values())
            self.failed += lost
            logger.exception("inference log: %d records could not be written to %s", lost, self.path)


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_MS / 1000)


def feedback_by_version(path: Path | str) -> pd.DataFrame:
    """Labelled requests per model version over the whole log (version, feedback, correct),
    counted by SQLite, so the whole log is never loaded for it."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=["version", "feedback", "correct"])
    conn = _read_only(path)
    try:
        return pd.read_sql_query(
            "SELECT model_version AS version, COUNT(*) AS feedback, SUM(prediction = true_label) AS correct "
            "FROM inference WHERE true_label IS NOT NULL GROUP BY model_version ORDER BY MIN(ts)",
            conn,
        )
    finally:
        conn.close()


def read_log(path: Path | str, since: datetime | None = None) -> pd.DataFrame:
    """The log as a DataFrame, oldest first, optionally only rows at or after `since`.

    Columns: request_id, time (UTC), endpoint, model_version, has_image/has_audio/has_text
    (bool: modalities the model used), the input statistics (STAT_COLUMNS; NaN where a
    modality is absent), embedding (float32 array, modalities x embed_dim flattened in
    image/audio/text order), prediction, confidence, probabilities (dict label -> p),
    latency_ms, true_label (None until feedback arrives) and feedback_time.
    A naive `since` is taken as UTC. A log that does not exist yet reads as empty.
    """
    columns = ["time" if name == "ts" else name for name in _COLUMNS] + ["true_label", "feedback_time"]
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=columns)
    after = float("-inf")
    if since is not None:
        after = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)).timestamp()
    conn = _read_only(path)
    try:
        frame = pd.read_sql_query("SELECT * FROM inference WHERE ts >= ? ORDER BY ts, rowid", conn, params=(after,))
    finally:
        conn.close()
    frame["time"] = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
    frame["feedback_time"] = pd.to_datetime(frame.pop("feedback_ts"), unit="s", utc=True)
    for name in (*FLAGS, *SET_ASIDE_COLUMNS):
        frame[name] = frame[name].fillna(0).astype(bool)
    frame[list(TRUST_COLUMNS)] = frame[list(TRUST_COLUMNS)].astype(float)
    frame["embedding"] = [np.frombuffer(blob, dtype="<f4").copy() for blob in frame["embedding"]]
    frame["probabilities"] = [json.loads(text) for text in frame["probabilities"]]
    frame[list(STAT_COLUMNS)] = frame[list(STAT_COLUMNS)].astype(float)
    frame["true_label"] = frame["true_label"].astype(object).where(frame["true_label"].notna(), None)
    return frame[columns]


def labelled_captures(path: Path | str) -> pd.DataFrame:
    """Every captured request that has feedback, oldest first: request_id, time (UTC), label (the
    true label /feedback brought), image and audio (paths in the media store, "" where absent; a
    file may since have been deleted) and text ("" where absent). What `mmfuse harvest` turns into training data."""
    columns = ["request_id", "time", "label", "image", "audio", "text"]
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=columns)
    conn = _read_only(path)
    try:
        frame = pd.read_sql_query(
            "SELECT c.request_id, c.ts, i.true_label AS label, c.image, c.audio, c.text "
            "FROM captured c JOIN inference i ON i.request_id = c.request_id "
            "WHERE i.true_label IS NOT NULL ORDER BY c.ts, c.request_id",
            conn,
        )
    finally:
        conn.close()
    store = media_root(path)
    for column in ("image", "audio"):
        frame[column] = [str(media_path(store, digest)) if digest else "" for digest in frame[column]]
    frame["text"] = frame["text"].fillna("")
    frame["time"] = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
    return frame[columns]


@dataclass(frozen=True)
class ShadowEvidence:
    """What shadow serving showed of a challenger against one champion, on the same requests."""

    champion: str
    challenger: str
    requests: int  # answered by the champion and scored in shadow
    agreed: int  # the challenger gave the champion's label
    failed: int  # the challenger gave no answer (see ShadowRecord.error)
    labelled: int  # of those requests, how many got feedback
    challenger_correct: int
    champion_correct: int

    @staticmethod
    def _percent(part: int, whole: int) -> float | None:
        return round(100.0 * part / whole, 4) if whole else None

    @property
    def agreement(self) -> float | None:
        """Percent of shadowed requests where both gave the same label; None before any."""
        return self._percent(self.agreed, self.requests)

    @property
    def challenger_accuracy(self) -> float | None:
        """Live accuracy of the challenger on the labelled requests; None before any feedback."""
        return self._percent(self.challenger_correct, self.labelled)

    @property
    def champion_accuracy(self) -> float | None:
        return self._percent(self.champion_correct, self.labelled)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "agreement": self.agreement,
            "challenger_accuracy": self.challenger_accuracy,
            "champion_accuracy": self.champion_accuracy,
        }


def shadow_evidence(path: Path | str, champion: str, challenger: str) -> ShadowEvidence:
    """Counted by SQLite over the requests `champion` answered and `challenger` scored in shadow.

    A log that does not exist yet, or predates shadow serving, holds no evidence (all zero).
    """
    path = Path(path)
    counts = (0,) * 6
    if path.exists():
        conn = _read_only(path)
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shadow'").fetchone():
                counts = conn.execute(
                    "SELECT COUNT(*), TOTAL(s.prediction = i.prediction), TOTAL(s.prediction IS NULL), "
                    "TOTAL(i.true_label IS NOT NULL), TOTAL(s.prediction = i.true_label), "
                    "TOTAL(i.prediction = i.true_label) "
                    "FROM shadow AS s JOIN inference AS i USING (request_id) "
                    "WHERE s.model_version = ? AND i.model_version = ?",
                    (challenger, champion),
                ).fetchone()
        finally:
            conn.close()
    requests, agreed, failed, labelled, challenger_correct, champion_correct = (int(c) for c in counts)
    return ShadowEvidence(
        champion, challenger, requests, agreed, failed, labelled, challenger_correct, champion_correct
    )
