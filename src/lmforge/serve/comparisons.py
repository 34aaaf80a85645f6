"""The serving store: which variant answered each request, shadow comparisons, client feedback.

One SQLite file, `REGISTRY/serving.sqlite`, in WAL mode so that several worker processes can
write while the report reads. Assignments and comparisons are written on the hot path, so they
are buffered in memory and written in one transaction per flush (a daemon thread flushes every
half second); the buffers are bounded and drop (and count) rows rather than grow when the disk
cannot keep up. Feedback is rare and the client waits for its answer, so it is written at once.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

STORE_FILE = "serving.sqlite"
PROB_DIGITS = 5  # 1e-5 is far below any drift we report; keeps rows small
PRUNE_EVERY_S = 600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    variant TEXT NOT NULL,
    key TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS assignments_model_at ON assignments (model, at);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    primary_version INTEGER NOT NULL,
    shadow_version INTEGER NOT NULL,
    agree_count INTEGER NOT NULL,
    texts INTEGER NOT NULL,
    labels TEXT NOT NULL,
    primary_probs TEXT NOT NULL,
    shadow_probs TEXT NOT NULL,
    primary_latency_s REAL NOT NULL,
    shadow_latency_s REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS comparisons_model_at ON comparisons (model, at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    variant TEXT NOT NULL,
    outcome REAL NOT NULL,
    served_at REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_model_served ON feedback (model, served_at);
"""


class ServingStoreError(LmforgeError):
    """The serving store is missing, or a value given to it is invalid."""


class FeedbackError(LmforgeError):
    """Feedback names an unknown request id or carries an invalid outcome."""


@dataclass(frozen=True)
class Comparison:
    """The live (primary) and shadow answers to one request; probs are per text, label order."""

    model: str
    request_id: str
    primary_version: int
    shadow_version: int
    agree_count: int
    texts: int
    primary_probs: list[list[float]]
    shadow_probs: list[list[float]]
    labels: list[str]
    primary_latency_s: float
    shadow_latency_s: float
    at: float

    @property
    def agreement(self) -> float:
        """Share of this request's texts on which both versions chose the same label."""
        return self.agree_count / self.texts if self.texts else 1.0


@dataclass(frozen=True)
class FeedbackResult:
    """What a feedback POST was attributed to."""

    request_id: str
    model: str
    version: int
    variant: str
    outcome: float
    replaced: bool  # True: this request already had feedback; the new outcome overrides it


def _top_label(prediction: Mapping[str, Any]) -> str:
    label = prediction.get("label")
    if isinstance(label, str):
        return label
    probs = prediction.get("probs") or {}
    if not probs:
        raise ValueError(f"prediction has neither a label nor probs: {prediction!r}")
    return max(probs, key=probs.__getitem__)


