"""Spend windows shared by every run (flows/money/window.py), with real parts: SQLite files
shared by processes, a throw-away PostgreSQL cluster (tests/pg.py), the real CLI in four
concurrent processes against the vendor emulator, SIGKILL mid-flight.

What a window promises, and what is checked here:
- never over its limit: the emulator never charges more than the daily limit across all runs;
- every cent counted: at the end the window's spent equals what the emulator charged;
- a dead run's reservations come back (lease expiry, or its folder resumed), but money a vendor
  may have charged stays counted;
- a new calendar day (in the window's time zone) opens a new window.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flows.cli.commands import main
from flows.money.ledger import Ledger
from flows.money.window import SpendWindow, WindowSpec, status
from flows.money.window_sql import open_store
from flows.storyboard.budgets import window_spec
from flows.storyboard.loading import parse_storyboard
from providers.errors import BudgetError, SpecError
from tests.pg import fresh_pg_database, stop
from tests.storyboards import charged, cost_rows, total, write_board

ROOT = Path(__file__).resolve().parent.parent
PARIS = "Europe/Paris"


# -- stores ----------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    return fresh_pg_database(request.getfixturevalue("pg_server"))


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)


def window_of(url: str, scope: str, period: str = "day", now: dt.datetime | None = None
              ) -> dict[str, Any]:
    store = open_store(url)
    try:
        rows = status(store, now=now)
    finally:
        store.close()
    [row] = [w for w in rows if w["scope"] == scope and w["period"] == period]
    return row


def D(x: Any) -> Decimal:
    return Decimal(str(x))


# -- the window itself, in process (injected clock) ------------------------------------------

async def test_reserve_settle_release_and_refusal_names_the_window(ledger_url: str) -> None:
    clock = Clock(dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC))
    spec = WindowSpec("team", daily_usd=D("1.00"), monthly_usd=D("10"), timezone=PARIS)
    store = open_store(ledger_url)
    a = SpendWindow(store, spec, "run-a", clock=clock, lease_s=30)
    led = Ledger(cap_usd=None, window=a)
    r1 = await led.reserve("s1", 0.6)
    await led.commit(r1, 1)
    with pytest.raises(BudgetError, match=r"spend window team day 2026-12-01 \(Europe/Paris\) "
                                          r"limit \$1\.00 reached: \$0\.40 left"):
        await led.reserve("s2", 0.41)
    assert led.reserved_usd == pytest.approx(0.6)  # the refused one holds nothing, locally too
    led.settle(r1, 0.55)  # charged less than estimated
    r2 = await led.reserve("s2", 0.45)
    led.release(r2)
    a.close()
    w = window_of(ledger_url, "team", now=clock())
    assert (D(w["spent_usd"]), D(w["reserved_usd"]), D(w["remaining_usd"])) == (
        D("0.55"), D("0"), D("0.45"))
    [day, month] = a.usage()
    assert day["run_spent_usd"] == 0.55 and month["run_spent_usd"] == 0.55
    store.close()


def test_a_new_day_opens_a_new_window_in_its_time_zone(ledger_url: str) -> None:
    store = open_store(ledger_url)
    # 23:30 UTC on Nov 30 is already 00:30 on Dec 1 in Paris (UTC+1)
    clock = Clock(dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC))
    paris = SpendWindow(store, WindowSpec("paris", D(1), D(2), PARIS), "r1", clock=clock)
    utc = SpendWindow(store, WindowSpec("utc", D(1), D(3), "UTC"), "r2", clock=clock)
    for w in (paris, utc):
        w.settle(w.reserve("s", D("0.9")), D("0.9"))
    with pytest.raises(BudgetError, match=r"paris day 2026-12-01"):
        paris.reserve("s", D("0.2"))
    with pytest.raises(BudgetError, match=r"utc day 2026-11-30"):
        utc.reserve("s", D("0.2"))
    clock.advance(3600)  # 00:30 UTC: a new day (and month) in UTC, the same day in Paris
    with pytest.raises(BudgetError, match="paris day 2026-12-01"):
        paris.reserve("s", D("0.2"))
    utc.release(utc.reserve("s", D("0.2")))
    clock.advance(23 * 3600)  # Dec 1, 23:30 UTC = Dec 2, 00:30 in Paris: Paris's new day
    paris.settle(paris.reserve("s", D("0.9")), D("0.9"))
    clock.advance(24 * 3600)  # Dec 3 in Paris: the day has room, December does not
    with pytest.raises(BudgetError, match=r"paris month 2026-12 \(Europe/Paris\) limit \$2\.00"):
        paris.reserve("s", D("0.3"))
    rows = {(w["scope"], w["period"], w["start"]): w for w in status(store, everything=True)}
    assert rows[("paris", "day", "2026-12-01")]["spent_usd"] == 0.9
    assert rows[("paris", "day", "2026-12-02")]["spent_usd"] == 0.9
    assert rows[("paris", "month", "2026-12")]["spent_usd"] == 1.8
    assert rows[("utc", "day", "2026-11-30")]["spent_usd"] == 0.9
    assert rows[("utc", "month", "2026-11")]["spent_usd"] == 0.9
    assert (rows[("utc", "day", "2026-12-01")]["spent_usd"],
            rows[("utc", "month", "2026-12")]["spent_usd"]) == (0.0, 0.0)
    # `storyreel budget` shows the current windows only, unless --all
    current = {(w["scope"], w["period"], w["start"])
               for w in status(store, [paris.spec], now=clock())}
    assert ("paris", "day", "2026-12-03") in current
    assert ("paris", "day", "2026-12-01") not in current
    for w in (paris, utc):
        w.close()
    store.close()


def test_lapsed_lease_releases_what_was_never_sent_and_counts_what_may_be_charged(
        ledger_url: str) -> None:
    clock = Clock(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC))
    spec = WindowSpec("team", daily_usd=D(2), timezone="UTC")
    store = open_store(ledger_url)
    dead = SpendWindow(store, spec, "dead-run", clock=clock, lease_s=30, pid=999_999)
    waiting = dead.reserve("queued", D("0.5"))  # reserved, never submitted
    sent = dead.reserve("sent", D("0.7"))
    dead.commit(sent, take=1, attempt=1)  # its submit left: the vendor may charge it
    held = window_of(ledger_url, "team", now=clock())
    assert held["reserved_usd"] == 1.2 and held["runs"][0]["run_id"] == "dead-run"
    clock.advance(20)
    other = SpendWindow(store, spec, "other-run", clock=clock, lease_s=30)
    with pytest.raises(BudgetError):  # the leases still hold: 2 - 1.2 < 0.9
        other.reserve("x", D("0.9"))
    clock.advance(15)  # past the dead run's lease: the next reserve sweeps it
    other.release(other.reserve("x", D("0.9")))
    w = window_of(ledger_url, "team", now=clock())
    assert (w["spent_usd"], w["reserved_usd"], w["runs"]) == (0.7, 0.0, [])
    with pytest.raises(BudgetError, match="lapsed"):
        dead.commit(waiting, take=1, attempt=1)  # a lapsed reservation can no longer be submitted
    # the dead run's folder is resumed: its job is still at the vendor, so it is adopted
    # (abandoned -> open) and settled at what the vendor charged
    again = SpendWindow(store, spec, "dead-run", clock=clock, lease_s=30)
    rid = again.hold("sent", 1, 1, D("0.7"))
    assert rid == sent
    assert window_of(ledger_url, "team", now=clock())["reserved_usd"] == 0.7
    again.settle(rid, D("0.65"))
    again.settle(rid, D("0.65"))  # a repeated settle counts once
    assert window_of(ledger_url, "team", now=clock())["spent_usd"] == 0.65
    for w in (dead, other, again):
        w.close()
    store.close()


def test_resume_recovers_by_the_journal(ledger_url: str) -> None:
    """The resumed run's ledger adopts jobs at vendors (hold), releases what never left,
    settles what the journal knows was charged, and counts unconfirmed submits."""
    clock = Clock(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC))
    spec = WindowSpec("team", daily_usd=D(10), timezone="UTC")
    store = open_store(ledger_url)
    first = SpendWindow(store, spec, "run-1", clock=clock, lease_s=600, pid=999_998)
    ids = {}
    for shot, amount in (("queued", "1"), ("gone", "1"), ("unconf", "1"), ("atvendor", "1"),
                         ("charged", "1")):
        ids[shot] = first.reserve(shot, D(amount))
        if shot != "queued":
            first.commit(ids[shot], take=1, attempt=1)
    # what the journal says when the process died (gone: killed between commit and intent)
    attempts = [_Att("unconf", 1, "unconfirmed", None), _Att("atvendor", 1, "submitted", None),
                _Att("charged", 1, "succeeded", 0.8)]
    second = SpendWindow(store, spec, "run-1", clock=clock, lease_s=600)
    second.hold("atvendor", 1, 1, D(1))
    second.recover(attempts)
    w = window_of(ledger_url, "team", now=clock())
    # open: the adopted job; spent: unconfirmed at its estimate + the settled 0.8
    assert (D(w["reserved_usd"]), D(w["spent_usd"])) == (D(1), D("1.8"))
    second.close()  # the run ends with the adopted job still open: lost -> counted
    w = window_of(ledger_url, "team", now=clock())
    assert (D(w["reserved_usd"]), D(w["spent_usd"])) == (D(0), D("2.8"))
    store.close()


def test_reconcile_settles_what_a_window_counted_at_its_estimate(ledger_url: str) -> None:
    """`storyreel reconcile DIR` learns from the vendors what at-risk jobs cost: the windows
    that counted them at their estimate settle them at that (reconcile_run)."""
    from flows.money.window import reconcile_run

    clock = Clock(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC))
    spec = WindowSpec("team", daily_usd=D(10), timezone="UTC")
    store = open_store(ledger_url)
    run = SpendWindow(store, spec, "run-r", clock=clock, lease_s=600)
    for shot in ("paid", "refused", "unknown"):
        run.commit(run.reserve(shot, D(1)), take=1, attempt=1)
    run.close()  # the run ends with all three at risk: counted at their estimate
    assert D(window_of(ledger_url, "team", now=clock())["spent_usd"]) == D(3)
    changed = reconcile_run(store, "run-r", [_Att("paid", 1, "succeeded", 0.4),
                                             _Att("refused", 1, "failed", 0.0),
                                             _Att("unknown", 1, "unconfirmed", None)], clock())
    assert changed == 2
    w = window_of(ledger_url, "team", now=clock())
    assert (D(w["spent_usd"]), D(w["reserved_usd"])) == (D("1.4"), D(0))
    store.close()


class _Att:
    def __init__(self, shot_id: str, attempt: int, status: str, actual: float | None,
                 take: int = 1) -> None:
        self.shot_id, self.attempt, self.status, self.actual_usd = shot_id, attempt, status, actual
        self.take = take


# -- declaring windows -------------------------------------------------------------------------

BOARD = """
title: t
budget:
  window: {scope: marketing, daily_usd: 40, timezone: Europe/Paris}
