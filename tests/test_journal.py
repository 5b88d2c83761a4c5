from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.money.journal import Journal, JournalBase
from tests.pg import fresh_pg_database

# Every test taking `opener` runs on both backends: the SQLite file in the run folder and the
# rows in PostgreSQL (STORYREEL_DB_URL, flows/money/journal_pg.py), which must behave alike.
Opener = Callable[..., JournalBase]


@pytest.fixture(scope="module")
def journal_db(request: pytest.FixtureRequest) -> str:
    return fresh_pg_database(request.getfixturevalue("pg_server"), "journal")


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest) -> Opener:
    """opener(folder, run_id=None): the journal of the run in `folder` on this backend."""
    if request.param == "sqlite":
        return lambda folder, run_id=None: Journal(folder / "journal.sqlite", run_id=run_id)
    from flows.money.journal_pg import PgJournal

    url = request.getfixturevalue("journal_db")
    return lambda folder, run_id=None: PgJournal(url, f"key:{folder}", folder, run_id=run_id)


def _stored_paths(j: JournalBase) -> tuple[str | None, str | None]:
    """The paths as the backend stores them (not as read back)."""
    if isinstance(j, Journal):
        db = sqlite3.connect(j.path)
        try:
            return db.execute("SELECT clip_path, conformed_path FROM attempts").fetchone()
        finally:
            db.close()
    import psycopg

    with psycopg.connect(j._store._dsn) as conn:
        return conn.execute("SELECT clip_path, conformed_path FROM storyreel_journal "
                            "WHERE run_key = %s", (j.run_key,)).fetchone()


def _intent(j: JournalBase, shot: str = "s1", attempt: int = 1) -> int:
    return j.intent(
        shot_id=shot,
        attempt=attempt,
        provider="fal",
        model="kling-2.1-standard",
        cache_key="ab" * 32,
        estimated_usd=0.1 + 0.2,
        reserved_usd=0.3,
    )


def test_attempt_lifecycle_round_trips(opener: Opener, tmp_path: Path) -> None:
    with opener(tmp_path / "state", run_id="run-1") as j:
        row = _intent(j)
        a = j.get(row)
        assert a.status == "intent" and a.job_id is None and a.finished_at is None
        assert a.estimated_usd == 0.3  # rounded to a micro-dollar, no float noise
        assert a.run_id == "run-1" and a.started_at.endswith("+00:00")
        j.submitted(row, "req-123", {"status_url": "http://x/status", "n": [1, 2]})
        j.status(row, "running", queued_s=1.23456)
        j.status(row, "succeeded", generation_s=12.5)
        j.status(row, "downloaded", clip_path=tmp_path / "raw.mp4", download_s=0.4)
        j.status(row, "done", actual_usd=0.28, cost_source="vendor",
                 conformed_path=tmp_path / "state" / "clips" / "c.mov")
        a = j.get(row)
        stored_paths = _stored_paths(j)
    assert a.id == row
    assert a.status == "done" and a.job_id == "req-123"
    assert a.job_data == {"status_url": "http://x/status", "n": [1, 2]}
    assert a.queued_s == 1.235 and a.generation_s == 12.5 and a.download_s == 0.4
    # read back absolute; a file of the journal's folder is stored relative to it
    assert a.clip_path == str(tmp_path / "raw.mp4")
    assert a.conformed_path == str(tmp_path / "state" / "clips" / "c.mov")
    assert stored_paths == (str(tmp_path / "raw.mp4"), "clips/c.mov")
    assert a.actual_usd == 0.28 and a.cost_source == "vendor"
    assert a.finished_at is not None and a.terminal
    assert a.updated_at >= a.started_at


def test_reopen_keeps_run_id_and_rows(opener: Opener, tmp_path: Path) -> None:
    j = opener(tmp_path)
    run_id = j.run_id
    assert run_id and len(run_id) > 10
    row = _intent(j)
    j.meta_set("plan_hash", "abc")
    j.meta_set("plan_hash", "def")  # overwrite
    j.meta_set("shots", {"s1": 5.0})
    j.close()
    j = opener(tmp_path, run_id="another-id")  # an existing journal keeps its own id
    assert j.run_id == run_id
    assert [a.id for a in j.attempts()] == [row]
    assert j.meta_get("plan_hash") == "def" and j.meta_get("shots") == {"s1": 5.0}
    assert j.meta_get("nope", 7) == 7
    j.close()