def compare_predictions(
    model: str,
    request_id: str,
    primary: Sequence[Mapping[str, Any]],
    shadow: Sequence[Mapping[str, Any]],
    primary_version: int,
    shadow_version: int,
    primary_latency_s: float,
    shadow_latency_s: float,
    at: float | None = None,
) -> Comparison:
    """Build a Comparison from two lists of `{"label", "probs"}` predictions for the same texts.

    Agreement is per text: the same top label. Labels are the primary's label order, then any
    label only the shadow knows (sorted); a label a version does not know gets probability 0.
    """
    if len(primary) != len(shadow):
        raise ValueError(
            f"shadow answered {len(shadow)} predictions for {len(primary)} texts; "
            "it must answer one per text"
        )
    labels: list[str] = []
    for pred in primary:
        for label in pred.get("probs") or {}:
            if label not in labels:
                labels.append(label)
    extra = {label for pred in shadow for label in (pred.get("probs") or {})} - set(labels)
    labels.extend(sorted(extra))

    def rows(preds: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        out = []
        for pred in preds:
            probs = pred.get("probs") or {}
            out.append([float(probs.get(label, 0.0)) for label in labels])
        return out

    agree = sum(_top_label(p) == _top_label(s) for p, s in zip(primary, shadow, strict=True))
    return Comparison(
        model=model,
        request_id=request_id,
        primary_version=int(primary_version),
        shadow_version=int(shadow_version),
        agree_count=int(agree),
        texts=len(primary),
        primary_probs=rows(primary),
        shadow_probs=rows(shadow),
        labels=labels,
        primary_latency_s=float(primary_latency_s),
        shadow_latency_s=float(shadow_latency_s),
        at=time.time() if at is None else float(at),
    )


def _dump_probs(probs: list[list[float]]) -> str:
    return json.dumps(
        [[round(p, PROB_DIGITS) for p in row] for row in probs], separators=(",", ":")
    )


class ServingStore:
    """Buffered writer and reader of `REGISTRY/serving.sqlite`; safe across threads and processes.

    `max_buffer` bounds each in-memory buffer (assignments, comparisons); rows arriving when one
    is full are dropped and counted in `dropped`. Rows older than `retention_days` are pruned
    by the background flusher (and by `prune()`).
    """

    def __init__(
        self,
        registry_dir: Path | str,
        *,
        create: bool = True,
        max_buffer: int = 50_000,
        retention_days: float = 30.0,
    ) -> None:
        if max_buffer < 1:
            raise ServingStoreError(f"max_buffer must be at least 1, got {max_buffer}")
        if retention_days <= 0:
            raise ServingStoreError(
                f"retention_days must be positive, got {retention_days}; "
                "use a large number to keep data longer"
            )
        self.root = Path(registry_dir).resolve()
        self.path = self.root / STORE_FILE
        if not create and not self.path.exists():
            raise ServingStoreError(
                f"no serving data at {self.path}: serve a model from this registry with a "
                "`shadow` alias (lmforge registry promote NAME VERSION --alias shadow) or an "
                "A/B policy, and send it traffic"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_buffer = max_buffer
        self.retention_days = retention_days
        self.dropped = 0
        self._assignments: list[tuple[Any, ...]] = []
        self._comparisons: list[tuple[Any, ...]] = []
        self._buffer_lock = threading.Lock()
        self._db_lock = threading.Lock()  # one connection, shared by the threads of this store
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable enough, fast
        self._conn.executescript(SCHEMA)  # its own transactions; IF NOT EXISTS: races are fine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    # --- connection -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            if self._conn is None:
                raise ServingStoreError(f"the serving store {self.path} is closed")
            conn = self._conn
            # IMMEDIATE takes the write lock up front, so concurrent writers wait on the busy
            # timeout instead of failing when a read transaction tries to upgrade.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            if self._conn is None:
                raise ServingStoreError(f"the serving store {self.path} is closed")
            return self._conn.execute(sql, tuple(args)).fetchall()

    # --- buffered writes --------------------------------------------------------------------

    def _buffer(self, name: str, row: tuple[Any, ...]) -> None:
        with self._buffer_lock:
            rows = getattr(self, name)  # looked up under the lock: flush() swaps the lists
            if len(rows) >= self.max_buffer:
                self.dropped += 1
                return
            rows.append(row)

    def record_assignment(
        self,
        request_id: str,
        model: str,
        version: int,
        variant: str,
        key: str | None,
        at: float | None = None,
    ) -> None:
        """Remember which variant (alias) and version served a request; buffered, never blocks."""
        at = time.time() if at is None else at
        self._buffer("_assignments", (request_id, model, int(version), variant, key, at))

    def record_comparison(self, c: Comparison) -> None:
        """Queue one shadow comparison for the next flush."""
        row = (
            c.model,
            c.request_id,
            c.primary_version,
            c.shadow_version,
            c.agree_count,
            c.texts,
            json.dumps(c.labels, ensure_ascii=False),
            _dump_probs(c.primary_probs),
            _dump_probs(c.shadow_probs),
            c.primary_latency_s,
            c.shadow_latency_s,
            c.at,
        )
        self._buffer("_comparisons", row)

    @property
    def pending(self) -> int:
        """Rows waiting in the buffers."""
        with self._buffer_lock:
            return len(self._assignments) + len(self._comparisons)

    def flush(self) -> None:
        """Write all buffered rows in one transaction.

        If the write fails (e.g. the database stays locked past the timeout), the rows go back
        into the buffers, as far as the bound allows, and the error is raised.
        """
        with self._buffer_lock:
            assignments, self._assignments = self._assignments, []
            comparisons, self._comparisons = self._comparisons, []
        if not assignments and not comparisons:
            return
        # A row SQLite cannot store (a lone surrogate in a client's key) is dropped here, or it
        # would go back into the buffer and fail every later flush with it.
        assignments = self._storable(assignments)
        comparisons = self._storable(comparisons)
        try:
            with self._transaction() as conn:
                # OR IGNORE: a retried request id keeps its first assignment
                conn.executemany(
                    "INSERT OR IGNORE INTO assignments VALUES (?, ?, ?, ?, ?, ?)", assignments
                )
                conn.executemany(
                    "INSERT INTO comparisons (model, request_id, primary_version, "
                    "shadow_version, agree_count, texts, labels, primary_probs, shadow_probs, "
                    "primary_latency_s, shadow_latency_s, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    comparisons,
                )
        except BaseException:
            with self._buffer_lock:
                for old, attr in ((assignments, "_assignments"), (comparisons, "_comparisons")):
                    merged = old + getattr(self, attr)
                    self.dropped += max(0, len(merged) - self.max_buffer)
                    setattr(self, attr, merged[: self.max_buffer])
            raise

    def _storable(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        kept = [row for row in rows if all(_encodable(v) for v in row)]
        if len(kept) != len(rows):
            self.dropped += len(rows) - len(kept)
            log.warning(
                "serving store: dropped %d row(s) with unstorable text", len(rows) - len(kept)
            )
        return kept

    def prune(self, now: float | None = None) -> int:
        """Delete rows older than `retention_days`; returns how many were deleted."""
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400.0
        with self._transaction() as conn:
            deleted = 0
            for table, column in (
                ("assignments", "at"),
                ("comparisons", "at"),
                ("feedback", "served_at"),
            ):
                deleted += conn.execute(
                    f"DELETE FROM {table} WHERE {column} < ?", (cutoff,)
                ).rowcount
        return deleted

    # --- background flushing ----------------------------------------------------------------

    def start_background_flush(self, interval_s: float = 0.5) -> None:
        """Flush every `interval_s` seconds from a daemon thread (idempotent)."""
        if interval_s <= 0:
            raise ServingStoreError(f"interval_s must be positive, got {interval_s}")
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._flush_loop, args=(interval_s,), name="serving-store-flush", daemon=True
        )
        self._thread.start()

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
                if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                    self._last_prune = time.monotonic()
                    self.prune()
            except Exception:  # a locked or full disk must not kill the flusher; rows retry
                log.warning("serving store flush failed; will retry", exc_info=True)

    def close(self) -> None:
        """Stop the flusher, write what is buffered, close the connection (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is None:
            return
        try:
            self.flush()
        finally:
            with self._db_lock:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ServingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- feedback ---------------------------------------------------------------------------

    def record_feedback(
        self, request_id: str, outcome: float, at: float | None = None
    ) -> FeedbackResult:
        """Attach an outcome (a 0/1 success flag or a score in [0, 1]) to a served request.

        Synchronous. A second outcome for the same request replaces the first.
        """
        try:
            value = float(outcome)
        except (TypeError, ValueError):
            raise FeedbackError(
                f"outcome must be a number between 0 and 1 (a success flag or a score), "
                f"got {outcome!r}"
            ) from None
        if not (0.0 <= value <= 1.0):  # also rejects NaN
            raise FeedbackError(
                f"outcome must be between 0 and 1 (1/0 for success/failure, or a score), "
                f"got {outcome!r}"
            )
        row = self._assignment(request_id)
        if row is None and self.pending:
            # The prediction may be so recent that its assignment is still in our buffer.
            self.flush()
            row = self._assignment(request_id)
        if row is None:
            raise FeedbackError(
                f"unknown request id {request_id!r}: use the request_id returned by a predict "
                f"response of this server; assignments are kept for {self.retention_days:g} "
                "days (if the prediction was made a moment ago, retry in a second)"
            )
        model, version, variant, served_at = row
        at = time.time() if at is None else at
        with self._transaction() as conn:
            replaced = (
                conn.execute(
                    "SELECT 1 FROM feedback WHERE request_id = ?", (request_id,)
                ).fetchone()
                is not None
            )
            conn.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, model, version, variant, value, served_at, at),
            )
        return FeedbackResult(request_id, model, int(version), variant, value, replaced)

    def _assignment(self, request_id: str) -> tuple[str, int, str, float] | None:
        rows = self._query(
            "SELECT model, version, variant, at FROM assignments WHERE request_id = ?",
            (request_id,),
        )
        return rows[0] if rows else None

    # --- reads ------------------------------------------------------------------------------

    def comparisons(
        self, model: str, since: float | None = None, limit: int | None = None
    ) -> list[Comparison]:
        """Stored comparisons of `model` at or after `since`, oldest first (`limit`: newest N)."""
        if limit is not None and limit < 1:
            raise ServingStoreError(f"limit must be at least 1 (or None for all), got {limit}")
        sql = (
            "SELECT model, request_id, primary_version, shadow_version, agree_count, texts, "
            "primary_probs, shadow_probs, labels, primary_latency_s, shadow_latency_s, at "
            "FROM comparisons WHERE model = ? AND at >= ? ORDER BY at DESC, id DESC"
        )
        args: list[Any] = [model, -math.inf if since is None else since]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        out = []
        for row in reversed(self._query(sql, args)):
            m, rid, pv, sv, agree, texts, pp, sp, labels, pl, sl, at = row
            p_probs, s_probs, names = json.loads(pp), json.loads(sp), json.loads(labels)
            out.append(
                Comparison(m, rid, pv, sv, agree, texts, p_probs, s_probs, names, pl, sl, at)
            )
        return out

    def feedback_by_variant(self, model: str, since: float | None = None) -> dict[str, list[float]]:
        """Outcomes per variant for requests of `model` served at or after `since`."""
        rows = self._query(
            "SELECT variant, outcome FROM feedback WHERE model = ? AND served_at >= ? "
            "ORDER BY served_at",
            (model, -math.inf if since is None else since),
        )
        out: dict[str, list[float]] = {}
        for variant, outcome in rows:
            out.setdefault(variant, []).append(float(outcome))
        return out

    def assignment_counts(self, model: str, since: float | None = None) -> dict[str, int]:
        """Requests served per variant (from the flushed assignments)."""
        rows = self._query(
            "SELECT variant, COUNT(*) FROM assignments WHERE model = ? AND at >= ? "
            "GROUP BY variant ORDER BY variant",
            (model, -math.inf if since is None else since),
        )
        return {variant: int(n) for variant, n in rows}

    def models(self) -> list[str]:
        """Models with any stored assignment, comparison or feedback, sorted."""
        rows = self._query(
            "SELECT model FROM comparisons UNION SELECT model FROM assignments "
            "UNION SELECT model FROM feedback ORDER BY model"
        )
        return [r[0] for r in rows]


def _encodable(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
