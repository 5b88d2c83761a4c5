"""Money when the vendor's answer is ambiguous, through the real flow and the
emulator, whose prices and billing rules are its own (tests/emulator/prices.py):

* a submit the vendor took and then answered badly (HTTP error, 2xx without the job's id,
  2xx that is not JSON) is never sent again, and the report shows at least what was billed;
* a job past its deadline on a vendor that cannot cancel keeps its money (row `abandoned`, at
  the estimate, reservation held) and is settled at its real outcome later;
* the totals of cost.csv, run.json, the CLI and `storyreel report` agree to the cent;
* `on_exhausted: stop` stops later submits at run time.

Most cases drive the shot code directly (the `shot_run` fixture, tests/shot_kit.py); each concern
keeps a run through the Prefect flow, whose task retry must not send a taken submit again.
Long vendor jobs finish when the test advances the emulator's clock, not after a sleep.
"""

from __future__ import annotations

import asyncio
import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.cli_kit import storyreel
from tests.money_kit import (
    AT_RISK,
    NO_CANCEL,
    PAID,
    SPENT,
    cents,
    charged,
    cli_env,
    cost_rows,
    run_json,
    shot,
    total,
    wait_idle,
)
from tests.storyboards import write_board

pytestmark = pytest.mark.e2e
ACCEPT_FAULTS = {"http500": ("accept_then_http", {"status": 500}),
                 "no_id": ("accept_then_no_id", {}),
                 "garbage": ("accept_then_garbage", {})}


async def _accepted_badly(render: Any, emu: Any, tmp_path: Path, vendor: str,
                          fault: str) -> None:
    kind, params = ACCEPT_FAULTS[fault]
    emu.inject(vendor, "submit", kind, **params)
    fallback = "fal:kling-2.5-turbo-pro" if vendor == "runway" else "runway:gen4.5"
    spec = write_board(tmp_path, [shot("a", vendor, retries=2, fallback=[fallback])],
                       budget={"max_usd": 20})
    result, rows = await render(spec, tmp_path / "out")
    wait_idle(emu)  # whatever the vendor took has finished and billed
    stats = emu.stats(vendor)
    # the vendor created the job: no retry loop (ours or Prefect's) may create another
    assert stats["jobs"] == 1 and stats["submits"] == 1, rows
    # every cent the vendors billed is in the report (at the estimate at least)
    assert charged(emu) > 0
    assert total(rows) >= charged(emu), (rows, emu.stats()["total"])
    first = rows[0]
    assert first["provider"] == vendor and first["actual_usd"] not in ("", "0.00"), first


@pytest.mark.parametrize("fault", list(ACCEPT_FAULTS))
@pytest.mark.parametrize("vendor", list(PAID))
async def test_accepted_submit_with_a_bad_answer_is_sent_once_and_reported(
        shot_run, emu_env, tmp_path: Path, vendor: str, fault: str) -> None:
    await _accepted_badly(shot_run, emu_env, tmp_path, vendor, fault)


@pytest.mark.parametrize("vendor, fault", [("fal", "http500"), ("replicate", "no_id"),
                                           ("runway", "garbage")])
async def test_accepted_submit_with_a_bad_answer_is_sent_once_through_the_flow(
        run, emu_env, tmp_path: Path, vendor: str, fault: str) -> None:
    """The same through Prefect: its task retry (flows/pipeline.py) must not send it again."""
    await _accepted_badly(run, emu_env, tmp_path, vendor, fault)


@pytest.mark.parametrize("vendor", NO_CANCEL)
async def test_job_past_its_deadline_on_a_vendor_that_cannot_cancel_keeps_its_money(
        shot_run, emu_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vendor: str) -> None:
    emu = emu_env
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "1.0")
    from flows.storyboard.plan import make_plan

    board = [shot("a", vendor, retries=1)]
    estimate = make_plan(write_board(tmp_path, board)).shots[0].primary.estimate_usd
    # room for one job, not two: a retry fits only if the abandoned job's money is forgotten
    cap = float(cents(estimate * 1.5))
    spec = write_board(tmp_path, board, budget={"max_usd": cap, "on_exhausted": "skip"})
    out = tmp_path / "out"
    emu.configure(latency=60.0)  # still running at the deadline, until the clock moves
    result, rows = await shot_run(spec, out)
    assert emu.stats(vendor)["jobs"] == 1, rows  # no second job while the first may bill
    [job] = emu.jobs(vendor)
    row = next(r for r in rows if r["job_id"] == job.id)
    assert row["status"] == "abandoned", row
    assert Decimal(row["actual_usd"]) == Decimal(row["reserved_usd"]) \
        >= Decimal(row["estimated_usd"]) > 0  # held at its reservation
    assert row["cost_source"] == "reservation" and row["at_risk"].lower() == "true"
    assert not result["ok"]

    assert charged(emu, vendor) == 0  # (on the vendor's clock it is still running)
    emu.advance(60.0)  # the vendor finished the job anyway, and billed it
    assert charged(emu, vendor) > 0 and charged(emu) <= Decimal(str(cap))
    # the next run of the same folder asks the vendor and settles the row at its outcome
    result, rows = await shot_run(spec, out)
    assert emu.stats(vendor)["jobs"] == 1
    row = next(r for r in rows if r["job_id"] == job.id)
    assert row["status"] not in AT_RISK and row["at_risk"].lower() == "false", row
    assert total(rows) == charged(emu)


