"""Money truth: cost.csv is the vendor's bill, an estimate says it is one, and money still at
a vendor is never $0. Expectations come from what the emulator billed (its own price table,
tests/emulator/prices.py) or from the documented rule itself (a margin of 10%), never from the
product's catalog; each test failed on the code before these rules.

Most tests drive the shot code on a RunContext (no Prefect: it is not the subject here); the
ones about the flow's own steps go through it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flows.money.report import rows_from_journal, write_cost_csv
from flows.money.spend import totals
from flows.run.reconcile import reconcile
from flows.run.session import RunOptions, new_context, open_journal
from flows.run.shot import render_shot
from flows.storyboard.keys import env_key
from flows.storyboard.plan import make_plan
from providers.http import new_client
from tests.money_kit import cents, shot, wait_idle
from tests.storyboards import charged, cost_rows, total, write_board

LUMA = {"provider": "luma", "model": "ray-flash-2", "duration": 5}


class Shots:
    """Render a storyboard's shots on a RunContext, as the flow does, without Prefect."""

    def __init__(self, spec: Path, out: Path, **opts: Any) -> None:
        self.plan = make_plan(spec)
        self.out = out
        self.opts = RunOptions(out=out, **opts)

    async def render(self, only: Callable[[Any], bool] = lambda s: True,
                     keys: dict[str, str | None] | None = None) -> list[Any]:
        journal = open_journal(self.out)
        try:
            async with new_client() as client:
                if keys is None:
                    keys = {p: env_key(p) for p in self.plan.providers_used()}
                ctx = new_context(self.plan, self.opts, self.out, journal, client, keys,
                                  log=lambda _m: None)
                return list(await asyncio.gather(
                    *(render_shot(ctx, s) for s in self.plan.shots if only(s))))
        finally:
            self.report(journal)
            journal.close()

    async def killed(self, after: Callable[[], bool], timeout: float = 20.0) -> None:
        """Start every shot and stop the process's work (no cleanup, as a kill leaves it)
        once `after()` is true."""
        task = asyncio.ensure_future(self.render())
        deadline = time.monotonic() + timeout
        while not after():
            assert time.monotonic() < deadline, "the shots never reached the kill point"
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    def report(self, journal: Any = None) -> list[dict[str, str]]:
        own = journal is None
        journal = journal or open_journal(self.out)
        try:
            write_cost_csv(rows_from_journal(journal, {}), self.out / "cost.csv")
        finally:
            if own:
                journal.close()
        return cost_rows(self.out)

    def statuses(self) -> list[str]:
        journal = open_journal(self.out)
        try:
            return [a.status for a in journal.attempts()]
        finally:
            journal.close()


@pytest.fixture
async def fast(emu_env, monkeypatch, tmp_path) -> AsyncIterator[Any]:
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.3)
    yield emu_env


def _money(rows: list[dict[str, str]]) -> dict[str, float]:
    return totals(rows)


# -- an estimate says it is one -----------------------------------------------------------------

async def test_estimates_are_labelled_and_never_summed_as_charged(fast, tmp_path) -> None:
    """Luma states no cost (its row is our estimate); Runway states its charge in credits.
    The totals keep the two apart, and the vendor's figure is its bill to the cent."""
    emu = fast
    emu.configure(price_multiplier={"runway": 1.3, "luma": 1.05})
    spec = write_board(tmp_path, [{"id": "l", "prompt": "a lake", **LUMA},
                                  shot("r", "runway")])
    run = Shots(spec, tmp_path / "out")
    results = await run.render()
    assert all(r.status == "done" for r in results), results
    rows = {r["shot_id"]: r for r in run.report()}
    assert rows["r"]["cost_source"] == "vendor"
    assert Decimal(rows["r"]["actual_usd"]) == charged(emu, "runway") > 0
    assert rows["l"]["cost_source"] == "estimate"
    money = _money(list(rows.values()))
    assert cents(money["confirmed_usd"]) == cents(charged(emu, "runway"))
    assert cents(money["estimated_spend_usd"]) == cents(Decimal(rows["l"]["actual_usd"]))
    assert money["at_risk_usd"] == 0
    assert "charged_usd" not in money


