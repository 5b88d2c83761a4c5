"""Write-ahead journal of every paid attempt: an SQLite file in the run's folder, or rows in
PostgreSQL when STORYREEL_DB_URL names one (flows/money/journal_pg.py: same interface, same
rows; for runs that any of several workers may resume).

The rule that makes "never pay twice" possible: an `intent` row is committed
*before* a submit leaves the machine, and the vendor's job id is committed
right after the answer. A run killed at any moment and started again reads
this file and knows, per shot, whether a job exists (poll it), a clip is
already on disk (reuse it), or a submit may have reached the vendor without
an answer (report it as "unconfirmed"; never resubmit it blindly).

Paths: clip_path and conformed_path are stored relative to the journal's folder (the run
folder) when the file is in it, absolute otherwise (the clip cache), and read back absolute,
resolved against the folder the journal is in now: a run folder can be moved or copied
(flows/files/folder.py has the rule, and how a journal written before it is migrated on open).

Durability: WAL mode with synchronous=FULL, and every write is its own
committed transaction, so a row that a call returned for survives SIGKILL
and power loss. One connection per Journal; a threading lock serialises use
of it from the event loop and from worker threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.files.folder import absolute, migrate, resolved, stored
from flows.money.status import STATUSES, TERMINAL, Status
from flows.money.usd import as_float

STATUS_FIELDS = frozenset(
    {
        "failure_reason",
        "actual_usd",
        "cost_source",
        "clip_path",
        "conformed_path",
        "queued_s",
        "generation_s",
        "download_s",
        "finished_at",
    }
)
# `record` may also fill these (a cache hit knows its key, a refusal its estimate).
RECORD_FIELDS = STATUS_FIELDS | {"cache_key", "job_id", "job_data", "estimated_usd", "reserved_usd",
                                 "take"}
_MONEY = {"estimated_usd", "reserved_usd", "actual_usd"}
_PATHS = ("clip_path", "conformed_path")
PATHS_VERSION = 1  # meta "paths": the journal's paths follow flows/files/folder.py
_SECONDS = {"queued_s", "generation_s", "download_s"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    shot_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    cache_key TEXT,
    job_id TEXT,
    job_data TEXT,
    status TEXT NOT NULL,
    failure_reason TEXT,
    estimated_usd REAL,
    reserved_usd REAL,
    actual_usd REAL,
    cost_source TEXT,
    clip_path TEXT,
    conformed_path TEXT,
    queued_s REAL,
    generation_s REAL,
    download_s REAL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    updated_at TEXT NOT NULL,
    take INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS attempts_shot ON attempts (shot_id, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Attempt:
    id: int
    run_id: str
    shot_id: str
    attempt: int
    provider: str
    model: str
    cache_key: str | None
    job_id: str | None
    job_data: dict[str, Any] | None
    status: str
    failure_reason: str | None
    estimated_usd: float | None
    reserved_usd: float | None
    actual_usd: float | None
    cost_source: str | None
    clip_path: str | None
    conformed_path: str | None
    queued_s: float | None
    generation_s: float | None
    download_s: float | None
    started_at: str
    finished_at: str | None
    updated_at: str
    take: int = 1  # which take of the shot (`takes: N`); attempts are numbered per take

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


_COLUMNS = [f.name for f in fields(Attempt)]


def utcnow() -> str:
    """ISO-8601 UTC, e.g. 2025-01-31T12:00:00.123456+00:00."""
    return datetime.now(UTC).isoformat()


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class JournalBase:
    """The journal's interface and its rules (statuses, fields, money, paths), whatever holds
    the rows: `Journal` (SQLite in the run folder) or flows.money.journal_pg.PgJournal
    (PostgreSQL, STORYREEL_DB_URL). A backend stores and reads rows; this class decides what
    they say, so both backends hold the same rows for the same calls."""

    folder: Path  # what relative paths in it are relative to: the run folder
    run_id: str
    where: str  # the journal's place, for messages

    # -- writes ------------------------------------------------------------------
    def intent(
        self,
        *,
        shot_id: str,
        attempt: int,
        provider: str,
        model: str,
        cache_key: str,
        estimated_usd: float,
        reserved_usd: float,
        take: int = 1,
    ) -> int:
        """Commit the intent to submit, BEFORE the submit; returns the attempt's row id."""
        return self._insert(
            dict(shot_id=shot_id, attempt=attempt, take=take, provider=provider, model=model,
                 status=Status.INTENT, cache_key=cache_key, estimated_usd=estimated_usd,
                 reserved_usd=reserved_usd),
            intent=True,
        )

    def submitted(self, row: int, job_id: str, job_data: dict[str, Any]) -> None:
        """Commit the vendor's job id (and whatever is needed to poll it) right after submit."""
        self._update(row, {"status": Status.SUBMITTED, "job_id": job_id, "job_data": job_data})

    def status(self, row: int, status: str, **fields: Any) -> None:
        _check_status(status)
        unknown = set(fields) - STATUS_FIELDS
        if unknown:
            raise ValueError(f"unknown journal field(s): {', '.join(sorted(unknown))}")
        values = {"status": status, **fields}
        if status in TERMINAL and "finished_at" not in fields:
            values["finished_at"] = utcnow()
        self._update(row, values)

    def record(
        self, *, shot_id: str, attempt: int, provider: str, model: str, status: str, **fields: Any
    ) -> int:
        """One-shot row for work that never submits: cache hits, skips, plan-time refusals."""
        _check_status(status)
        unknown = set(fields) - RECORD_FIELDS
        if unknown:
            raise ValueError(f"unknown journal field(s): {', '.join(sorted(unknown))}")
        return self._insert(dict(shot_id=shot_id, attempt=attempt, provider=provider,
                                 model=model, status=status, **fields))

    def meta_set(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (the plan hash, the spec path, ...)."""
        self._meta_put(key, json.dumps(value))

    def _insert(self, values: dict[str, Any], intent: bool = False) -> int:
        now = utcnow()
        values = _encode(values, self.folder)
        values.update(run_id=self.run_id, started_at=now, updated_at=now)
        if values["status"] in TERMINAL:  # a one-shot row is over as soon as it is written
            values.setdefault("finished_at", now)
        return self._add_row(values, intent)

    def _update(self, row: int, values: dict[str, Any]) -> None:
        values = _encode(values, self.folder)
        values["updated_at"] = utcnow()
        if self._set_row(row, values) != 1:
            raise KeyError(f"journal {self.where}: no attempt row {row}")

    # -- reads -------------------------------------------------------------------
    def attempts(self, shot_id: str | None = None) -> list[Attempt]:
        return [_decode(r, self.folder) for r in self._rows(shot_id=shot_id)]

    def get(self, row: int) -> Attempt:
        found = self._rows(row=row)
        if not found:
            raise KeyError(f"journal {self.where}: no attempt row {row}")
        return _decode(found[0], self.folder)

    def next_attempt(self, shot_id: str, take: int | None = None) -> int:
        """1 + the highest attempt number recorded for the shot (1 for a new shot); with
        `take`, within that take (takes run side by side, each numbering its own attempts)."""
        top = self._top_attempt(shot_id, take)
        return 1 if top is None else int(top) + 1

    def meta_get(self, key: str, default: Any = None) -> Any:
        value = self._meta_value(key)
        return default if value is None else json.loads(value)

    # -- what a backend provides ---------------------------------------------------
    def _add_row(self, values: dict[str, Any], intent: bool) -> int:
        """Insert one encoded row; its id. `intent`: the row precedes a submit (a backend
        shared by several owners refuses it to an owner that lost the run)."""
        raise NotImplementedError

    def _set_row(self, row: int, values: dict[str, Any]) -> int:
        """Update one row's columns; how many rows changed."""
        raise NotImplementedError

    def _rows(self, shot_id: str | None = None, row: int | None = None) -> list[tuple[Any, ...]]:
        """Rows as tuples in _COLUMNS order, by id."""
        raise NotImplementedError

    def _top_attempt(self, shot_id: str, take: int | None) -> int | None:
        raise NotImplementedError

    def _meta_value(self, key: str) -> str | None:
        raise NotImplementedError

    def _meta_put(self, key: str, value: str) -> None:
        raise NotImplementedError

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Journal(JournalBase):
    """The run's attempt log in `<run folder>/journal.sqlite`; see the module docstring for
    the durability contract."""

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.folder = absolute(self.path.parent)  # what relative paths in it are relative to
        self._lock = threading.Lock()
        # isolation_level=None: autocommit; each statement below is one durable transaction.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _migrate(self._db)
            _relocate(self._db, self.folder)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('run_id', ?)",
                (json.dumps(run_id or new_run_id()),),
            )
        except BaseException:
            self._db.close()
            raise
        # An existing journal keeps its run id: a resumed run is the same run.
        self.run_id: str = self.meta_get("run_id")

    def _meta_put(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def _add_row(self, values: dict[str, Any], intent: bool) -> int:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO attempts ({cols}) VALUES ({marks})", tuple(values.values())
            )
            return int(cur.lastrowid)

    def _set_row(self, row: int, values: dict[str, Any]) -> int:
        sets = ", ".join(f"{c} = ?" for c in values)
        with self._lock:
            cur = self._db.execute(
                f"UPDATE attempts SET {sets} WHERE id = ?", (*values.values(), row)
            )
        return cur.rowcount

    def _rows(self, shot_id: str | None = None, row: int | None = None) -> list[tuple[Any, ...]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM attempts"
        args: tuple[Any, ...] = ()
        if shot_id is not None:
            sql, args = sql + " WHERE shot_id = ?", (shot_id,)
        elif row is not None:
            sql, args = sql + " WHERE id = ?", (row,)
        with self._lock:
            return self._db.execute(sql + " ORDER BY id", args).fetchall()

    def _top_attempt(self, shot_id: str, take: int | None) -> int | None:
        sql, args = "SELECT MAX(attempt) FROM attempts WHERE shot_id = ?", (shot_id,)
        if take is not None:
            sql, args = sql + " AND take = ?", (shot_id, take)
        with self._lock:
            (top,) = self._db.execute(sql, args).fetchone()
        return top

    def _meta_value(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self


def _migrate(db: sqlite3.Connection) -> None:
    """Columns added after a journal may have been written (a run folder from an older
    version resumes with its rows intact)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(attempts)")}
    if "take" not in have:
        db.execute("ALTER TABLE attempts ADD COLUMN take INTEGER NOT NULL DEFAULT 1")


def _relocate(db: sqlite3.Connection, folder: Path) -> None:
    """Once per journal: paths written before they were stored relative to the run folder
    are moved to the folder the journal is read from (flows.files.folder.migrate). A new journal
    has no rows and is marked at once."""
    if db.execute("SELECT 1 FROM meta WHERE key = 'paths'").fetchone() is not None:
        return
    db.execute("BEGIN IMMEDIATE")  # one migration, even with two openers at once
    try:
        if db.execute("SELECT 1 FROM meta WHERE key = 'paths'").fetchone() is None:
            rows = db.execute(
                f"SELECT id, {', '.join(_PATHS)} FROM attempts "
                f"WHERE {' OR '.join(f'{c} IS NOT NULL' for c in _PATHS)}").fetchall()
            for row_id, *paths in rows:
                db.execute(f"UPDATE attempts SET {', '.join(f'{c} = ?' for c in _PATHS)} "
                           "WHERE id = ?",
                           (*(None if p is None else migrate(p, folder) for p in paths), row_id))
            db.execute("INSERT INTO meta (key, value) VALUES ('paths', ?)",
                       (json.dumps(PATHS_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown attempt status {status!r}; one of {', '.join(sorted(STATUSES))}")


def _encode(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = dict(values)
    if "job_data" in out and out["job_data"] is not None:
        out["job_data"] = json.dumps(out["job_data"], sort_keys=True)
    for key in _MONEY & out.keys():
        if out[key] is not None:
            out[key] = as_float(out[key])
    for key in _SECONDS & out.keys():
        if out[key] is not None:
            out[key] = round(float(out[key]), 3)
    for key in _PATHS:
        if out.get(key) is not None:
            out[key] = stored(out[key], folder)
    return out


def _decode(row: tuple[Any, ...], folder: Path) -> Attempt:
    values = dict(zip(_COLUMNS, row, strict=True))
    if values["job_data"] is not None:
        values["job_data"] = json.loads(values["job_data"])
    for key in _PATHS:
        if values[key] is not None:
            values[key] = str(resolved(values[key], folder))
    return Attempt(**values)
