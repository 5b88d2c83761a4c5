"""Spend windows stay exact (flows/money/window.py) and a run folder has one owner even
inside one process (flows/run/lock.py):
- a reservation's identity is (run, shot, take, attempt): takes of a shot number their
  attempts alike, and a resume must adopt each take's own job;
- a store made before takes existed gets the column on open (SQLite and PostgreSQL);
- `storyreel reconcile` settles the window at the vendor's charge whenever it runs, even
  within the lease of a run killed moments ago;
- a retried task holds its job's money once, in the ledger and in the window;
- an operators' budgets file is the only authority on limits;
- a second owner of a run folder in the same process is refused like one from another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.cli.commands import main
from flows.money.ledger import Ledger
from flows.money.window import SpendWindow, WindowSpec, reconcile_run
from flows.money.window_sql import open_store
from flows.run import lock as runlock
from flows.storyboard.budgets import window_spec
from flows.storyboard.loading import parse_storyboard
from providers.errors import BudgetError, BusyError, SpecError
from tests.pg import fresh_pg_database, stop
from tests.storyboards import charged, write_board
from tests.test_spend_windows import (
    PARIS,
    Clock,
    D,
    _Att,
    cli,
    journal_rows,
    run_env,
    window_of,
)

NOON = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    return fresh_pg_database(request.getfixturevalue("pg_server"))


def reservations(url: str, run_id: str) -> list[tuple[Any, ...]]:
    """(shot, take, attempt, state, amount, actual) of a run's reservations, in micro-dollars."""
    store = open_store(url)
    try:
        return store.atomic(lambda tx: tx.execute(
            "SELECT shot_id, take, attempt, state, amount_micros, actual_micros FROM "
            "spend_reservations WHERE run_id = ? ORDER BY shot_id, take, attempt", (run_id,)))
    finally:
        store.close()


def flush(window: SpendWindow) -> None:
    """Wait for the ledger's queued settle/release calls to reach the store."""
    window.later(lambda: None).result(timeout=30)


# -- identity: (run, shot, take, attempt) ----------------------------------------------------

async def test_two_takes_with_the_same_attempt_numbers_keep_two_reservations(
        tmp_path: Path) -> None:
    """Take 2's job (attempt 1) went out first, then take 1's (attempt 1 too); take 1's job
    failed uncharged. The run dies; its resume must hold take 2's $2 job, not take 1's
    released reservation (which counted $0 for a $2 job at a vendor)."""
    url = f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    clock = Clock(NOON)
    spec = WindowSpec("team", daily_usd=D(10), timezone="UTC")
    store = open_store(url)
    first = SpendWindow(store, spec, "run-t", clock=clock, lease_s=600, pid=999_997)
    led = Ledger(None, window=first)
    take2 = await led.reserve("s", 2.0)
    await led.commit(take2, 1, take=2)
    clock.advance(1)
    take1 = await led.reserve("s", 2.0)
    await led.commit(take1, 1, take=1)
    led.release(take1)  # the vendor refused take 1's job: nothing charged
    flush(first)  # ... and the process dies here (no close: its leases stay)
    assert [(r[1], r[2], r[3]) for r in reservations(url, "run-t")] == [
        (1, 1, "released"), (2, 1, "open")]

    journal = [_Att("s", 1, "submitted", None, take=2), _Att("s", 1, "failed", 0.0, take=1)]
    again = SpendWindow(store, spec, "run-t", clock=clock, lease_s=600)
    resumed = Ledger(None, window=again)
    held = resumed.hold("s", 2.0, row=1, attempt=1, take=2)  # as run.ledger_for does
    again.recover(journal)
    w = window_of(url, "team", now=clock())
    assert (D(w["reserved_usd"]), D(w["spent_usd"])) == (D(2), D(0))  # the job at the vendor
    resumed.settle(held, 1.75)  # what the vendor charged for take 2
    flush(again)
    w = window_of(url, "team", now=clock())
    assert (D(w["reserved_usd"]), D(w["spent_usd"])) == (D(0), D("1.75"))
    assert [(r[1], r[2], r[3], r[5]) for r in reservations(url, "run-t")] == [
        (1, 1, "released", None), (2, 1, "settled", 1_750_000)]
    for w_ in (first, again):
        w_.close()
    store.close()


OLD_RESERVATIONS = """CREATE TABLE spend_reservations (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, day TEXT NOT NULL, month TEXT NOT NULL,
    amount_micros BIGINT NOT NULL, actual_micros BIGINT, state TEXT NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0, run_id TEXT NOT NULL, shot_id TEXT NOT NULL,
    attempt INTEGER, host TEXT NOT NULL, pid INTEGER NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL)"""