def test_the_cli_money_line_calls_an_estimate_an_estimate() -> None:
    from flows.cli.commands import spent_line

    line = spent_line({"confirmed_usd": 1.5, "estimated_spend_usd": 24.0, "at_risk_usd": 0.6,
                       "total_usd": 26.1}, "$30.00")
    assert "$1.5000 confirmed by vendors" in line
    assert "$24.0000 estimated" in line and "charged" not in line
    assert "$0.6000 at risk" in line and "$26.1000 of $30.00" in line


def test_plan_json_shows_the_reservation_with_its_margin(tmp_path, capsys) -> None:
    from flows.cli.commands import main

    spec = write_board(tmp_path, [{"id": "l", "prompt": "a lake", **LUMA},
                                  {"id": "x", "prompt": "free", "provider": "local",
                                   "duration": 2}],
                       budget={"estimate_margin": 0.25})
    main(["plan", str(spec), "--json"])  # exit 2 without keys: the JSON is printed first
    data = json.loads(capsys.readouterr().out)
    [paid, free] = [s["options"][0] for s in data["shots"]]
    assert paid["estimate_usd"] > 0
    assert paid["reserve_usd"] == pytest.approx(paid["estimate_usd"] * 1.25, abs=1e-6)
    assert free["reserve_usd"] == free["estimate_usd"] == 0
    assert data["estimate_margin"] == 0.25


# -- a cap holds while the vendor bills above the estimate ---------------------------------------

async def test_a_cap_sized_for_n_shots_holds_when_the_vendor_bills_8_percent_more(
        fast, tmp_path) -> None:
    emu = fast
    emu.configure(price_multiplier={"luma": 1.08})
    shots = [{"id": f"s{i}", "prompt": f"shot {i}", **LUMA, "retries": 0} for i in range(5)]
    spec = write_board(tmp_path, shots)
    estimate = make_plan(spec).total_estimate  # the cap a producer sizes from the plan
    spec = write_board(tmp_path, shots, budget={"max_usd": estimate, "on_exhausted": "skip"})
    run = Shots(spec, tmp_path / "out")
    await run.render()
    wait_idle(emu)
    assert charged(emu, "luma") <= Decimal(str(estimate))
    assert emu.stats("luma")["submits"] >= 4  # the margin costs one shot here, not more
    skipped = [r for r in run.report() if r["status"] == "skipped"]
    assert all("budget" in r["failure_reason"] for r in skipped)


# -- money at a vendor is at risk until a final answer --------------------------------------------

@pytest.mark.parametrize("vendor", ["fal", "runway"])
async def test_an_ignored_cancel_is_at_risk_until_the_vendor_answers(
        fast, tmp_path, monkeypatch, vendor) -> None:
    """fal answers a cancel of a running request with CANCELLATION_REQUESTED, which only
    signals the app; the app may finish and bill. Never $0, never `canceled` on our word."""
    emu = fast
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "0.5")
    monkeypatch.setenv("STORYREEL_CANCEL_GRACE_S", "0.3")
    emu.configure(latency=2.5)
    emu.inject(vendor, "job", "ignore_cancel")
    spec = write_board(tmp_path, [shot("a", vendor, retries=0)], budget={"max_usd": 10})
    run = Shots(spec, tmp_path / "out")
    [result] = await run.render()
    assert result.status == "failed"
    assert emu.stats(vendor)["cancels"] >= 1
    [row] = run.report()
    assert row["status"] == "cancel_requested" and row["at_risk"] == "True"
    assert Decimal(row["actual_usd"]) >= Decimal(row["estimated_usd"]) > 0
    wait_idle(emu, vendor)  # the app ran on, and billed
    assert charged(emu, vendor) > 0
    money, left = await reconcile(tmp_path / "out", timeout_s=5)
    assert left == []
    [row] = cost_rows(tmp_path / "out")
    assert row["status"] in ("succeeded", "downloaded") and row["at_risk"] == "False"
    assert money["at_risk_usd"] == 0
    if row["cost_source"] in ("vendor", "vendor_units"):  # the vendor's own figure
        assert Decimal(row["actual_usd"]) == charged(emu, vendor)
    else:
        assert Decimal(row["actual_usd"]) > 0


