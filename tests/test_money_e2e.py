"""The three promises through the shot code and the emulator: never over the cap, never pay
twice, every cent reported. Where Prefect is not the subject the shots run on a RunContext
(`shot_run`, tests/shot_kit.py); one case of each concern goes through the real flow (`run`)."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.storyboards import charged, total, write_board

pytestmark = pytest.mark.e2e


@pytest.fixture
def render(request: pytest.FixtureRequest) -> Any:
    """`run` (the Prefect flow) or `shot_run`, as the test's `through` parameter says; set up
    here, not inside the async test (Prefect's harness must not start in the test's context)."""
    return request.getfixturevalue("run" if request.getfixturevalue("through") == "flow"
                                   else "shot_run")


@pytest.mark.parametrize("seed, through, n", [(1, "flow", 8), (1, "shots", 24), (2, "shots", 24),
                                              (3, "shots", 24)])
async def test_cap_holds_under_concurrency_with_random_failures(
        render, emu_env, tmp_path: Path, seed: int, through: str, n: int) -> None:
    """24 shots on the shot code; 8 through the flow (its finish makes a slate per missing
    shot, which is not the subject here). The cap binds: some shots are refused."""
    rng = random.Random(seed)
    emu = emu_env
    emu.configure(price_multiplier={"runway": rng.uniform(0.5, 1.0)})
    for vendor in ("fal", "nanogpt", "runway"):
        for _ in range(rng.randint(0, 4)):
            emu.inject(vendor, "job", rng.choice(["fail", "policy"]))
    options = [("fal", "kling-3-pro", lambda: rng.randint(3, 15)),
               ("nanogpt", "kling-video-v2", lambda: rng.choice([5, 10])),
               ("runway", "gen4.5", lambda: rng.randint(2, 10))]
    shots = []
    for i in range(n):
        provider, model, duration = rng.choice(options)
        other = rng.choice([o for o in options if o[0] != provider])
        shots.append({"id": f"s{i:02d}", "prompt": f"shot {i}", "provider": provider,
                      "model": model, "duration": duration(), "retries": rng.randint(0, 1),
                      "fallback": [f"{other[0]}:{other[1]}"]})
    # a fallback must accept its shot's duration (planning refuses it otherwise): keep fits
    from flows.storyboard.plan import make_plan
    from providers.errors import SpecError

    for s in shots:
        try:
            make_plan(write_board(tmp_path / "fits", [s]))
        except SpecError:
            s["fallback"] = []
    assert any(s["fallback"] for s in shots)
    cap = Decimal(6 * n) / 24  # $6.00 for 24 shots: it binds
    spec = write_board(tmp_path, shots, budget={"max_usd": float(cap), "on_exhausted": "skip"},
                       title=f"cap {seed}")
    result, rows = await render(spec, tmp_path / "out")

    assert charged(emu) <= cap  # what the vendors actually billed
    assert total(rows) == charged(emu)  # every cent reported, to the cent
    for vendor in ("fal", "nanogpt", "runway"):
        assert total([r for r in rows if r["provider"] == vendor]) == charged(emu, vendor), vendor
    assert emu.stats()["total"]["submits"] == len([r for r in rows if r["job_id"]])
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and all(r["failure_reason"].startswith("budget") for r in skipped)
    assert {r["shot_id"] for r in rows} == {s["id"] for s in shots}


async def test_dropped_submit_is_unconfirmed_and_never_resubmitted(shot_run, emu_env,
                                                                   tmp_path: Path) -> None:
    run = shot_run
    emu = emu_env
    spec = write_board(tmp_path, [{"id": "a", "prompt": "kite", "provider": "fal",
                                   "model": "kling-2.5-turbo-pro", "duration": 5}],
                       budget={"max_usd": 2})
    emu.inject("fal", "submit", "drop_response")
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert not result["ok"] and result["failed"] == ["a"]
    assert emu.stats("fal")["submits"] == 1
    [row] = rows
    # held at its reservation (fal's live price here: no margin on a vendor's own price)
    assert row["status"] == "unconfirmed"
    assert Decimal(row["reserved_usd"]) >= Decimal(row["estimated_usd"]) > 0
    assert "not resent" in row["failure_reason"]
    # running the same folder again leaves it alone ...
    result, rows = await run(spec, out)
    assert emu.stats("fal")["submits"] == 1 and not result["ok"]
    # ... unless a person says so
    result, rows = await run(spec, out, resubmit_unconfirmed=True)
    assert result["ok"] and emu.stats("fal")["submits"] == 2
    # the dropped job was charged, and it is reported: at risk at its reservation (the
    # submit has no answer to ask about), never less than the vendor billed
    risky = [r for r in rows if r["at_risk"] == "True"]
    assert [r["status"] for r in risky] == ["unconfirmed"]
    assert total(rows) >= charged(emu)
    assert total(rows) - total(risky) + total(risky, "estimated_usd") == charged(emu)


async def test_editing_one_shot_pays_for_that_shot_only(shot_run, emu_env,
                                                       tmp_path: Path) -> None:
    emu, run = emu_env, shot_run
    shots = [{"id": f"s{i}", "prompt": f"take {i}", "provider": "fal",
              "model": "kling-2.5-turbo-pro", "duration": 5} for i in range(3)]
    spec = write_board(tmp_path, shots, budget={"max_usd": 5})
    await run(spec, tmp_path / "first")
    assert emu.stats("fal")["submits"] == 3
    shots[1]["prompt"] = "take 1, but at night"
    spec = write_board(tmp_path, shots, budget={"max_usd": 5})
    result, rows = await run(spec, tmp_path / "second")
    assert result["ok"]
    assert emu.stats("fal")["submits"] == 4
    by_shot = {r["shot_id"]: r for r in rows}
    assert by_shot["s1"]["status"] == "done" and by_shot["s1"]["cache_hit"] == "False"
    for sid in ("s0", "s2"):
        assert by_shot[sid]["status"] == "cached" and by_shot[sid]["cache_hit"] == "True"
        assert Decimal(by_shot[sid]["actual_usd"]) == 0
    # --regenerate pays again for exactly the named shot
    await run(spec, tmp_path / "third", regenerate=["s2"])
    assert emu.stats("fal")["submits"] == 5


async def test_fallback_goes_to_the_next_affordable_option(shot_run, emu_env,
                                                          tmp_path: Path) -> None:
    emu, run = emu_env, shot_run
    emu.inject("fal", "job", "fail", message="GPU fell over")
    spec = write_board(tmp_path, [{
        "id": "a", "prompt": "kite", "provider": "fal", "model": "kling-2.5-turbo-pro",
        "duration": 5, "retries": 0,
        "fallback": ["runway:gen4.5", "luma:ray-flash-2"]}],
        budget={"max_usd": 0.5, "on_exhausted": "skip"}, output={"size": "720p", "fps": 12})
    result, rows = await run(spec, tmp_path / "out")
    assert result["ok"]
    assert [(r["provider"], r["status"]) for r in rows] == [
        ("fal", "failed"), ("runway", "skipped"), ("luma", "done")]
    assert "GPU fell over" in rows[0]["failure_reason"]
    assert rows[1]["failure_reason"].startswith("budget")  # $0.60 did not fit in $0.50
    assert emu.stats("runway")["submits"] == 0
    assert total(rows) == charged(emu) == Decimal("0.4")


async def test_content_policy_is_not_retried_on_the_same_vendor(run, emu_env,
                                                               tmp_path: Path) -> None:
    emu = emu_env
    emu.inject("fal", "job", "policy")
    spec = write_board(tmp_path, [{"id": "a", "prompt": "kite", "provider": "fal",
                                   "model": "kling-2.5-turbo-pro", "duration": 5, "retries": 3,
                                   "fallback": ["local:animatic"]}], budget={"max_usd": 2})
    result, rows = await run(spec, tmp_path / "out")
    assert result["ok"]
    assert emu.stats("fal")["submits"] == 1
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "failed"), ("local", "done")]
    assert rows[0]["failure_reason"].startswith("content_policy")


async def test_job_past_its_deadline_is_cancelled_and_not_charged(
        shot_run, emu_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu, run = emu_env, shot_run
    monkeypatch.setenv("STORYREEL_JOB_DEADLINE_S", "1.0")
    emu.inject("fal", "job", "never")
    spec = write_board(tmp_path, [{"id": "a", "prompt": "kite", "provider": "fal",
                                   "model": "kling-2.5-turbo-pro", "duration": 5, "retries": 0,
                                   "fallback": ["local:animatic"]}], budget={"max_usd": 2})
    result, rows = await run(spec, tmp_path / "out")
    assert result["ok"]
    assert rows[0]["status"] == "canceled" and rows[0]["failure_reason"].startswith("timeout")
    assert emu.stats("fal")["cancels"] == 1 and charged(emu) == 0
    assert total(rows) == 0


async def test_on_exhausted_stop_stops_new_submissions(run, emu_env, tmp_path: Path) -> None:
    emu = emu_env
    shots = [{"id": f"s{i}", "prompt": f"take {i}", "provider": "fal",
              "model": "kling-2.5-turbo-pro", "duration": 5} for i in range(4)]
    spec = write_board(tmp_path, shots, budget={"max_usd": 0.8, "on_exhausted": "stop"},
                       defaults={"retries": 0})
    from providers.errors import BudgetError

    with pytest.raises(BudgetError, match="exceeds budget.max_usd"):
        await run(spec, tmp_path / "out")  # planning refuses $1.40 against $0.80 up front
    assert emu.stats("fal")["submits"] == 0
    # with the cap raised by the plan check but a vendor overrun eating it, stop holds
    emu.configure(price_multiplier={"fal": 1.0})
    spec = write_board(tmp_path, shots[:2], budget={"max_usd": 0.7, "on_exhausted": "stop",
                                                    "estimate_margin": 0})
    result, rows = await run(spec, tmp_path / "out2")
    assert result["ok"] and charged(emu) == Decimal("0.7")
