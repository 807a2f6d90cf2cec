"""The inference log: one row per served prediction, written off the request path.

Monitoring reads it (`read_log`) to check live inputs for drift against the training
reference and, once `/feedback` has brought the true label, to measure live accuracy.

Why this shape:
- One schema (SQLAlchemy Core tables), two backends, chosen by $MMFUSE_INFERENCE_LOG:
  - a file path (the default, data/inference/log.sqlite): SQLite in WAL mode, embedded, one
    file; readers never block the writer, and the worker processes of one server append to
    the same file (each has its own writer thread; SQLite serialises their short transactions).
  - a database URL (`postgresql://user:password@host/db`; the `[postgres]` extra): a log that
    several serving replicas share, so `/feedback` finds a request another replica answered
    and monitoring sees all the traffic. Tables are created on first use.
- A background writer thread fed by a bounded queue: a request only pays for a
  `put_nowait` (serialising the row is the writer's job); the writer batches whatever
  has queued into one transaction. When the
  queue is full (the disk cannot keep up) records are dropped and counted rather than
  slowing or failing predictions: the log is for monitoring, the answer is for the user.
- Retention by row count (`serve.log_max_rows`) and by age (`serve.log_max_age_days`):
  the oldest rows go first, so the log cannot grow without bound on a long-running
  server, and nothing is kept longer than the age limit. Age is enforced with every write
  (an index range); the count, which has to walk `log_max_rows` index entries to find the
  cut, when the log opens and closes and otherwise at most every `_PRUNE_EVERY_S`.
  Pruning runs in its own transaction after the rows are committed: two replicas pruning
  at once can only make one of them retry later, never lose a batch.
- A challenger served in shadow gets its own table (`shadow`, one row per request it
  scored, joined to `inference` by request id): the champion's rows stay as they were,
  and the feedback stored on a request judges both answers.
- Raw inputs are kept only for requests that opt in (`serve.capture`, or the request's
  `X-MMFuse-Capture` header), so that labelled traffic can become training data: a
  `captured` row names the request's text and its media, stored once per content (sha256)
  in a media store (`captured/` beside an SQLite log; $MMFUSE_CAPTURE_DIR, a folder the
  replicas share, beside a database), within a size cap (`serve.capture_max_mb`; past it,
  new captures are skipped and counted). Retention removes captured rows with their
  request, and media no row names any more are deleted with them; `forget` removes one
  request and everything kept of it.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from mmfuse.errors import MMFuseError
from mmfuse.modality import FLAGS, MODALITIES
from mmfuse.preprocess.text import UNK_ID

LOG_ENV = "MMFUSE_INFERENCE_LOG"
CAPTURE_ENV = "MMFUSE_CAPTURE_DIR"
DEFAULT_LOG = Path("data/inference/log.sqlite")
DEFAULT_CAPTURE_DIR = Path("data/inference/captured")
SCHEMA_VERSION = 4  # 2: per-modality trust and set-aside; 3: shadow, captured; 4: seq (older logs: NULL)
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
_PRUNE_EVERY_S = 10.0  # the row-count cut walks log_max_rows index entries: not with every 50 ms batch
_FEEDBACK_GRACE_S = 0.5  # how long an unknown request id may still be in another worker's writer queue
_CAPTURE_GRACE_S = 60.0  # a media file this young may belong to a row another worker is committing
_BUSY_TIMEOUT_MS = 5000  # another worker's commit holds the lock for milliseconds; wait rather than fail
_SCHEMA_LOCK = 0x6D6D6675  # Postgres advisory lock: replicas starting together create the tables once

logger = logging.getLogger(__name__)

LogLocation = str | Path  # an SQLite file, or a database URL

_metadata = MetaData()
INFERENCE = Table(
    "inference",
    _metadata,
    Column("request_id", Text, primary_key=True),
    Column("ts", Double, nullable=False),  # unix seconds (UTC)
    Column("endpoint", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    *(Column(flag, Integer, nullable=False) for flag in FLAGS),
    *(Column(name, Double) for name in STAT_COLUMNS),
    Column("embedding", LargeBinary, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("confidence", Double, nullable=False),
    Column("probabilities", Text, nullable=False),
    Column("latency_ms", Double, nullable=False),
    Column("true_label", Text),
    Column("feedback_ts", Double),
    *(Column(name, Double) for name in TRUST_COLUMNS),
    *(Column(name, Integer) for name in SET_ASIDE_COLUMNS),
    Column("seq", BigInteger),  # the writer's order: a batch's predictions share one ts
)
SHADOW = Table(
    "shadow",
    _metadata,
    Column("request_id", Text, primary_key=True),
    Column("ts", Double, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("prediction", Text),
    Column("confidence", Double),
    Column("error", Text),
)
CAPTURED = Table(
    "captured",
    _metadata,
    Column("request_id", Text, primary_key=True),
    Column("ts", Double, nullable=False),
    Column("image", Text),
    Column("audio", Text),
    Column("text", Text),
)
_TABLES = (INFERENCE, SHADOW, CAPTURED)
_INDEXES = (
    Index("inference_ts", INFERENCE.c.ts),  # read_log's window (schema 1 had it already)
    Index("shadow_version", SHADOW.c.model_version),
    *(Index(f"{table.name}_age", table.c.ts, table.c.request_id) for table in _TABLES),  # retention's cut
)
_COLUMNS = tuple(c.name for c in INFERENCE.columns if c.name not in ("true_label", "feedback_ts", "seq"))
_ADDED = (*TRUST_COLUMNS, *SET_ASIDE_COLUMNS, "seq")  # a log written by an older schema gains them, NULL


class LogLocationError(MMFuseError):
    """$MMFUSE_INFERENCE_LOG (or a --log option) names no usable log."""


def is_database_url(location: LogLocation) -> bool:
    """A URL (`postgresql://…`) rather than a file path."""
    return "://" in str(location)


def log_path(project: Path | None = None) -> LogLocation:
    """Where the service logs: $MMFUSE_INFERENCE_LOG (a file or a database URL), else
    data/inference/log.sqlite; a relative file is taken under `project` when given, else the
    working directory."""
    location = os.environ.get(LOG_ENV) or str(DEFAULT_LOG)
    if is_database_url(location):
        return location
    path = Path(location)
    return path if project is None or path.is_absolute() else Path(project) / path


def describe(location: LogLocation) -> str:
    """The location for messages: a URL without its password."""
    if is_database_url(location):
        return _url(location).render_as_string(hide_password=True)
    return str(location)


def media_root(location: LogLocation) -> Path:
    """Where the captured media of the log at `location` live: `captured/` beside an SQLite file;
    for a database, $MMFUSE_CAPTURE_DIR (a folder every replica can reach), else
    data/inference/captured under the working directory."""
    if is_database_url(location):
        return Path(os.environ.get(CAPTURE_ENV) or DEFAULT_CAPTURE_DIR)
    return Path(location).parent / "captured"


def _url(location: LogLocation) -> URL:
    try:
        url = make_url(str(location))
    except ArgumentError as exc:
        raise LogLocationError(f"{LOG_ENV}: not a database URL: {exc}") from None
    if url.drivername == "postgresql":  # the driver the [postgres] extra installs
        url = url.set(drivername="postgresql+psycopg")
    if not url.drivername.startswith("postgresql"):
        raise LogLocationError(
            f"{LOG_ENV}: unsupported database {url.drivername!r}: give a file path (SQLite) or a postgresql:// URL"
        )
    return url


def _engine(location: LogLocation, read_only: bool = False, pooled: bool = False) -> Engine:
    """An engine for the log at `location`: a shared Postgres, or SQLite in WAL mode whose write
    transactions take the lock up front (BEGIN IMMEDIATE: a deferred one that read first can
    fail to upgrade instead of waiting)."""
    poolclass = None if pooled else NullPool
    if is_database_url(location):
        try:
            return create_engine(_url(location), poolclass=poolclass, pool_pre_ping=pooled)
        except (ImportError, NoSuchModuleError) as exc:
            raise LogLocationError(
                f"{LOG_ENV} names Postgres, whose driver is not installed: pip install 'mmfuse[postgres]' ({exc})"
            ) from None
    path = Path(location).resolve()
    if read_only:
        url = URL.create("sqlite", database=path.as_uri(), query={"mode": "ro", "uri": "true"})
    else:
        url = URL.create("sqlite", database=str(path))
    engine = create_engine(
        url,
        poolclass=poolclass,
        connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        if not read_only:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives a process crash

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def _reading(location: LogLocation) -> Iterator[Connection | None]:
    """A read connection to the log, None when it does not exist yet (no file, or no tables)."""
    if not is_database_url(location) and not Path(location).exists():
        yield None
        return
    engine = _engine(location, read_only=True)
    try:
        with engine.connect() as conn:
            yield conn if inspect(conn).has_table(INFERENCE.name) else None
    finally:
        engine.dispose()


def _upsert(conn: Connection, table: Table) -> Any:
    """INSERT … ON CONFLICT (request_id) DO UPDATE, in the connection's dialect."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
    statement = dialect.insert(table)
    changed = {c.name: statement.excluded[c.name] for c in table.columns if c.name != "request_id"}
    return statement.on_conflict_do_update(index_elements=["request_id"], set_=changed)


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
    """One served prediction; `values` (run by the writer thread) turns it into the stored columns."""

    TABLE: ClassVar[Table] = INFERENCE

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

    def values(self) -> dict[str, Any]:
        return dict(
            zip(
                _COLUMNS,
                (
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
                ),
                strict=True,
            )
        )


