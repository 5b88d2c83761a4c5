"""Where spend windows live: SQLite on one machine, PostgreSQL across machines.

Both stores run a caller's function inside ONE transaction (`atomic`), so that a reservation,
and the sweep of expired leases before it, are all-or-nothing:
- SQLite: `BEGIN IMMEDIATE` takes the database's write lock at the start, so two processes
  never interleave their read-check-write; WAL + synchronous=FULL make a commit durable.
- PostgreSQL (psycopg 3): the conditional UPDATEs lock the window rows they change until the
  commit, and READ COMMITTED re-checks an UPDATE's WHERE against the row a concurrent
  transaction just committed, so "spent + reserved + this <= limit" holds across hosts.
  Deadlocks and serialization failures (rare: sweeps touch many rows) are retried.

SQL is written once with `?` placeholders; the PostgreSQL store turns them into `%s`.
Money is stored as integer micro-dollars (BIGINT): exact sums, no float noise.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from providers.errors import SpecError, StoryreelError

T = TypeVar("T")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS spend_windows (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        start TEXT NOT NULL,
        timezone TEXT NOT NULL,
        limit_micros BIGINT,
        spent_micros BIGINT NOT NULL DEFAULT 0,
        reserved_micros BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, period, start))""",
    """CREATE TABLE IF NOT EXISTS spend_reservations (
        id TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        amount_micros BIGINT NOT NULL,
        actual_micros BIGINT,
        state TEXT NOT NULL,
        committed INTEGER NOT NULL DEFAULT 0,
        run_id TEXT NOT NULL,
        shot_id TEXT NOT NULL,
        take INTEGER NOT NULL DEFAULT 1,
        attempt INTEGER,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS spend_reservations_open ON spend_reservations (state, lease_until)",
    "CREATE INDEX IF NOT EXISTS spend_reservations_run ON spend_reservations (run_id, shot_id)",
]
# Columns added since a store was first created: (table, column, SQL type and default). A store
# made before takes existed gets `take` = 1 on every reservation (attempts were per shot then).
COLUMNS = [("spend_reservations", "take", "INTEGER NOT NULL DEFAULT 1")]


class Tx(Protocol):
    """What a function run by `Store.atomic` may do."""

    for_update: str  # " FOR UPDATE" where the database has it, else ""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    def rowcount(self) -> int: ...


class Store(Protocol):
    url: str  # safe to print (no password)

    def atomic(self, fn: Callable[[Tx], T]) -> T: ...

    def close(self) -> None: ...


class _SqliteTx:
    for_update = ""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._count = 0

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self._db.execute(sql, params)
        rows = cur.fetchall()
        self._count = cur.rowcount
        return rows

    def rowcount(self) -> int:
        return self._count


class SQLiteStore:
    """One file shared by every process of one machine (not over NFS: SQLite's locks are not
    reliable there; use PostgreSQL for several machines)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self.url = f"sqlite://{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=60.0)
        try:
            self._db.execute("PRAGMA busy_timeout = 60000")
            _retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._db.execute("PRAGMA synchronous=FULL")
            self.atomic(_create_sqlite)
        except BaseException:
            self._db.close()
            raise

    def atomic(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            _retry_locked(lambda: self._db.execute("BEGIN IMMEDIATE"))
            try:
                result = fn(_SqliteTx(self._db))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _create_sqlite(tx: Tx) -> None:
    for sql in SCHEMA:
        tx.execute(sql)
    for table, column, decl in COLUMNS:  # SQLite has no ADD COLUMN IF NOT EXISTS
        if column not in {row[1] for row in tx.execute(f"PRAGMA table_info({table})")}:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _retry_locked(step: Callable[[], Any], tries: int = 20) -> Any:
    """The busy timeout covers most waits; a few statements (journal_mode) fail at once."""
    for i in range(tries):
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or i == tries - 1:
                raise
            time.sleep(0.05 * (i + 1))
    return None


class _PgTx:
    for_update = " FOR UPDATE"

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._count = 0

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(sql.replace("?", "%s"), params)
        self._count = cur.rowcount
        return cur.fetchall() if cur.description else []

    def rowcount(self) -> int:
        return self._count


class PostgresStore:
    """One database shared by every worker; may be the one a Prefect server uses."""

    def __init__(self, url: str, schema: list[str] | None = None,
                 columns: list[tuple[str, str, str]] | None = None,
                 what: str = "spend window ledger", env: str = "STORYREEL_LEDGER_URL") -> None:
        """`schema`/`columns`: the tables this store's user needs (the spend windows' by
        default; the run journal and leases bring theirs); `what`, `env`: for messages."""
        try:
            import psycopg
        except ImportError:
            raise StoryreelError(f"{env} names PostgreSQL but psycopg is not installed: "
                                 "pip install 'storyreel[cloud]'") from None
        self._psycopg = psycopg
        self._dsn = url
        self.url = safe_url(url)
        self.what = what
        self._lock = threading.Lock()
        self._conn: Any = None
        schema = SCHEMA if schema is None else schema
        columns = COLUMNS if columns is None else columns
        # concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog: serialise
        # first use across workers with a transaction-scoped advisory lock
        self.atomic(lambda tx: [tx.execute("SELECT pg_advisory_xact_lock(7310421)")]
                    + [tx.execute(sql) for sql in schema]
                    + [tx.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl}")
                       for table, column, decl in columns])

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
            except self._psycopg.OperationalError as exc:
                raise StoryreelError(f"{self.what} {self.url} unreachable: "
                                     f"{_first_line(exc)}") from None
        return self._conn

    def atomic(self, fn: Callable[[Tx], T]) -> T:
        errors = self._psycopg.errors
        retry = (errors.DeadlockDetected, errors.SerializationFailure)
        with self._lock:
            for attempt in range(8):
                conn = self._connect()
                try:
                    with conn.transaction():
                        return fn(_PgTx(conn))
                except retry:
                    if attempt == 7:
                        raise
                    time.sleep(0.01 * (attempt + 1))
                except self._psycopg.OperationalError as exc:
                    # a dropped connection: nothing was committed; reconnect once
                    with contextlib.suppress(Exception):
                        conn.close()
                    self._conn = None
                    if attempt >= 1:
                        raise StoryreelError(f"{self.what} {self.url}: "
                                             f"{_first_line(exc)}") from None
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def safe_url(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def default_path() -> Path:
    """~/.storyreel/budgets.sqlite, or under $STORYREEL_HOME."""
    home = os.environ.get("STORYREEL_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".storyreel") / "budgets.sqlite"


def open_store(url: str | None = None) -> Store:
    """The store STORYREEL_LEDGER_URL names (sqlite:///path or postgresql://...), else the
    SQLite file under the user's storyreel home."""
    url = url if url is not None else os.environ.get("STORYREEL_LEDGER_URL", "")
    if not url:
        return SQLiteStore(default_path())
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        # sqlite:///abs/path (the usual URL form), sqlite:///~/x, or sqlite:relative/path
        path = re.sub(r"^sqlite:(//)?", "", url, flags=re.I)
        path = path[1:] if path.startswith("/~") else path
        path = "/" + path.lstrip("/") if path.startswith("/") else path
        if not path.strip("/"):
            raise SpecError([("STORYREEL_LEDGER_URL", "sqlite:///path/to/budgets.sqlite needs a "
                                                     "path")])
        return SQLiteStore(Path(path))
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        # the SQLAlchemy form a Prefect server is given (postgresql+asyncpg://) works too
        return PostgresStore(re.sub(r"^[^:]+", "postgresql", url))
    raise SpecError([("STORYREEL_LEDGER_URL", f"'{safe_url(url)}' is not a ledger URL: use "
                                             "sqlite:///path or postgresql://user@host/db")])