shots: [{id: a, prompt: x}]
"""


def test_storyboard_window_errors_name_their_place() -> None:
    text = BOARD.replace("timezone: Europe/Paris", "timezone: Europe/Pariss, dayly_usd: 3")
    with pytest.raises(SpecError) as err:
        parse_storyboard(text.replace("daily_usd: 40", "daily_usd: -1"), "b.yaml")
    msg = str(err.value)
    assert "budget.window.timezone (line 4): 'Europe/Pariss' is not an IANA time zone" in msg
    assert "budget.window.daily_usd (line 4): Input should be greater than or equal to 0" in msg
    assert "budget.window.dayly_usd (line 4): unknown field 'dayly_usd' (allowed: daily_usd, " \
           "monthly_usd, timezone, scope)" in msg


def test_operators_file_wins_and_is_validated_with_places(tmp_path: Path) -> None:
    board = parse_storyboard(BOARD)
    spec = window_spec(board, env={})
    assert spec == WindowSpec("marketing", D(40), None, PARIS, "storyboard")
    ops = tmp_path / "budgets.yaml"
    ops.write_text("version: 1\ndefault_scope: research\nscopes:\n"
                   "  marketing: {daily_usd: 25, monthly_usd: 300, timezone: America/New_York}\n"
                   "  research: {monthly_usd: 50}\n")
    env = {"STORYREEL_BUDGETS": str(ops)}
    assert window_spec(board, env=env) == WindowSpec("marketing", D(25), D(300),
                                                     "America/New_York", str(ops))
    bare = parse_storyboard("title: t\nshots: [{id: a, prompt: x}]\n")
    assert window_spec(bare, env=env) == WindowSpec("research", None, D(50), "UTC", str(ops))
    assert window_spec(bare, env={}) is None
    ops.write_text("scopes:\n  marketing: {daily_usd: 25, timezone: Mars/Base}\n"
                   "  research: {weekly_usd: 1}\n")
    with pytest.raises(SpecError) as err:
        window_spec(board, env=env)
    msg = str(err.value)
    assert f"{ops}: scopes.marketing.timezone (line 2): 'Mars/Base' is not an IANA" in msg
    assert f"{ops}: scopes.research.weekly_usd (line 3): unknown field 'weekly_usd'" in msg


def test_cli_errors_exit_2_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ops = tmp_path / "budgets.yaml"
    ops.write_text("scopes:\n  team: {daily_usd: nope}\n")
    monkeypatch.setenv("STORYREEL_BUDGETS", str(ops))
    assert main(["budget"]) == 2
    assert "scopes.team.daily_usd (line 2)" in capsys.readouterr().err
    monkeypatch.delenv("STORYREEL_BUDGETS")
    monkeypatch.setenv("STORYREEL_LEDGER_URL", "mysql://x/y")
    assert main(["budget"]) == 2
    assert "STORYREEL_LEDGER_URL: 'mysql://x/y' is not a ledger URL" in capsys.readouterr().err


def test_plan_shows_the_window_and_refuses_what_does_not_fit(
        emu_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    monkeypatch.setenv("STORYREEL_LEDGER_URL", url)
    shots = [{"id": f"s{i}", "prompt": f"p{i}"} for i in range(2)]
    defaults = {"provider": "fal", "model": "kling-2.5-turbo-pro", "duration": 5}
    window = {"scope": "team", "daily_usd": 5, "timezone": PARIS}
    spec = write_board(tmp_path, shots, defaults=defaults, budget={"window": window})
    assert main(["plan", "--json", str(spec)]) == 0
    planned = json.loads(capsys.readouterr().out)
    estimate = D(planned["estimated_usd"])
    [day, month] = planned["windows"]
    assert (day["period"], day["remaining_usd"], month["limit_usd"]) == ("day", 5.0, None)
    # another run holds most of today's window
    store = open_store(url)
    other = SpendWindow(store, window_spec(parse_storyboard(spec.read_text())), "other")
    other.reserve("x", D(5) - estimate + D("0.01"))
    assert main(["plan", str(spec)]) == 1
    out, err = capsys.readouterr()
    today = dt.datetime.now(ZoneInfo(PARIS)).date().isoformat()
    assert f"window team day {today} (Europe/Paris): limit $5.00" in out
    assert "does not fit spend window team day" in err and "on_exhausted: stop" in err
    spec = write_board(tmp_path, shots, defaults=defaults,
                       budget={"window": window, "on_exhausted": "skip"})
    assert main(["plan", str(spec)]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["budget"]) == 0
    out = capsys.readouterr().out
    assert "team" in out and "held by run other" in out
    other.close()
    store.close()


# -- real runs: three CLI processes sharing one daily window --------------------------------

# three runs of 3 shots at $0.35 ask $3.15 of a $2.00 window: contended, with three processes
# reserving at once. (Each run is a Python process importing Prefect, on 2 cores: eight cost
# ~4x the CPU of three for the same checks.)
RUNS = 3
SHOTS = 3
LIMIT = D("2.00")


def run_env(emu: Any, prefect_api: str | None, tmp: Path, url: str, **extra: str
            ) -> dict[str, str]:
    """With prefect_api None each run starts its own temporary Prefect server."""
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    api = {"PREFECT_API_URL": prefect_api} if prefect_api else {
        "PREFECT_HOME": str(tmp / "prefect-home")}
    return {**base, **emu.env(), **api,
            "STORYREEL_CACHE_DIR": str(tmp / "cache"), "STORYREEL_POLL_FIRST_S": "0.1",
            "STORYREEL_POLL_MAX_S": "0.3", "STORYREEL_LEDGER_URL": url,
            "STORYREEL_HOME": str(tmp / "home"), **extra}


def cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.e2e
def test_concurrent_runs_never_pass_a_shared_daily_window(
        ledger_url: str, emu_env: Any, prefect_api: str, tmp_path: Path) -> None:
    emu = emu_env
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    emu.configure(latency=0.6, jitter=1.0)
    # random vendor trouble: failed jobs (fal does not charge them), 5xx on submit and polls,
    # and one submit whose answer is lost (unconfirmed: it may be, and here is, charged)
    emu.inject("fal", "job", "fail", times=rng.randint(2, 4))
    emu.inject("fal", "submit", "http", status=503, times=rng.randint(1, 3))
    emu.inject("fal", "poll", "http", status=500, times=rng.randint(2, 5))
    emu.inject("fal", "submit", "drop_response", times=1)
    env = run_env(emu, prefect_api, tmp_path, ledger_url)
    window = {"scope": "shared", "daily_usd": float(LIMIT), "timezone": "Pacific/Auckland"}
    procs = []
    for n in range(RUNS):
        spec = write_board(tmp_path / "boards", [
            {"id": f"r{n}s{i}", "prompt": f"run {n} shot {i}"} for i in range(SHOTS)],
            name=f"run{n}.yaml", title=f"run {n}",
            defaults={"provider": "fal", "model": "kling-2.5-turbo-pro", "duration": 5,
                      "retries": 1},
            budget={"on_exhausted": "skip", "window": window})
        procs.append(cli(["run", str(spec), "--out", str(tmp_path / f"out{n}"), "--no-cache"],
                         env, tmp_path / f"run{n}.log"))
    try:
        for p in procs:
            p.wait(timeout=500)
    finally:
        for p in procs:
            stop(p)
    logs = [(tmp_path / f"run{n}.log").read_text(errors="replace") for n in range(RUNS)]
    for n, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode in (0, 1), f"run {n} (seed {seed}):\n{log[-3000:]}"
        assert "Traceback" not in log, log[-3000:]

    paid = charged(emu, "fal")
    w = window_of(ledger_url, "shared")
    spent = D(w["spent_usd"])
    assert paid <= LIMIT, f"seed {seed}: the vendor charged {paid} > window {LIMIT}"
    assert w["reserved_usd"] == 0 and w["runs"] == [], w
    # every cent counted: the window holds what the runs' reports say was (or may have been)
    # charged; above what the vendor charged only by unconfirmed submits, counted at their
    # estimate because nobody can know (here a lost answer may hide a job that failed)
    rows = [r for n in range(RUNS) for r in cost_rows(tmp_path / f"out{n}")]
    unconfirmed = total([r for r in rows if r["status"] == "unconfirmed"])
    assert spent == total(rows), (seed, w)
    assert paid <= spent <= paid + unconfirmed, (seed, spent, paid, unconfirmed)
    # the window really was contended: some shots were refused by it, some were paid
    refused = [r for r in rows if r["status"] == "skipped"
               and "spend window shared day" in (r["failure_reason"] or "")]
    assert refused and paid > 0, (seed, [r["status"] for r in rows])
    # each run's summary says what it used of the window; together, all of it
    used = Decimal(0)
    for n in range(RUNS):
        run_json = json.loads((tmp_path / f"out{n}" / "run.json").read_text())
        [day] = [x for x in run_json["windows"] if x["period"] == "day"]
        assert day["scope"] == "shared" and day["limit_usd"] == float(LIMIT)
        used += D(day["run_spent_usd"])
    assert used == spent
    assert any("window: shared day" in log for log in logs)


# -- a run killed mid-flight -----------------------------------------------------------------

def _forget_concurrency_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def forget() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_global_concurrency_limit_by_name(name)

    asyncio.run(forget())


def journal_rows(out: Path) -> list[dict[str, Any]]:
    db = out / "journal.sqlite"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM attempts")]
    except sqlite3.OperationalError:
        return []


@pytest.mark.e2e
@pytest.mark.parametrize("comeback", ["lease-expiry", "resume"])
def test_killed_run_gives_back_what_it_held_but_counts_what_may_be_charged(
        comeback: str, emu_env: Any, prefect_api: str, tmp_path: Path) -> None:
    emu = emu_env
    emu.configure(latency=600.0)  # the jobs run until the test advances the emulator's clock
    url = f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    lease = "3" if comeback == "lease-expiry" else "600"
    env = run_env(emu, prefect_api, tmp_path, url, STORYREEL_WINDOW_LEASE_S=lease)
    # limits: fal 2 -> the third shot has reserved its money and waits for a slot
    spec = write_board(tmp_path, [{"id": f"s{i}", "prompt": f"take {i}"} for i in range(3)],
                       defaults={"provider": "fal", "model": "kling-2.5-turbo-pro",
                                 "duration": 5, "retries": 0},
                       limits={"fal": 2},
                       budget={"window": {"scope": "k", "daily_usd": 20}})
    out = tmp_path / "out"
    proc = cli(["run", str(spec), "--out", str(out)], env, tmp_path / "run1.log")
    try:
        deadline = time.monotonic() + 240
        while sum(1 for r in journal_rows(out) if r["job_id"]) < 2:
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the jobs were never submitted"
            time.sleep(0.05)
    finally:
        stop(proc, sig=9)
    # on the shared Prefect server `limits:` are global concurrency slots, which the killed run
    # holds until Prefect's own lease runs out: an operator's reset, so the resume can start
    _forget_concurrency_limit("vendor:fal")
    sent = [r for r in journal_rows(out) if r["job_id"]]
    at_vendor = sum(D(r["reserved_usd"]) for r in sent)
    w = window_of(url, "k")
    assert len(w["runs"]) == 1 and w["runs"][0]["reservations"] == 3, w  # 2 sent + 1 queued
    queued = D(w["reserved_usd"]) - at_vendor
    assert queued > 0

    if comeback == "lease-expiry":
        time.sleep(3.5)
        w = window_of(url, "k")  # `storyreel budget` sweeps lapsed leases, as any reserve does
        # the queued reservation came back; the two submitted jobs are counted at their estimate
        assert (D(w["reserved_usd"]), D(w["spent_usd"]), w["runs"]) == (0, at_vendor, [])
        assert charged(emu, "fal") == 0
        # the vendor finishes and charges them: the window had them counted all along
        emu.advance(600.0)
        # (at their reservations: the estimate plus budget.estimate_margin, or fal's live
        # price, at or above the bill)
        assert emu.stats("fal")["in_flight"] == 0 and 0 < charged(emu, "fal") <= at_vendor
    else:
        emu.advance(600.0)  # the jobs at the vendor finish while nobody watches

    emu.configure(latency=0.5)  # the third shot's job, submitted by the resumed run

    # the folder is resumed: the jobs at the vendor are polled (not resubmitted) and settled
    # at what the vendor charged; the third shot reserves and submits anew
    again = cli(["run", str(spec), "--out", str(out)], env, tmp_path / "run2.log")
    try:
        again.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the resumed run hung:\n" + (tmp_path / "run2.log").read_text()[-5000:])
    finally:
        stop(again)
    log = (tmp_path / "run2.log").read_text(errors="replace")
    assert again.returncode == 0, log[-3000:]
    assert emu.stats("fal")["submits"] == 3  # never twice
    w = window_of(url, "k")
    assert (D(w["spent_usd"]), D(w["reserved_usd"]), w["runs"]) == (charged(emu, "fal"), 0, [])


@pytest.mark.e2e
def test_reconcile_settles_the_window_at_the_vendors_price(emu_env: Any, prefect_api: str,
                                                           tmp_path: Path) -> None:
    """A job abandoned at its deadline is counted in the window at its estimate; once
    `storyreel reconcile` has asked the vendor, the window holds the vendor's price."""
    emu = emu_env
    emu.configure(latency=600.0)  # running past the deadline, until the clock is advanced
    url = f"sqlite:///{tmp_path / 'budgets.sqlite'}"
    env = run_env(emu, prefect_api, tmp_path, url, STORYREEL_JOB_DEADLINE_S="1.0")
    spec = write_board(tmp_path, [{"id": "a", "prompt": "harbour at dawn", "provider": "runware",
                                   "model": "hailuo-2.3", "duration": 6, "retries": 0}],
                       budget={"window": {"scope": "r", "daily_usd": 5}})
    out = tmp_path / "out"
    # no early submit: the deadline must run out while the flow itself waits
    for args, log in ((["run", str(spec), "--out", str(out), "--no-early-submit"], "run.log"),
                      (None, None), (["reconcile", str(out)], "reconcile.log")):
        if args is None:  # the vendor finishes the job we stopped waiting for
            emu.advance(600.0)
            assert emu.stats("runware")["in_flight"] == 0
            [row] = cost_rows(out)
            assert row["status"] == "abandoned", row
            w = window_of(url, "r")
            # counted at what was reserved for it (the estimate + budget.estimate_margin)
            assert D(w["spent_usd"]) == D(row["actual_usd"]) == D(row["reserved_usd"])
            assert charged(emu, "runware") != D(w["spent_usd"])  # the estimate was off
            continue
        proc = cli(args, env, tmp_path / log)
        try:
            proc.wait(timeout=300)
        finally:
            stop(proc)
    w = window_of(url, "r")
    assert (D(w["spent_usd"]), D(w["reserved_usd"])) == (charged(emu, "runware"), 0), \
        (tmp_path / "reconcile.log").read_text()[-2000:]