@dataclass(frozen=True)
class ShadowRecord:
    """The challenger's answer to a request the champion answered (in shadow: never returned).

    `error` names why it gave none (an InputProblem kind, "non_finite" or "model_error"),
    which counts as a disagreement: a challenger that refuses what the champion answers is worse.
    """

    TABLE: ClassVar[Table] = SHADOW

    request_id: str
    ts: float
    model_version: str
    prediction: str | None
    confidence: float | None
    error: str | None = None

    def values(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaptureRecord:
    """The raw inputs of a request that opted in to capture (the writer stores the media)."""

    TABLE: ClassVar[Table] = CAPTURED

    request_id: str
    ts: float
    image: bytes | None
    audio: bytes | None
    text: str | None


Record = LogRecord | ShadowRecord | CaptureRecord
RECORDS = (LogRecord, ShadowRecord, CaptureRecord)


class MediaStore:
    """Content-addressed media (`<root>/<sha256[:2]>/<sha256>`), within a size cap.

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


def ensure_schema(location: LogLocation) -> None:
    """Create the log's tables and indexes if needed, and bring an older log up to this schema
    (idempotent; safe from several processes: SQLite's write lock, or a Postgres advisory lock,
    makes the others wait)."""
    if not is_database_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    engine = _engine(location)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            _metadata.create_all(conn)  # the missing tables, with their indexes
            for index in _INDEXES:  # a table from an older schema lacks the newer indexes
                index.create(conn, checkfirst=True)
            known = {c["name"] for c in inspect(conn).get_columns(INFERENCE.name)}
            for column in INFERENCE.columns:
                if column.name in _ADDED and column.name not in known:
                    kind = column.type.compile(conn.dialect)
                    conn.execute(text(f"ALTER TABLE {INFERENCE.name} ADD COLUMN {column.name} {kind}"))
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
    except SQLAlchemyError as exc:
        raise LogLocationError(f"cannot open the inference log {describe(location)}: {exc}") from exc
    finally:
        engine.dispose()


class InferenceLog:
    """Asynchronous appender for one log; `record` never blocks and never raises."""

    def __init__(
        self, path: LogLocation, max_rows: int, queue_size: int, max_age_days: float, capture_max_bytes: int = 0
    ) -> None:
        self.path = path if is_database_url(path) else Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_days * 86_400
        self.dropped = 0  # records refused because the queue was full
        self.failed = 0  # records lost to a database error
        self._seq = time.time_ns()  # increasing across restarts too: orders rows that share a ts
        self.capture_skipped = 0  # captures refused because the media store was full
        self.media = MediaStore(media_root(self.path), capture_max_bytes)
        ensure_schema(self.path)
        self._engine = _engine(self.path, pooled=True)
        self._pruned_at = float("-inf")
        self._prune(force=True)
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
        another worker's or replica's is given `_FEEDBACK_GRACE_S` to commit,
        so a client sending feedback right after its prediction is not told "unknown".
        """
        deadline = time.monotonic() + _FEEDBACK_GRACE_S
        flushed = False
        labelled = (
            update(INFERENCE)
            .where(INFERENCE.c.request_id == request_id)
            .values(true_label=label, feedback_ts=time.time())
            .returning(INFERENCE.c.prediction)
        )
        while True:
            with self._engine.begin() as conn:
                prediction = conn.execute(labelled).scalar_one_or_none()
            if prediction is not None:
                return str(prediction)
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
        self._engine.dispose()

    def _run(self) -> None:
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
                self._write(records)
            stop = any(item is None for item in items)
            self._prune(force=stop)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _captured_values(self, record: CaptureRecord) -> dict[str, Any] | None:
        """Store the media (within the cap) and return the `captured` row; None when skipped."""
        if not self.media.fits(record.image, record.audio):
            self.capture_skipped += 1
            if self.capture_skipped == 1 or self.capture_skipped % 1000 == 0:
                logger.warning("capture store full: %d captures skipped so far", self.capture_skipped)
            return None
        image, audio = (self.media.put(b) if b is not None else None for b in (record.image, record.audio))
        return {"request_id": record.request_id, "ts": record.ts, "image": image, "audio": audio, "text": record.text}

    def _collect(self, conn: Connection) -> None:
        """Drop captured rows whose request is gone, then every media file no row names."""
        orphans = CAPTURED.c.request_id.not_in(select(INFERENCE.c.request_id))
        conn.execute(delete(CAPTURED).where(orphans))
        named = conn.execute(select(CAPTURED.c.image, CAPTURED.c.audio))
        self.media.keep_only({digest for row in named for digest in row if digest is not None})

    def forget(self, request_id: str) -> bool:
        """Delete one request and everything kept of it (prediction, shadow answer, captured
        inputs and media no other request shares); False when the log holds no such request."""
        self.flush()
        with self._engine.begin() as conn:
            media = conn.execute(select(CAPTURED.c.image, CAPTURED.c.audio).where(CAPTURED.c.request_id == request_id))
            digests = {digest for row in media for digest in row if digest is not None}
            found = conn.execute(delete(INFERENCE).where(INFERENCE.c.request_id == request_id)).rowcount
            for table in (SHADOW, CAPTURED):
                conn.execute(delete(table).where(table.c.request_id == request_id))
            for digest in digests:
                shared = select(CAPTURED.c.request_id).where(
                    or_(CAPTURED.c.image == digest, CAPTURED.c.audio == digest)
                )
                if conn.execute(shared.limit(1)).first() is None:
                    self.media.remove(digest)
        return bool(found)

    def _write(self, records: list[Record]) -> None:
        rows: dict[Table, list[dict[str, Any]]] = {}
        for record in records:
            try:
                values = self._captured_values(record) if isinstance(record, CaptureRecord) else record.values()
                if values is not None:
                    if record.TABLE is INFERENCE:
                        self._seq += 1
                        values["seq"] = self._seq
                    rows.setdefault(record.TABLE, []).append(values)
            except Exception:  # one malformed record must neither stop the writer nor take its batch down
                self.failed += 1
                logger.exception("inference log: record %s could not be prepared", record.request_id)
        try:
            with self._engine.begin() as conn:
                for table, batch in rows.items():
                    conn.execute(table.insert() if table is INFERENCE else _upsert(conn, table), batch)
        except SQLAlchemyError:
            lost = sum(len(batch) for batch in rows.values())
            self.failed += lost
            logger.exception("inference log: %d records could not be written to %s", lost, describe(self.path))

    def _prune(self, force: bool) -> None:
        """Retention: rows past the age limit always; past the row count when `force`d or due."""
        now = time.monotonic()
        by_count = force or now - self._pruned_at >= _PRUNE_EVERY_S
        try:
            with self._engine.begin() as conn:
                removed = 0
                for table in _TABLES:
                    removed += conn.execute(delete(table).where(table.c.ts < time.time() - self.max_age_s)).rowcount
                    if by_count:
                        removed += _keep_newest(conn, table, self.max_rows)
                if force or (removed and self.media.size):
                    self._collect(conn)
        except SQLAlchemyError:  # another replica pruning the same rows: it is done either way, or next time
            logger.warning("inference log: retention deferred", exc_info=True)
            return
        if by_count:
            self._pruned_at = now


def _keep_newest(conn: Connection, table: Table, max_rows: int) -> int:
    """Delete all but the newest `max_rows` rows of `table` (by time, then request id); the count removed."""
    cut = conn.execute(
        select(table.c.ts, table.c.request_id)
        .order_by(table.c.ts.desc(), table.c.request_id.desc())
        .offset(max_rows)
        .limit(1)
    ).first()
    if cut is None:
        return 0
    older = or_(table.c.ts < cut.ts, and_(table.c.ts == cut.ts, table.c.request_id <= cut.request_id))
    return conn.execute(delete(table).where(older)).rowcount


def _frame(conn: Connection | None, query: Any, columns: list[str]) -> pd.DataFrame:
    """The rows of `query` as a DataFrame with `columns` (no rows when the log does not exist)."""
    if conn is None:
        return pd.DataFrame(columns=columns)
    result = conn.execute(query)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def feedback_by_version(path: LogLocation) -> pd.DataFrame:
    """Labelled requests per model version over the whole log (version, feedback, correct),
    counted by the database, so the whole log is never loaded for it."""
    correct = func.sum(case((INFERENCE.c.prediction == INFERENCE.c.true_label, 1), else_=0))
    query = (
        select(
            INFERENCE.c.model_version.label("version"),
            func.count().label("feedback"),
            correct.label("correct"),
        )
        .where(INFERENCE.c.true_label.is_not(None))
        .group_by(INFERENCE.c.model_version)
        .order_by(func.min(INFERENCE.c.ts))
    )
    with _reading(path) as conn:
        frame = _frame(conn, query, ["version", "feedback", "correct"])
    return frame.astype({"feedback": int, "correct": int}) if len(frame) else frame


def read_log(path: LogLocation, since: datetime | None = None) -> pd.DataFrame:
    """The log as a DataFrame, oldest first, optionally only rows at or after `since`.

    Columns: request_id, time (UTC), endpoint, model_version, has_image/has_audio/has_text
    (bool: modalities the model used), the input statistics (STAT_COLUMNS; NaN where a
    modality is absent), embedding (float32 array, modalities x embed_dim flattened in
    image/audio/text order), prediction, confidence, probabilities (dict label -> p),
    latency_ms, true_label (None until feedback arrives) and feedback_time.
    A naive `since` is taken as UTC. A log that does not exist yet reads as empty.
    """
    columns = ["time" if name == "ts" else name for name in _COLUMNS] + ["true_label", "feedback_time"]
    query = select(INFERENCE).order_by(INFERENCE.c.ts, INFERENCE.c.seq, INFERENCE.c.request_id)
    if since is not None:
        after = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)).timestamp()
        query = query.where(INFERENCE.c.ts >= after)
    with _reading(path) as conn:
        frame = _frame(conn, query, [c.name for c in INFERENCE.columns]).drop(columns="seq")
    if conn is None:
        return pd.DataFrame(columns=columns)
    frame["time"] = _utc(frame.pop("ts"))
    frame["feedback_time"] = _utc(frame.pop("feedback_ts"))
    for name in (*FLAGS, *SET_ASIDE_COLUMNS):
        frame[name] = frame[name].astype(float).fillna(0).astype(bool)
    numeric = [*TRUST_COLUMNS, *STAT_COLUMNS, "confidence", "latency_ms"]
    frame[numeric] = frame[numeric].astype(float)
    frame["embedding"] = [np.frombuffer(blob, dtype="<f4").copy() for blob in frame["embedding"]]
    frame["probabilities"] = [json.loads(text) for text in frame["probabilities"]]
    frame["true_label"] = frame["true_label"].astype(object).where(frame["true_label"].notna(), None)
    return frame[columns]