async def test_abandoned_job_money_is_not_lent_to_another_shot(
        shot_run, emu_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The abandoned job's reservation stays held: a second shot (here: the next option of
    the same shot, on another vendor) gets only what is left of the cap."""
    emu = emu_env
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "1.0")
    # luma ray-flash-2 5 s at 540p: $0.20 estimate; the fallback runway gen4.5 5 s: $0.60
    spec = write_board(tmp_path, [shot("a", "luma", retries=0, fallback=["runway:gen4.5"])],
                       budget={"max_usd": 0.7, "on_exhausted": "skip"})
    emu.configure(latency=60.0)
    result, rows = await shot_run(spec, tmp_path / "out")
    emu.advance(60.0)
    assert emu.stats("runway")["submits"] == 0, rows  # $0.20 held + $0.60 > $0.70
    assert [r["status"] for r in rows] == ["abandoned", "skipped"], rows
    assert rows[1]["failure_reason"].startswith("budget")
    assert charged(emu) <= Decimal("0.7") and total(rows) >= charged(emu)


async def test_estimate_row_differs_from_the_real_charge_until_reconciled(
        shot_run, emu_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Runware lists Hailuo 2.3 at $0.28 for 6 s (runware.ai's model page), the catalog's
    estimate; the emulated Runware bills 1.5x that ($0.42), a price moved since the catalog
    was dated. Abandoned at its deadline, the row holds its reservation at risk; `storyreel
    reconcile` then asks the vendor, which reports the real cost."""
    emu = emu_env
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "1.0")
    spec = write_board(tmp_path, [{"id": "a", "prompt": "harbour at dawn", "provider": "runware",
                                   "model": "hailuo-2.3", "duration": 6, "retries": 0}],
                       budget={"max_usd": 2})
    out = tmp_path / "out"
    emu.configure(latency=60.0)
    result, rows = await shot_run(spec, out)
    [row] = rows
    assert row["status"] == "abandoned" and row["cost_source"] == "reservation", row
    assert Decimal(row["actual_usd"]) == Decimal(row["reserved_usd"]) \
        >= Decimal(row["estimated_usd"])
    assert Decimal(row["estimated_usd"]) == Decimal("0.28")  # Runware's 6 s price
    emu.advance(60.0)
    assert charged(emu) == Decimal("0.42")  # the vendor's real price
    assert total(rows) < charged(emu)  # what an estimate row can be wrong by, visibly

    from flows.cli.commands import main  # the command in process (its own event loop: a thread)

    code = await asyncio.to_thread(main, ["reconcile", str(out)])
    assert code == 0, capsys.readouterr()
    [row] = cost_rows(out)
    assert row["cost_source"] == "vendor" and row["at_risk"].lower() == "false", row
    assert Decimal(row["actual_usd"]) == charged(emu) == Decimal("0.42")
    assert emu.stats("runware")["submits"] == 1