async def test_a_cancel_the_vendor_confirms_releases_the_money(fast, tmp_path, monkeypatch) -> None:
    emu = fast
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "0.5")
    monkeypatch.setenv("STORYREEL_CANCEL_GRACE_S", "5")
    emu.configure(latency=3)
    spec = write_board(tmp_path, [shot("a", "replicate", retries=0)])
    run = Shots(spec, tmp_path / "out")
    await run.render()
    [row] = run.report()
    assert row["status"] == "canceled" and row["at_risk"] == "False"
    assert Decimal(row["actual_usd"]) == charged(emu, "replicate") == 0


async def test_a_killed_run_reconciled_at_once_counts_jobs_in_flight(fast, tmp_path) -> None:
    """Killed while three Luma jobs ran, then `storyreel reconcile` at once: the jobs are at
    risk at their reservations (was $0.00), and a later reconcile settles them."""
    emu = fast
    emu.configure(latency=1.5)
    spec = write_board(tmp_path, [{"id": f"s{i}", "prompt": f"shot {i}", **LUMA}
                                  for i in range(3)])
    run = Shots(spec, tmp_path / "out")
    await run.killed(lambda: emu.stats("luma")["submits"] == 3
                     and all(s == "submitted" for s in run.statuses()))
    money, left = await reconcile(tmp_path / "out", timeout_s=0.05)
    assert len(left) == 3
    rows = cost_rows(tmp_path / "out")
    assert all(r["at_risk"] == "True" for r in rows)
    assert Decimal(str(money["at_risk_usd"])) == total(rows) > 0
    assert total(rows) >= total(rows, "estimated_usd")
    wait_idle(emu)
    money, left = await reconcile(tmp_path / "out", timeout_s=5)
    assert left == [] and money["at_risk_usd"] == 0
    rows = cost_rows(tmp_path / "out")
    assert all(r["status"] in ("succeeded", "downloaded") for r in rows)


@pytest.mark.parametrize(("vendor", "fields"), [
    ("runway", {"cost": 5}),
    ("perf", {"perf.cost_usd": float("nan")}),
    ("runware", {"data.0.cost": -1.5}),
    ("nanogpt", {"data": "COMPLETED"}),
])
async def test_a_malformed_status_answer_keeps_the_job_at_risk(
        fast, tmp_path, vendor, fields) -> None:
    """A poll answer of the wrong shape is contained: no exception out of the shot, the job
    stays at risk at its reservation, and a later reconcile settles it at the vendor's bill."""
    emu = fast
    emu.inject(vendor, "poll", "patch", times=-1, fields=fields)
    spec = write_board(tmp_path, [shot("a", vendor, retries=0)])
    run = Shots(spec, tmp_path / "out")
    [result] = await run.render()
    assert result.status != "done"
    [row] = run.report()
    assert row["at_risk"] == "True" and Decimal(row["actual_usd"]) > 0, row
    emu.faults.clear()
    wait_idle(emu)
    money, left = await reconcile(tmp_path / "out", timeout_s=5)
    assert left == []
    [row] = cost_rows(tmp_path / "out")
    assert row["at_risk"] == "False"
    assert Decimal(row["actual_usd"]) == charged(emu, vendor)


