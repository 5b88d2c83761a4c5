"""Where a run's journal lives, and the run's identity when it lives in a database.

Default: `<run folder>/journal.sqlite` (one machine). With STORYREEL_DB_URL=postgresql://...
the journal and the run's ownership are rows in that database (flows/money/journal_pg.py,
flows/run/lease.py), keyed by the run's key:

The key is the run folder's absolute path (the `out` a run is given) when the run starts,
written to `<run folder>/.storyreel-run`. Why the `out` location: it is the one thing a fresh
container, a second worker or a re-triggered deployment run knows before it has any file of
the run; the run id is minted inside the journal, so it cannot find the journal. Why the
marker file: a folder moved or copied elsewhere keeps its key (so, its journal rows); a copy
is the same run, not a branch of it (delete the marker to start a new run from a copy).

The marker also keeps the two places from being mixed up, which could pay twice: a folder
whose journal is in the database is refused without STORYREEL_DB_URL, and a folder with a
local journal.sqlite is refused with it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from flows.files.atomic import write_text_atomic
from flows.files.folder import absolute
from flows.money.journal import Journal, JournalBase
from flows.money.window_sql import safe_url
from providers.errors import SpecError

MARKER = ".storyreel-run"
SQLITE = "journal.sqlite"


def db_url() -> str | None:
    """STORYREEL_DB_URL (postgresql://...; the SQLAlchemy postgresql+driver:// form too), or
    None: the journal in the run folder. The spend windows' STORYREEL_LEDGER_URL is not reused
    on its own: moving existing runs' journals off their folders must be a deliberate choice
    (set both to one URL to share one database)."""
    url = os.environ.get("STORYREEL_DB_URL", "").strip()
    if not url:
        return None
    if url.split(":", 1)[0].lower().split("+", 1)[0] not in ("postgresql", "postgres"):
        raise SpecError([("STORYREEL_DB_URL", f"'{safe_url(url)}' is not a PostgreSQL URL "
                                              "(postgresql://user@host/db)")])
    return re.sub(r"^[^:]+", "postgresql", url)


def _marker(run_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SpecError([(str(run_dir / MARKER), f"unreadable ({exc})")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise SpecError([(str(run_dir / MARKER), "has no run key")])
    return data


def run_key(run_dir: Path, *, record: bool = False) -> str:
    """The run's key in the database (see the module docstring); `record`: write the marker
    when the folder has none yet."""
    found = _marker(run_dir)
    if found is not None:
        return found["key"]
    from flows.files.store import remote_of

    # a run on a store (flows/files/store.py) is its URL on every machine, whatever the scratch
    key = remote_of(run_dir) or str(absolute(run_dir))
    if record:
        run_dir.mkdir(parents=True, exist_ok=True)
        url = db_url()
        write_text_atomic(run_dir / MARKER, json.dumps(
            {"key": key, "db": safe_url(url) if url else None}) + "\n")
    return key


def check_place(run_dir: Path) -> str | None:
    """The database URL when the run's journal is there, None when it is the folder's file;
    SpecError when the folder's journal is in the other place."""
    url = db_url()
    marker = _marker(run_dir)
    if url is None and marker is not None:
        raise SpecError([("STORYREEL_DB_URL", f"the journal of {run_dir} is in PostgreSQL "
                          f"({marker.get('db') or 'STORYREEL_DB_URL'}); set STORYREEL_DB_URL "
                          "to work on this run")])
    if url is not None and marker is None and (run_dir / SQLITE).is_file():
        raise SpecError([("STORYREEL_DB_URL", f"{run_dir} has its journal in the folder "
                          f"({SQLITE}); unset STORYREEL_DB_URL to work on this run")])
    return url


def open_journal(run_dir: Path) -> JournalBase:
    """The run's journal: in the database STORYREEL_DB_URL names (fenced by this process's
    lease of the run, when it holds one), else the folder's SQLite file."""
    url = check_place(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if url is None:
        return Journal(run_dir / SQLITE)
    from flows.money.journal_pg import PgJournal
    from flows.run.lease import token_for

    key = run_key(run_dir, record=True)
    return PgJournal(url, key, run_dir, fence=token_for(key))


def has_journal(run_dir: Path) -> bool:
    """Whether the run has a journal yet (without creating one)."""
    url = check_place(run_dir)
    if url is None:
        return (run_dir / SQLITE).is_file()
    from flows.money.journal_pg import journal_exists

    return journal_exists(url, run_key(run_dir))