OLD_WINDOWS = """CREATE TABLE spend_windows (
    scope TEXT NOT NULL, period TEXT NOT NULL, start TEXT NOT NULL, timezone TEXT NOT NULL,
    limit_micros BIGINT, spent_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (scope, period, start))"""


def _old_store(url: str) -> None:
    """A store as the previous release wrote it: no `take` column, one open committed
    reservation of run-old (shot s, attempt 1) for $3 in its windows."""
    ts = NOON.timestamp()
    rows = [
        ("INSERT INTO spend_windows VALUES ('team', 'day', '2026-12-01', 'UTC', NULL, 0, "
         "3000000)", ()),
        ("INSERT INTO spend_windows VALUES ('team', 'month', '2026-12', 'UTC', NULL, 0, "
         "3000000)", ()),
        ("INSERT INTO spend_reservations VALUES ('old1', 'team', '2026-12-01', '2026-12', "
         "3000000, NULL, 'open', 1, 'run-old', 's', 1, 'h', 1, ?, ?, ?)", (ts + 600, ts, ts)),
    ]
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as db:
            for sql in (OLD_RESERVATIONS, OLD_WINDOWS):
                db.execute(sql)
            for sql, args in rows:
                db.execute(sql, args)
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for sql in (OLD_RESERVATIONS, OLD_WINDOWS):
            conn.execute(sql)
        for sql, args in rows:
            conn.execute(sql.replace("?", "%s"), args)


def test_an_old_store_gets_takes_on_open(store_url: str) -> None:
    """Opening a store made before takes adds `take` (1 for every existing reservation); the
    resumed run then adopts its old reservation by (shot, take 1, attempt 1) and a second
    take with the same attempt number gets its own."""
    _old_store(store_url)
    store = open_store(store_url)
    open_store(store_url).close()  # opening again (the column exists now) changes nothing
    clock = Clock(NOON)
    again = SpendWindow(store, WindowSpec("team", timezone="UTC"), "run-old", clock=clock)
    assert again.hold("s", 1, 1, D(3)) == "old1"
    other = again.hold("s", 2, 1, D("1.5"))
    assert other != "old1"
    assert again.hold("s", 2, 1, D("1.5")) == other  # the same job held again: adopted
    assert [r[:4] for r in reservations(store_url, "run-old")] == [
        ("s", 1, 1, "open"), ("s", 2, 1, "open")]
    assert D(window_of(store_url, "team", now=clock())["reserved_usd"]) == D("4.5")
    again.close(end_run=False)
    store.close()


# -- reconcile settles the window whenever it runs ------------------------------------------

def test_reconcile_moves_only_reservations_with_a_final_answer(tmp_path: Path) -> None:
    """Reconcile within the lease: open reservations of a killed run whose journal rows now
    have the vendor's answer are settled (or released); one whose job is still unknown keeps
    its state."""
    url = f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    clock = Clock(NOON)
    store = open_store(url)
    run = SpendWindow(store, WindowSpec("team", daily_usd=D(10)), "run-k", clock=clock,
                      lease_s=600, pid=999_996)
    for take, shot in ((1, "paid"), (2, "paid"), (1, "refused"), (1, "working")):
        run.commit(run.reserve(shot, D(1)), take=take, attempt=1)
    # killed: no close, the lease still runs; reconcile asked the vendors
    journal = [_Att("paid", 1, "succeeded", 0.4), _Att("paid", 1, "done", 0.7, take=2),
               _Att("refused", 1, "failed", 0.0), _Att("working", 1, "submitted", None)]
    assert reconcile_run(store, "run-k", journal, clock()) == 3
    assert reconcile_run(store, "run-k", journal, clock()) == 0  # again: nothing to move
    w = window_of(url, "team", now=clock())
    assert (D(w["spent_usd"]), D(w["reserved_usd"])) == (D("1.1"), D(1))
    assert [r[:4] for r in reservations(url, "run-k")] == [
        ("paid", 1, 1, "settled"), ("paid", 2, 1, "settled"), ("refused", 1, 1, "released"),
        ("working", 1, 1, "open")]
    run.close(end_run=False)
    store.close()


