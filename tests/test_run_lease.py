"""The run's ownership and journal in PostgreSQL (STORYREEL_DB_URL): a second owner is refused
while the first one's lease lives, a dead owner's lease lapses and the next takes over, an
owner that lost its lease cannot submit, and a run leaves the same journal rows as it would
in its folder's SQLite file. Leases are shortened with STORYREEL_LEASE_S (no long sleeps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.money.journal import Journal
from flows.money.journal_pg import PgJournal
from flows.run import lease
from flows.run import lock as runlock
from flows.run.journals import MARKER, run_key
from providers.errors import BusyError, SpecError
from tests.money_kit import charged, cli, cli_env, cost_rows, shot, total, wait_idle
from tests.pg import fresh_pg_database
from tests.storyboards import write_board

ROOT = Path(__file__).resolve().parent.parent
# long enough that a holder's heartbeat (every third of it) is never late on a loaded 2-core
# machine (1.5 s lapsed there once), short enough to keep the waits small
LEASE_S = 4.0

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from flows.run import lock
    with lock.own(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture(scope="module")
def run_db(request: pytest.FixtureRequest) -> str:
    return fresh_pg_database(request.getfixturevalue("pg_server"), "runs")


@pytest.fixture
def db_env(run_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STORYREEL_DB_URL", run_db)
    monkeypatch.setenv("STORYREEL_LEASE_S", str(LEASE_S))
    return run_db


def _holder(run_dir: Path) -> subprocess.Popen[str]:
    """Another process owning the run, until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "held", line + proc.stdout.read()
    return proc


def _owner_row(url: str, key: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT owner, lease_until > now() FROM storyreel_runs "
                            "WHERE run_key = %s", (key,)).fetchone()


def test_second_owner_refused_by_name_until_the_lease_lapses(db_env: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    other = _holder(run_dir)
    try:
        with pytest.raises(BusyError) as refused:
            with runlock.own(run_dir):
                pass
        assert f"pid {other.pid} on " in str(refused.value), refused.value
        assert not (run_dir / ".lock").exists()  # the database holds it, not a file lock
        time.sleep(LEASE_S * 1.4)  # past one lease: the live owner's heartbeat renewed it
        with pytest.raises(BusyError, match=f"pid {other.pid} "):
            with runlock.own(run_dir):
                pass
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # dies holding it: no release, no heartbeat
        other.wait()
    t0 = time.monotonic()
    with runlock.own(run_dir, wait=True, poll_s=0.1):
        waited = time.monotonic() - t0
        owner, live = _owner_row(db_env, run_key(run_dir))
        assert owner.startswith(f"pid {os.getpid()} on ") and live
    assert waited < LEASE_S * 2.5, waited  # took over once the dead owner's lease lapsed
    assert not _owner_row(db_env, run_key(run_dir))[1]  # released: the next owner need not wait


def test_an_owner_that_lost_its_lease_cannot_submit(db_env: str, tmp_path: Path) -> None:
    key = run_key(tmp_path, record=True)
    first = lease.take(db_env, key)
    assert isinstance(first, lease.Held)
    first._stop.set()  # a stalled owner: alive, but its heartbeat stops
    first._beat.join()  # type: ignore[union-attr]
    assert isinstance(lease.take(db_env, key), str)  # refused while the lease lives
    time.sleep(LEASE_S + 0.2)
    second = lease.take(db_env, key)
    assert isinstance(second, lease.Held) and second.took_over is not None
    try:
        assert not first.renew()  # the stalled owner learns it lost the run
        stale = PgJournal(db_env, key, tmp_path, fence=first.token)
        with pytest.raises(BusyError, match="taken over"):
            stale.intent(shot_id="s1", attempt=1, provider="fal", model="m", cache_key="k",
                         estimated_usd=0.5, reserved_usd=0.5)
        assert stale.attempts() == []  # nothing that could be submitted was written
        stale.close()
        with PgJournal(db_env, key, tmp_path, fence=second.token) as owner:
            row = owner.intent(shot_id="s1", attempt=1, provider="fal", model="m",
                               cache_key="k", estimated_usd=0.5, reserved_usd=0.5)
            assert [a.id for a in owner.attempts()] == [row] == [1]
    finally:
        second.release()
        first.store.close()


def _rows(journal: Any, out: Path) -> list[dict[str, Any]]:
    """What must match across backends: everything but times and the vendors' job ids."""
    skip = {"run_id", "job_id", "job_data", "started_at", "finished_at", "updated_at",
            "queued_s", "generation_s", "download_s"}
    rows = []
    for a in journal.attempts():
        row = {k: v for k, v in vars(a).items() if k not in skip}
        for p in ("clip_path", "conformed_path"):
            row[p] = row[p] and str(Path(row[p]).relative_to(out))
        rows.append(row)
    return rows


async def test_same_journal_rows_in_both_backends(shot_run, emu_env, run_db: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_board(tmp_path, [shot("s0", "fal"), shot("s1", "fal")],
                       budget={"max_usd": 5}, defaults={"retries": 0})
    monkeypatch.delenv("STORYREEL_DB_URL", raising=False)
    result, _ = await shot_run(spec, tmp_path / "local", no_cache=True)
    assert result["ok"]
    with Journal(tmp_path / "local" / "journal.sqlite") as j:
        local = _rows(j, tmp_path / "local")
    monkeypatch.setenv("STORYREEL_DB_URL", run_db)
    out = tmp_path / "db"
    result, rows = await shot_run(spec, out, no_cache=True)
    assert result["ok"] and total(rows) == charged(emu_env) / 2
    assert not (out / "journal.sqlite").exists() and (out / MARKER).is_file()
    with PgJournal(run_db, run_key(out), out) as j:
        assert _rows(j, out) == local and len(local) == 2
    # the two places are never mixed up (a resume reading the wrong one would pay again)
    with pytest.raises(SpecError, match="in the folder"):
        await shot_run(spec, tmp_path / "local", no_cache=True)
    monkeypatch.delenv("STORYREEL_DB_URL")
    with pytest.raises(SpecError, match="in PostgreSQL"):
        await shot_run(spec, out, no_cache=True)
    assert emu_env.stats("fal")["jobs"] == 4


def test_cli_refuses_a_live_owner_then_waits_and_takes_over(emu_env, prefect_api: str,
                                                            db_env: str, tmp_path: Path) -> None:
    emu = emu_env
    emu.configure(latency=0.3)
    spec = write_board(tmp_path, [shot(f"s{i}", "fal") for i in range(2)],
                       budget={"max_usd": 5}, defaults={"retries": 0})
    out = tmp_path / "out"
    env = cli_env(emu, prefect_api, tmp_path)
    other = _holder(out)
    try:
        proc = cli(env, "run", str(spec), "--out", str(out))
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2, log[-3000:]
        assert f"in use by pid {other.pid} on " in log and "Traceback" not in log, log[-3000:]
        assert emu.stats("fal")["submits"] == 0
        waiting = cli(env, "run", str(spec), "--out", str(out), "--wait")
        time.sleep(1.0)
        assert waiting.poll() is None  # waits while the owner lives
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
    log, _ = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, log[-3000:]
    wait_idle(emu)
    assert emu.stats("fal")["jobs"] == 2
    assert total(cost_rows(out)) == charged(emu)
    assert not (out / "journal.sqlite").exists()