def test_durability_settings(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_record_and_queries(opener: Opener, tmp_path: Path) -> None:
    with opener(tmp_path) as j:
        first = _intent(j, "s1", 1)
        j.status(first, "failed", failure_reason="transient", actual_usd=0)
        second = _intent(j, "s1", 2)
        j.submitted(second, "job-2", {})
        cached = j.record(
            shot_id="s2", attempt=1, provider="luma", model="ray-2", status="cached",
            cache_key="cd" * 32, estimated_usd=0.5, actual_usd=0, cost_source="none",
            clip_path="cache/x.mp4",
        )
        skipped = j.record(
            shot_id="s3", attempt=1, provider="runway", model="gen4", status="skipped",
            failure_reason="budget: $0.10 left, asked $0.50",
        )
        assert [a.id for a in j.attempts("s1")] == [first, second]
        assert [a.id for a in j.attempts()] == [first, second, cached, skipped]
        assert j.attempts("zzz") == []
        assert j.next_attempt("s1") == 3 and j.next_attempt("new") == 1
        c = j.get(cached)
        assert c.finished_at == c.started_at and c.estimated_usd == 0.5 and c.cache_key == "cd" * 32
        assert j.get(skipped).failure_reason.startswith("budget")


def test_bad_input_is_refused(opener: Opener, tmp_path: Path) -> None:
    with opener(tmp_path) as j:
        row = _intent(j)
        with pytest.raises(ValueError, match="unknown attempt status"):
            j.status(row, "exploded")
        with pytest.raises(ValueError, match="unknown journal field"):
            j.status(row, "failed", job_id="sneaky")  # job ids come only via submitted()
        with pytest.raises(ValueError, match="unknown journal field"):
            j.record(shot_id="s", attempt=1, provider="p", model="m", status="skipped", x=1)
        with pytest.raises(KeyError):
            j.status(999, "failed")
        assert j.get(row).status == "intent"


def test_threads_share_one_journal(opener: Opener, tmp_path: Path) -> None:
    with opener(tmp_path) as j:
        rows: list[int] = []

        def work(t: int) -> None:
            for i in range(20):
                r = _intent(j, f"t{t}", i + 1)
                j.submitted(r, f"job-{t}-{i}", {"t": t})
                rows.append(r)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(rows)) == 80
        assert all(a.status == "submitted" and a.job_id for a in j.attempts())


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from flows.money.journal import Journal
    if len(sys.argv) > 2:  # the PostgreSQL journal of the run in that folder
        from flows.money.journal_pg import PgJournal
        j = PgJournal(sys.argv[2], "killed-key", Path(sys.argv[1]).parent, run_id="killed-run")
    else:
        j = Journal(Path(sys.argv[1]), run_id="killed-run")
    i = 0
    while True:
        i += 1
        row = j.intent(shot_id=f"s{i}", attempt=1, provider="fal", model="m",
                       cache_key="k", estimated_usd=0.25, reserved_usd=0.25)
        print(f"intent {row}", flush=True)
        if i % 2 == 0:
            j.submitted(row, f"job-{row}", {"i": i})
            print(f"submitted {row}", flush=True)
    """
)


def _write_until_killed(path: Path, at_least: int, *db: str) -> tuple[set[int], set[int]]:
    """Run the child, read its acknowledgements, SIGKILL it; return acknowledged row ids."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), *db],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    intents: set[int] = set()
    submitted: set[int] = set()
    deadline = time.monotonic() + 15
    try:
        assert proc.stdout is not None
        while len(intents) < at_least and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            kind, row = line.split()
            (intents if kind == "intent" else submitted).add(int(row))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # while it is writing, most likely
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(intents) >= at_least, "child did not write fast enough"
    return intents, submitted


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_committed_rows_survive_sigkill(backend: str, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    path = tmp_path / "run" / "journal.sqlite"
    pg = (request.getfixturevalue("journal_db"),) if backend == "postgresql" else ()
    intents: set[int] = set()
    submitted: set[int] = set()
    for at_least in (random.randint(5, 80) for _ in range(3)):  # killed, resumed, killed...
        more_intents, more_submitted = _write_until_killed(path, at_least, *pg)
        intents |= more_intents
        submitted |= more_submitted

        # The WAL is left un-checkpointed; a fresh open must see every acknowledged row.
        if pg:
            from flows.money.journal_pg import PgJournal

            reopened: JournalBase = PgJournal(pg[0], "killed-key", path.parent)
        else:
            reopened = Journal(path)
        with reopened as j:
            assert j.run_id == "killed-run"
            seen = {a.id: a for a in j.attempts()}
        assert intents <= set(seen)
        for row in submitted:
            assert seen[row].status == "submitted" and seen[row].job_id == f"job-{row}"
            assert seen[row].job_data == {"i": int(seen[row].shot_id[1:])}
        for a in seen.values():  # nothing torn: each row is an intent or fully submitted
            assert (a.status, a.job_id is None) in {("intent", True), ("submitted", False)}
    if backend == "postgresql":
        return
    db = sqlite3.connect(path)  # and a plain sqlite reader agrees the file is sound
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert json.loads(db.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()[0])
    db.close()