async def test_a_job_of_a_provider_edited_away_is_asked_with_its_own_key(fast, tmp_path) -> None:
    """Killed while a Runway job ran; the shot is then moved to Luma. The resumed folder
    settles the Runway job with Runway's key (was: no key, 401, left at $0)."""
    emu = fast
    emu.configure(latency=1.0)
    spec = write_board(tmp_path, [shot("a", "runway")])
    first = Shots(spec, tmp_path / "out")
    await first.killed(lambda: first.statuses() == ["submitted"])
    spec = write_board(tmp_path, [{"id": "a", "prompt": "a lake", **LUMA}])
    second = Shots(spec, tmp_path / "out")
    await second.render(keys={"luma": env_key("luma")})
    wait_idle(emu)
    rows = second.report()
    old = [r for r in rows if r["provider"] == "runway"]
    assert [r["at_risk"] for r in old] == ["False"]
    assert Decimal(old[0]["actual_usd"]) == charged(emu, "runway") > 0


async def test_retries_zero_still_resubmits_and_regenerates_when_asked(fast, tmp_path) -> None:
    emu = fast
    emu.inject("runway", "submit", "accept_then_http", status=500)
    spec = write_board(tmp_path, [shot("a", "runway", retries=0)])
    out = tmp_path / "out"
    [r] = await Shots(spec, out).render()
    assert r.status == "unconfirmed"
    [r] = await Shots(spec, out).render()
    assert r.status == "unconfirmed" and emu.stats("runway")["submits"] == 1  # never resent
    [r] = await Shots(spec, out, resubmit_unconfirmed=True).render()
    assert r.status == "done" and emu.stats("runway")["submits"] == 2
    [r] = await Shots(spec, out, regenerate={"a"}).render()
    assert r.status == "done" and emu.stats("runway")["submits"] == 3
    wait_idle(emu)
    rows = cost_rows(out)
    assert total(rows) >= charged(emu, "runway")  # the unconfirmed row stays counted


@pytest.mark.e2e
async def test_a_shot_deleted_after_a_kill_is_settled_by_the_next_run(run, emu_env,
                                                                      tmp_path) -> None:
    emu = emu_env
    emu.configure(latency=1.0)
    spec = write_board(tmp_path, [shot("a", "runway"), shot("b", "runway")])
    out = tmp_path / "out"
    first = Shots(spec, out)
    await first.killed(lambda: first.statuses() == ["submitted", "submitted"])
    spec = write_board(tmp_path, [shot("a", "runway")])
    result, rows = await run(spec, out)
    assert result["ok"]
    wait_idle(emu)
    gone = [r for r in rows if r["shot_id"] == "b"]
    assert [r["at_risk"] for r in gone] == ["False"]
    assert total(rows) == charged(emu, "runway")
    assert result["confirmed_usd"] == float(charged(emu, "runway"))


@pytest.mark.e2e
async def test_an_up_to_date_folder_with_money_at_risk_settles_it(run, emu_env, prefect_api,
                                                                  tmp_path, monkeypatch) -> None:
    """The cut is finished (the shot fell back to the free animatic) while the Luma job it
    walked away from still runs at the vendor. Rerunning the folder has nothing to render, but
    it must not leave that money at risk unsaid: it asks the vendor and settles it."""
    from tests.money_kit import cli_env as env_for
    from tests.money_kit import run_cli

    emu = emu_env
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "0.5")
    emu.configure(latency=2.0)
    spec = write_board(tmp_path, [{"id": "a", "prompt": "a lake", **LUMA, "retries": 0,
                                   "fallback": ["local:animatic"]}])
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert result["ok"], result
    assert [r["status"] for r in rows] == ["abandoned", "done"]
    wait_idle(emu)
    code, log = run_cli(env_for(emu, prefect_api, tmp_path), "run", str(spec), "--out", str(out))
    assert code == 0, log[-2000:]
    assert "up to date" in log and "asking about them" in log
    rows = cost_rows(out)
    assert [r["at_risk"] for r in rows] == ["False", "False"]
    assert rows[0]["status"] in ("succeeded", "downloaded")
    assert json.loads((out / "run.json").read_text())["at_risk_usd"] == 0
