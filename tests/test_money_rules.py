"""Money rules across sessions of one run folder: edits, resumes, cached placeholders, prices,
one owner per folder. Each test failed on the code before these rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.storyboards import charged, total, write_board

FAL = {"provider": "fal", "model": "kling-2.5-turbo-pro", "duration": 5}


@pytest.mark.e2e
async def test_an_edited_shot_is_regenerated_on_the_same_folder(run, emu_env, tmp_path) -> None:
    emu = emu_env
    shots = [{"id": "a", "prompt": "a kite", **FAL}, {"id": "b", "prompt": "a boat", **FAL}]
    spec = write_board(tmp_path, shots, budget={"max_usd": 5})
    out = tmp_path / "out"
    result, _ = await run(spec, out)
    assert result["ok"] and emu.stats("fal")["submits"] == 2
    shots[1]["prompt"] = "a boat at night"
    spec = write_board(tmp_path, shots, budget={"max_usd": 5})
    result, rows = await run(spec, out)
    assert result["ok"]
    assert emu.stats("fal")["submits"] == 3  # only the edited shot, once
    prompts = [str(j.request.get("prompt", "")) for j in emu.jobs("fal")]
    assert sum("at night" in p for p in prompts) == 1
    b_rows = [r for r in rows if r["shot_id"] == "b"]
    assert [r["status"] for r in b_rows] == ["done", "done"]
    assert total(rows) == charged(emu)


@pytest.mark.e2e
async def test_a_job_abandoned_at_its_deadline_keeps_its_money_and_settles_later(
        run, emu_env, tmp_path, monkeypatch) -> None:
    """Luma cannot cancel: the job we stop waiting for goes on and bills. It is reported at its
    estimate, held against the cap, and the next session of the folder settles it - here after
    the shot was edited, so the old job is settled beside the new one."""
    emu = emu_env
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "1.0")
    emu.configure(latency=60.0)  # running past the deadline until the test moves the clock
    shot = {"id": "a", "prompt": "a kite", "provider": "luma", "model": "ray-flash-2",
            "duration": 5, "retries": 0}
    spec = write_board(tmp_path, [shot], budget={"max_usd": 0.5},
                       output={"size": "720p", "fps": 12})
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert not result["ok"]
    [row] = rows
    assert row["status"] == "abandoned" and row["at_risk"] == "True"
    assert Decimal(row["actual_usd"]) == Decimal(row["reserved_usd"]) \
        >= Decimal(row["estimated_usd"]) > 0  # held at its reservation
    assert Decimal(str(result["at_risk_usd"])) == Decimal(row["actual_usd"])
    assert charged(emu, "luma") == 0
    emu.advance(60.0)  # the vendor finishes the job we walked away from, and bills it
    assert charged(emu, "luma") > 0
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "30")
    emu.configure(latency=0.2)
    shot["prompt"] = "a kite at dawn"
    spec = write_board(tmp_path, [shot], budget={"max_usd": 1.0},
                       output={"size": "720p", "fps": 12})
    result, rows = await run(spec, out)
    assert result["ok"]
    assert emu.stats("luma")["submits"] == 2
    first = rows[0]
    assert first["status"] in ("succeeded", "downloaded") and first["at_risk"] == "False"
    assert total(rows) == charged(emu)  # every cent, settled at the real outcome
    assert result["at_risk_usd"] == 0


@pytest.mark.e2e
async def test_retry_count_and_per_shot_cap_survive_a_rerun(shot_run, emu_env, tmp_path) -> None:
    """NanoGPT bills failed jobs: a rerun of the folder must not grant fresh retries or a
    fresh per-shot allowance."""
    emu, run = emu_env, shot_run
    emu.inject("nanogpt", "job", "fail", times=-1)
    shot = {"id": "a", "prompt": "a kite", "provider": "nanogpt", "model": "kling-video-v2",
            "duration": 5, "retries": 1}
    spec = write_board(tmp_path, [shot], budget={"max_usd": 20, "max_usd_per_shot": 3.0})
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert not result["ok"]
    submits = emu.stats("nanogpt")["submits"]
    assert submits >= 1
    first_charge = charged(emu, "nanogpt")
    result, rows = await run(spec, out)
    assert emu.stats("nanogpt")["submits"] == submits  # no fresh tries on a rerun
    assert charged(emu, "nanogpt") == first_charge <= Decimal("3.0")
    assert total(rows) == charged(emu)


@pytest.mark.e2e
async def test_the_local_animatic_never_stands_in_for_a_paid_option_later(
        shot_run, emu_env, tmp_path) -> None:
    emu, run = emu_env, shot_run
    emu.inject("fal", "job", "fail")
    shot = {"id": "a", "prompt": "a kite", **FAL, "retries": 0, "fallback": ["local:animatic"]}
    spec = write_board(tmp_path, [shot], budget={"max_usd": 2})
    result, rows = await run(spec, tmp_path / "first")
    assert result["ok"] and [r["provider"] for r in rows] == ["fal", "local"]
    # a new folder, same cache: the paid option is tried again, not the cached placeholder
    result, rows = await run(spec, tmp_path / "second")
    assert result["ok"] and emu.stats("fal")["submits"] == 2
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "done")]
    # and its clip is what later runs reuse
    result, rows = await run(spec, tmp_path / "third")
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "cached")]
    assert emu.stats("fal")["submits"] == 2


@pytest.mark.e2e
async def test_a_resubmitted_intent_stays_priced(shot_run, emu_env, tmp_path) -> None:
    """A run killed between intent and answer leaves an intent row; resumed with
    --resubmit-unconfirmed, that row is still reported at its estimate (it may have billed)."""
    from types import SimpleNamespace

    from flows.money.journal import Journal
    from flows.run.context import clip_key
    from flows.storyboard.plan import make_plan

    emu = emu_env
    spec = write_board(tmp_path, [{"id": "a", "prompt": "a kite", **FAL}], budget={"max_usd": 2})
    out = tmp_path / "out"
    plan = make_plan(spec)
    shot = plan.shots[0]
    key = clip_key(SimpleNamespace(plan=plan), shot, shot.options[0])  # type: ignore[arg-type]
    with Journal(out / "journal.sqlite") as j:
        j.intent(shot_id="a", attempt=1, provider="fal", model="kling-2.5-turbo-pro",
                 cache_key=key, estimated_usd=0.35, reserved_usd=0.35)
    result, rows = await shot_run(spec, out, resubmit_unconfirmed=True)
    assert result["ok"]
    assert rows[0]["status"] == "unconfirmed" and rows[0]["actual_usd"] == "0.35"
    assert rows[0]["at_risk"] == "True"
    assert Decimal(str(result["total_usd"])) == total(rows) == Decimal("0.35") + charged(emu)


# -- prices and caps are validated -------------------------------------------------------------

@pytest.mark.parametrize("pricing, budget, place", [
    ({"fal:kling-2.5-turbo-pro": {}}, {"max_usd": 5}, "pricing.fal:kling-2.5-turbo-pro"),
    ({"fal:kling-2.5-turbo-pro": {"per_second": 0}}, {"max_usd": 5},
     "pricing.fal:kling-2.5-turbo-pro"),
    ({"fal:kling-2.5-turbo-pro": {"per_second": -0.1}}, {"max_usd": 5},
     "pricing.fal:kling-2.5-turbo-pro"),
    ({"fal:kling-2.5-turbo-pro": {"per_video": float("nan")}}, {"max_usd": 5},
     "pricing.fal:kling-2.5-turbo-pro"),
    ({}, {"max_usd": float("inf")}, "budget.max_usd"),
    ({}, {"max_usd": float("nan")}, "budget.max_usd"),
    ({}, {"max_usd": -1}, "budget.max_usd"),
    ({}, {"max_usd_per_shot": float("inf")}, "budget.max_usd_per_shot"),
])
def test_bad_prices_and_caps_are_spec_errors(tmp_path, pricing, budget, place) -> None:
    from flows.storyboard.plan import make_plan
    from providers.errors import SpecError

    spec = write_board(tmp_path, [{"id": "a", "prompt": "a kite", **FAL}], budget=budget,
                       pricing=pricing)
    with pytest.raises(SpecError) as err:
        make_plan(spec)
    assert any(p.startswith(place) for p, _ in err.value.issues), err.value.issues


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "abc"])
def test_budget_flag_is_checked_without_traceback(tmp_path, value, capsys) -> None:
    """The command in process: an exception escaping main() fails the test as a traceback."""
    from flows.cli.commands import main

    spec = write_board(tmp_path, [{"id": "a", "prompt": "a kite", "provider": "local"}])
    try:
        code = main(["plan", str(spec), "--budget", value])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--budget" in err


# -- one owner per run folder --------------------------------------------------------------------

def test_a_run_folder_has_one_owner(tmp_path) -> None:
    from flows.run import lock as runlock
    from providers.errors import BusyError

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path\n"
         "from flows.run import lock as runlock\n"
         "with runlock.own(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(30)",
         str(out)], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError) as err:
            with runlock.own(out):
                pass
        assert f"pid {holder.pid}" in str(err.value)
        info = json.loads((out / ".lock").read_text())
        assert info["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    with runlock.own(out), runlock.own(out):  # free again (the kernel dropped it), re-entrant
        pass


def test_default_run_folders_never_collide(tmp_path, monkeypatch) -> None:
    from flows.run.session import run_dir_for
    from flows.storyboard.plan import make_plan

    monkeypatch.chdir(tmp_path)
    spec = write_board(tmp_path, [{"id": "a", "prompt": "a kite", "provider": "local"}])
    plan = make_plan(spec)
    dirs = {run_dir_for(plan, None) for _ in range(20)}  # all within the same second
    assert len(dirs) == 20 and all(d.is_dir() for d in dirs)