def _utc(seconds: pd.Series) -> pd.Series:
    """Unix seconds (NULL as NaN) as UTC timestamps."""
    return pd.to_datetime(seconds.astype(float), unit="s", utc=True)


def labelled_captures(path: LogLocation) -> pd.DataFrame:
    """Every captured request that has feedback, oldest first: request_id, time (UTC), label (the
    true label /feedback brought), image and audio (paths in the media store, "" where absent; a
    file may since have been deleted) and text ("" where absent). What `mmfuse harvest` turns into training data."""
    columns = ["request_id", "time", "label", "image", "audio", "text"]
    query = (
        select(
            CAPTURED.c.request_id,
            CAPTURED.c.ts,
            INFERENCE.c.true_label.label("label"),
            CAPTURED.c.image,
            CAPTURED.c.audio,
            CAPTURED.c.text,
        )
        .join(INFERENCE, INFERENCE.c.request_id == CAPTURED.c.request_id)
        .where(INFERENCE.c.true_label.is_not(None))
        .order_by(CAPTURED.c.ts, CAPTURED.c.request_id)
    )
    with _reading(path) as conn:
        frame = _frame(conn, query, ["request_id", "ts", "label", "image", "audio", "text"])
    store = media_root(path)
    for column in ("image", "audio"):
        frame[column] = [str(media_path(store, digest)) if digest else "" for digest in frame[column]]
    frame["text"] = frame["text"].fillna("")
    frame["time"] = _utc(frame.pop("ts"))
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


def shadow_evidence(path: LogLocation, champion: str, challenger: str) -> ShadowEvidence:
    """Counted by the database over the requests `champion` answered and `challenger` scored in shadow.

    A log that does not exist yet, or predates shadow serving, holds no evidence (all zero).
    """

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    shadow, served = SHADOW.c, INFERENCE.c
    query = (
        select(
            func.count(),
            count(shadow.prediction == served.prediction),
            count(shadow.prediction.is_(None)),
            count(served.true_label.is_not(None)),
            count(shadow.prediction == served.true_label),
            count(served.prediction == served.true_label),
        )
        .select_from(SHADOW.join(INFERENCE, shadow.request_id == served.request_id))
        .where(shadow.model_version == challenger, served.model_version == champion)
    )
    counts: tuple[Any, ...] = (0,) * 6
    with _reading(path) as conn:
        if conn is not None and inspect(conn).has_table(SHADOW.name):
            counts = tuple(conn.execute(query).one())
    requests, agreed, failed, labelled, challenger_correct, champion_correct = (int(c) for c in counts)
    return ShadowEvidence(
        champion, challenger, requests, agreed, failed, labelled, challenger_correct, champion_correct
    )