def test_totals_agree_everywhere_with_money_at_risk(emu_env, prefect_api: str,
                                                    tmp_path: Path) -> None:
    """One done, one unconfirmed (accepted, answered 500), one abandoned (never finishes, no
    cancel): cost.csv, run.json, the CLI's `spent:` line and `storyreel report` agree."""
    emu = emu_env
    emu.configure(latency=0.3, price_multiplier={"runway": 1.1})  # runway bills over estimate
    emu.inject("fal", "submit", "accept_then_http", status=500)
    emu.inject("luma", "job", "never")
    spec = write_board(tmp_path, [shot("done", "runway"), shot("unconfirmed", "fal"),
                                  shot("abandoned", "luma")],
                       budget={"max_usd": 5}, defaults={"retries": 0})
    out = tmp_path / "out"
    env = cli_env(emu, prefect_api, tmp_path, STORYREEL_JOB_DEADLINE_S="2.0")
    ran = storyreel("run", str(spec), "--out", str(out), env=env)  # in process: same command
    code, log = ran.returncode, ran.stdout + ran.stderr
    assert code == 1, log[-3000:]  # two shots are missing from the cut
    rows = {r["shot_id"]: r for r in cost_rows(out)}
    assert rows["done"]["status"] == "done" and rows["done"]["cost_source"] == "vendor"
    assert rows["unconfirmed"]["status"] == "unconfirmed"
    assert rows["abandoned"]["status"] == "abandoned"
    for sid in ("unconfirmed", "abandoned"):
        assert rows[sid]["at_risk"].lower() == "true"
        assert rows[sid]["cost_source"] == "reservation"
        assert Decimal(rows[sid]["actual_usd"]) == Decimal(rows[sid]["reserved_usd"]) \
            >= Decimal(rows[sid]["estimated_usd"]) > 0
    assert rows["done"]["at_risk"].lower() == "false"

    every = list(rows.values())
    at_risk = total([r for r in every if r["at_risk"].lower() == "true"])
    confirmed = total(every) - at_risk
    info = run_json(out)
    assert cents(info["total_usd"]) == cents(total(every))
    # the runway row is its bill (the vendor states it); nothing here is an estimate
    assert cents(info["confirmed_usd"]) == cents(confirmed) == cents(charged(emu, "runway"))
    assert info["estimated_spend_usd"] == 0
    assert cents(info["at_risk_usd"]) == cents(at_risk) == cents(
        sum(Decimal(rows[s]["reserved_usd"]) for s in ("unconfirmed", "abandoned")))
    spent = SPENT.findall(log)
    assert spent, log[-2000:]
    assert (cents(spent[-1][0]), cents(spent[-1][2])) == (cents(confirmed), cents(at_risk))

    from flows.cli.commands import main

    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "by_provider.csv", newline="") as fh:
        by_provider = list(csv.DictReader(fh))
    assert cents(sum(Decimal(r["actual_usd"]) for r in by_provider)) == cents(total(every))
    wait_idle(emu, "fal")  # the luma job never ends (and never bills)
    assert charged(emu, "fal") == cents("0.35")  # the job that answered 500 billed anyway
    assert charged(emu) <= total(every)


async def test_on_exhausted_stop_stops_later_submits_at_run_time(shot_run, emu_env,
                                                                 tmp_path: Path) -> None:
    """The plan fits the cap; a vendor billing over its estimate eats it mid-run; the next
    reservation refused stops the run: no later submit, even one that would still fit."""
    emu = emu_env
    emu.configure(latency=0.5, price_multiplier={"runway": 1.2})  # $0.60 estimate, $0.72 bill
    emu.inject("luma", "job", "fail", times=3)  # luma bills no failures
    shots = [shot("r", "runway", retries=0),
             {"id": "l", "prompt": "lighthouse", "provider": "luma", "model": "ray-2",
              "duration": 5, "retries": 2, "fallback": ["huggingface:wan-2.2-a14b"]}]
    spec = write_board(tmp_path, shots, budget={"max_usd": 1.15, "on_exhausted": "stop"})
    result, rows = await shot_run(spec, tmp_path / "out")
    wait_idle(emu)
    # luma ray-2 reserves $0.50 at 540p (its 5 s list price): refused once runway's $0.72 is
    # settled; the ~$0.30 fallback would still fit ($1.02), but the run has stopped
    assert emu.stats("huggingface")["submits"] == 0, rows
    refused = [r for r in rows if r["status"] == "skipped"]
    assert refused and all(r["failure_reason"].startswith("budget") for r in refused)
    assert total(rows) == charged(emu) == Decimal("0.72")
    # under `skip`, the same run does submit the fallback: the test can tell the two apart
    emu.reset()
    emu.configure(latency=0.5, price_multiplier={"runway": 1.2})
    emu.inject("luma", "job", "fail", times=3)
    spec = write_board(tmp_path, shots, budget={"max_usd": 1.15, "on_exhausted": "skip"})
    result, rows = await shot_run(spec, tmp_path / "out-skip")
    assert emu.stats("huggingface")["submits"] == 1, rows
