"""The journal in PostgreSQL (STORYREEL_DB_URL): the rows of flows/money/journal.py, keyed by run.

Why: a run folder on one worker's disk dies with its container; a journal in a database
shared by every worker lets any of them resume, re-cut or reconcile a run another left. The
rules (statuses, fields, money rounding, relative paths) are JournalBase's, so the rows are
the ones the SQLite journal would hold; only storage differs:

- Every row carries `run_key` (flows/run/journals.py: the run's identity, which survives a
  fresh container), and row ids count from 1 per run, like the SQLite file's, so cost.csv and
  the review page read the same on both. A per-run transaction-scoped advisory lock makes
  "the next id" safe even if two processes wrote one run (a stale owner's late status rows).
- Each call is one committed transaction (autocommit connection, psycopg 3), like the SQLite
  journal's: a row a call returned for survives the writer's SIGKILL.
- `fence`: the lease token of the owner that opened it (flows/run/lease.py). An intent row,
  the step before every paid submit, is written only while that token still owns the run:
  an owner whose lease was taken over (it stalled past the lease) cannot submit again; the
  new owner finds its last intents without an answer and treats them as unconfirmed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.files.folder import absolute
from flows.money.journal import _COLUMNS, JournalBase, new_run_id
from flows.money.window_sql import PostgresStore, Tx
from providers.errors import BusyError

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS storyreel_journal (
        run_key TEXT NOT NULL,
        id BIGINT NOT NULL,
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
        estimated_usd DOUBLE PRECISION,
        reserved_usd DOUBLE PRECISION,
        actual_usd DOUBLE PRECISION,
        cost_source TEXT,
        clip_path TEXT,
        conformed_path TEXT,
        queued_s DOUBLE PRECISION,
        generation_s DOUBLE PRECISION,
        download_s DOUBLE PRECISION,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        updated_at TEXT NOT NULL,
        take INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (run_key, id))""",
    "CREATE INDEX IF NOT EXISTS storyreel_journal_shot ON storyreel_journal (run_key, shot_id, id)",
    """CREATE TABLE IF NOT EXISTS storyreel_journal_meta (
        run_key TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_key, key))""",
    # one row per run: who owns it and until when (flows/run/lease.py); times are the
    # database's clock, so hosts with skewed clocks agree on when a lease lapsed
    """CREATE TABLE IF NOT EXISTS storyreel_runs (
        run_key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token TEXT NOT NULL,
        taken_at TIMESTAMPTZ NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL)""",
]


def open_db(url: str) -> PostgresStore:
    """A connection to the run database, its tables made on first use."""
    return PostgresStore(url, schema=SCHEMA, columns=[], what="run database",
                         env="STORYREEL_DB_URL")


def journal_exists(url: str, run_key: str) -> bool:
    store = open_db(url)
    try:
        return bool(store.atomic(lambda tx: tx.execute(
            "SELECT 1 FROM storyreel_journal_meta WHERE run_key = ? AND key = 'run_id'",
            (run_key,))))
    finally:
        store.close()


class PgJournal(JournalBase):
    """One run's journal in PostgreSQL; `folder` is where the run folder is now (paths in
    rows are relative to it, as in the SQLite journal)."""

    def __init__(self, url: str, run_key: str, folder: Path, run_id: str | None = None,
                 fence: str | None = None) -> None:
        self.run_key = run_key
        self.folder = absolute(folder)
        self.fence = fence
        self._store = open_db(url)
        self.where = f"{self._store.url} run {run_key}"
        try:
            self._store.atomic(lambda tx: tx.execute(
                "INSERT INTO storyreel_journal_meta (run_key, key, value) VALUES (?, 'run_id', ?) "
                "ON CONFLICT (run_key, key) DO NOTHING", (run_key, json.dumps(run_id or new_run_id()))))
        except BaseException:
            self._store.close()
            raise
        # an existing run keeps its id: the new owner of a crashed run is the same run
        self.run_id: str = self.meta_get("run_id")

    def _add_row(self, values: dict[str, Any], intent: bool) -> int:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        fenced = intent and self.fence is not None

        def step(tx: Tx) -> int | None:
            tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (self.run_key,))
            guard = (" WHERE EXISTS (SELECT 1 FROM storyreel_runs WHERE run_key = ? "
                     "AND token = ?)") if fenced else ""
            rows = tx.execute(
                f"INSERT INTO storyreel_journal (run_key, id, {cols}) "
                f"SELECT ?, n.id, {marks} FROM (SELECT COALESCE(MAX(id), 0) + 1 AS id "
                f"FROM storyreel_journal WHERE run_key = ?) n{guard} RETURNING id",
                (self.run_key, *values.values(), self.run_key,
                 *((self.run_key, self.fence) if fenced else ())))
            return int(rows[0][0]) if rows else None

        row = self._store.atomic(step)
        if row is None:
            raise BusyError(f"run {self.run_key}: this owner's lease was taken over by another "
                            "worker; nothing more is submitted from here")
        return row

    def _set_row(self, row: int, values: dict[str, Any]) -> int:
        sets = ", ".join(f"{c} = ?" for c in values)

        def step(tx: Tx) -> int:
            tx.execute(f"UPDATE storyreel_journal SET {sets} WHERE run_key = ? AND id = ?",
                       (*values.values(), self.run_key, row))
            return tx.rowcount()

        return self._store.atomic(step)

    def _rows(self, shot_id: str | None = None, row: int | None = None) -> list[tuple[Any, ...]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM storyreel_journal WHERE run_key = ?"
        args: tuple[Any, ...] = (self.run_key,)
        if shot_id is not None:
            sql, args = sql + " AND shot_id = ?", (*args, shot_id)
        elif row is not None:
            sql, args = sql + " AND id = ?", (*args, row)
        return [tuple(r) for r in self._store.atomic(lambda tx: tx.execute(sql + " ORDER BY id",
                                                                           args))]

    def _top_attempt(self, shot_id: str, take: int | None) -> int | None:
        sql = "SELECT MAX(attempt) FROM storyreel_journal WHERE run_key = ? AND shot_id = ?"
        args: tuple[Any, ...] = (self.run_key, shot_id)
        if take is not None:
            sql, args = sql + " AND take = ?", (*args, take)
        return self._store.atomic(lambda tx: tx.execute(sql, args))[0][0]

    def _meta_value(self, key: str) -> str | None:
        rows = self._store.atomic(lambda tx: tx.execute(
            "SELECT value FROM storyreel_journal_meta WHERE run_key = ? AND key = ?",
            (self.run_key, key)))
        return rows[0][0] if rows else None

    def _meta_put(self, key: str, value: str) -> None:
        self._store.atomic(lambda tx: tx.execute(
            "INSERT INTO storyreel_journal_meta (run_key, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (run_key, key) DO UPDATE SET value = excluded.value",
            (self.run_key, key, value)))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> PgJournal:
        return self