@pytest.mark.e2e
def test_reconcile_within_the_lease_settles_the_window_at_the_vendors_charge(
        emu_env: Any, prefect_api: str, tmp_path: Path) -> None:
    """A run killed with two jobs at the vendor, its window lease (600 s) still running: once
    the vendor finished them, `storyreel reconcile` leaves the window at what it charged."""
    emu = emu_env
    emu.configure(latency=4.0)
    url = f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    env = run_env(emu, prefect_api, tmp_path, url, STORYREEL_WINDOW_LEASE_S="600")
    spec = write_board(tmp_path, [{"id": f"s{i}", "prompt": f"pier {i}"} for i in range(2)],
                       defaults={"provider": "fal", "model": "kling-2.5-turbo-pro",
                                 "duration": 5, "retries": 0},
                       budget={"window": {"scope": "k", "daily_usd": 20}})
    out = tmp_path / "out"
    proc = cli(["run", str(spec), "--out", str(out)], env, tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 240
        while sum(1 for r in journal_rows(out) if r["job_id"]) < 2:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the jobs were never submitted"
            time.sleep(0.05)
    finally:
        stop(proc, sig=9)
    w = window_of(url, "k")
    assert D(w["reserved_usd"]) > 0 and w["runs"][0]["lease_s"] > 60, w  # within the lease
    deadline = time.monotonic() + 30
    while emu.stats("fal")["in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert charged(emu, "fal") > 0
    rec = cli(["reconcile", str(out)], env, tmp_path / "reconcile.log")
    try:
        rec.wait(timeout=120)
    finally:
        stop(rec)
    assert rec.returncode == 0, (tmp_path / "reconcile.log").read_text()[-3000:]
    w = window_of(url, "k")
    assert (D(w["spent_usd"]), D(w["reserved_usd"]), w["runs"]) == (charged(emu, "fal"), 0, [])


# -- a retried task holds once ----------------------------------------------------------------

async def test_a_retried_task_holds_its_job_once(emu_env: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The settle-other path (a job this session does not continue) runs twice for one
    journal row, as a Prefect task retry does after the first try died while polling: the
    job's money is held once, in the ledger and in the window, and settled at the vendor's
    charge."""
    from flows.run.early import submit_early
    from flows.run.session import RunOptions, close_window, new_context, open_journal
    from flows.run.shot import _settle_other
    from flows.storyboard.keys import env_key
    from flows.storyboard.plan import make_plan
    from providers.http import new_client

    url = f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    monkeypatch.setenv("STORYREEL_LEDGER_URL", url)
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=1.5)
    spec = write_board(tmp_path, [{"id": "a", "prompt": "gulls", "provider": "fal",
                                   "model": "kling-2.5-turbo-pro", "duration": 5}],
                       budget={"window": {"scope": "t", "daily_usd": 20}})
    plan = make_plan(spec)
    out = tmp_path / "out"
    assert await submit_early(plan, out, RunOptions()) == {"a": []}  # the job is at fal
    journal = open_journal(out)
    try:
        [row] = journal.attempts()
        async with new_client() as client:
            ctx = new_context(plan, RunOptions(), out, journal, client,
                              {p: env_key(p) for p in plan.providers_used()})
            held = ctx.ledger.reserved_usd
            assert held > 0
            with pytest.raises(TimeoutError):  # the first try dies while it polls
                await asyncio.wait_for(_settle_other(ctx, row), 0.3)
            assert ctx.ledger.reserved_usd == held
            await _settle_other(ctx, journal.get(row.id))  # the retry
            paid = charged(emu_env, "fal")
            assert paid > 0
            assert (D(ctx.ledger.reserved_usd), D(ctx.ledger.spent_usd)) == (D(0), paid)
            await asyncio.to_thread(flush, ctx.ledger.window)
            w = window_of(url, "t")
            assert (D(w["reserved_usd"]), D(w["spent_usd"])) == (D(0), paid)
            await asyncio.to_thread(close_window, ctx.ledger)
    finally:
        journal.close()
    assert D(window_of(url, "t")["spent_usd"]) == paid


# -- the operators' budgets file is the only authority on limits --------------------------------

def _board(scope: str, daily: float) -> Any:
    return parse_storyboard(f"title: t\nbudget:\n  window: {{scope: {scope}, daily_usd: {daily}, "
                            f"timezone: {PARIS}}}\nshots: [{{id: a, prompt: x}}]\n")


def test_budgets_file_limits_win_and_unknown_scopes_go_to_the_default(tmp_path: Path) -> None:
    ops = tmp_path / "budgets.yaml"
    ops.write_text("version: 1\ndefault_scope: shared\nscopes:\n"
                   "  marketing: {daily_usd: 25, timezone: America/New_York}\n"
                   "  shared: {daily_usd: 3, monthly_usd: 30}\n")
    env = {"STORYREEL_BUDGETS": str(ops)}
    # a listed scope: the file's limits, whatever the storyboard says
    assert window_spec(_board("marketing", 400), env) == WindowSpec(
        "marketing", D(25), None, "America/New_York", str(ops))
    # an unlisted scope cannot make its own window: it spends from the default scope
    assert window_spec(_board("adhoc", 400), env) == WindowSpec(
        "shared", D(3), D(30), "UTC", str(ops))
    # without a file, the storyboard's window as written (limits included)
    assert window_spec(_board("adhoc", 400), {}) == WindowSpec(
        "adhoc", D(400), None, PARIS, "storyboard")
    # and those limits hold in the window: the storyboard's $400 does not raise the file's $3
    store = open_store(f"sqlite:///{tmp_path / 'b.sqlite'}")
    run = SpendWindow(store, window_spec(_board("adhoc", 400), env), "r", clock=Clock(NOON))
    with pytest.raises(BudgetError, match=r"spend window shared day 2026-12-01 \(UTC\) limit "
                                          r"\$3\.00"):
        run.reserve("a", D(4))
    run.close()
    store.close()


def test_an_unlisted_scope_without_a_default_is_refused_by_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ops = tmp_path / "budgets.yaml"
    ops.write_text("scopes:\n  marketing: {daily_usd: 25}\n  research: {monthly_usd: 50}\n")
    with pytest.raises(SpecError) as err:
        window_spec(_board("adhoc", 400), {"STORYREEL_BUDGETS": str(ops)})
    msg = str(err.value)
    assert msg.startswith("budget.window.scope: scope 'adhoc' is not in the operators' "
                          f"budgets file {ops}"), msg
    assert "marketing, research" in msg
    # the CLI says so and exits 2, before anything is priced against a window
    monkeypatch.setenv("STORYREEL_BUDGETS", str(ops))
    monkeypatch.setenv("STORYREEL_LEDGER_URL", f"sqlite:///{tmp_path / 'b.sqlite'}")
    spec = write_board(tmp_path, [{"id": "a", "prompt": "x", "provider": "local"}],
                       budget={"window": {"scope": "adhoc", "daily_usd": 400}})
    assert main(["plan", str(spec)]) == 2
    err_out = capsys.readouterr().err
    assert "budget.window.scope" in err_out and "Traceback" not in err_out


# -- one owner per run folder, inside one process too -----------------------------------------

def test_a_second_owner_in_the_same_process_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    taken, done = threading.Event(), threading.Event()

    def first_owner() -> None:  # a thread starts with a context of its own: another owner
        with runlock.own(out):
            with runlock.own(out):  # the owner itself re-enters (CLI, then its flow)
                taken.set()
                done.wait(30)

    t = threading.Thread(target=first_owner)
    t.start()
    try:
        assert taken.wait(30)
        with pytest.raises(BusyError) as err, runlock.own(out):
            pass
        assert f"pid {os.getpid()} on " in str(err.value)
        assert "--wait" in str(err.value)
    finally:
        done.set()
        t.join(30)
    with runlock.own(out):  # free again once the first owner left
        pass


async def test_a_second_owner_task_is_refused_and_one_that_waits_gets_it(tmp_path: Path,
                                                                         capsys: Any) -> None:
    out = tmp_path / "out"
    order: list[str] = []
    release = asyncio.Event()
    inside = asyncio.Event()

    async def owner() -> None:
        with runlock.own(out):
            order.append("first in")
            # work the owner starts (its tasks copy its context) is the same owner
            await asyncio.create_task(_reenter(out))
            inside.set()
            await release.wait()
            order.append("first out")

    async def second(wait: bool) -> None:
        with runlock.own(out, wait=wait, poll_s=0.02):
            order.append("second in")

    first = asyncio.create_task(owner())
    await inside.wait()
    with pytest.raises(BusyError):
        await asyncio.create_task(second(False))
    waiting = asyncio.create_task(asyncio.to_thread(asyncio.run, second(True)))
    await asyncio.sleep(0.2)
    assert order == ["first in"]  # still waiting
    release.set()
    await asyncio.wait_for(asyncio.gather(first, waiting), 30)
    assert order == ["first in", "first out", "second in"]


async def _reenter(out: Path) -> None:
    with runlock.own(out):
        pass


def test_cli_refuses_a_second_owner_in_its_process(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_board(tmp_path, [{"id": "a", "prompt": "x", "provider": "local"}])
    out = tmp_path / "out"
    taken, done = threading.Event(), threading.Event()

    def holder() -> None:
        with runlock.own(out):
            taken.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert taken.wait(30)
        assert main(["run", str(spec), "--out", str(out)]) == 2
    finally:
        done.set()
        t.join(30)
    err = capsys.readouterr().err
    assert f"is in use by pid {os.getpid()}" in err and "Traceback" not in err
