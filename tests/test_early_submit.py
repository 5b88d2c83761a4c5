"""Early submits (flows/run/early.py): the CLI's first attempts count exactly as the flow's own,
through the real flow and the emulator; and the CLI path end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.money.journal import Journal
from flows.run.early import submit_early
from flows.run.session import RunOptions, ledger_for
from flows.storyboard.plan import make_plan
from tests.storyboards import charged, cost_rows, total, write_board

pytestmark = pytest.mark.e2e


def fal_shot(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"s{i}", "prompt": f"take {i}", "provider": "fal",
            "model": "kling-2.5-turbo-pro", "duration": 5, **extra}


@pytest.fixture
def render(emu_env, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What `storyreel run` does: early submits, then the flow on the same folder."""
    from flows.orchestration.flow import render_storyboard

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.3)

    async def go(spec: Path, out: Path) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
        early = await submit_early(make_plan(spec), out, RunOptions())
        await render_storyboard(storyboard=str(spec), out=str(out))
        return early, cost_rows(out)

    return go


@pytest.mark.parametrize("retries, fal_submits", [(0, 2), (1, 3)])
async def test_an_early_attempt_counts_against_retries(render, emu_env, tmp_path: Path,
                                                       retries: int, fal_submits: int) -> None:
    emu_env.inject("fal", "job", "fail")  # the first job created fails at the vendor
    spec = write_board(tmp_path, [fal_shot(0, retries=retries, fallback=["local:animatic"]),
                                  fal_shot(1, retries=retries, fallback=["local:animatic"])],
                       budget={"max_usd": 5})
    early, rows = await render(spec, tmp_path / "out")
    assert sorted(early) == ["s0", "s1"] and early == {"s0": [], "s1": []}
    # retries: 0 -> the failed shot goes straight to its fallback; 1 -> one more fal job
    assert emu_env.stats("fal")["submits"] == fal_submits
    assert [r["status"] for r in rows].count("done") == 2
    assert total(rows) == charged(emu_env)


async def test_content_policy_on_an_early_attempt_is_not_retried(render, emu_env,
                                                                 tmp_path: Path) -> None:
    emu_env.inject("fal", "job", "policy")
    spec = write_board(tmp_path, [fal_shot(0, retries=2, fallback=["local:animatic"])],
                       budget={"max_usd": 5})
    _, rows = await render(spec, tmp_path / "out")
    assert emu_env.stats("fal")["submits"] == 1
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "failed"), ("local", "done")]


async def test_limited_and_cached_shots_are_left_to_the_flow(render, emu_env,
                                                             tmp_path: Path) -> None:
    shots = [fal_shot(0), {"id": "r", "prompt": "p", "provider": "runway", "model": "gen4.5",
                           "duration": 5}]
    spec = write_board(tmp_path, shots, budget={"max_usd": 5}, limits={"runway": 1})
    early, _ = await render(spec, tmp_path / "first")
    assert list(early) == ["s0"]  # runway has a `limits:` entry: only the flow may submit
    early, rows = await render(spec, tmp_path / "second")  # same shots: both cached
    assert early == {} and {r["status"] for r in rows} == {"cached"}
    assert emu_env.stats("fal")["submits"] == 1 and emu_env.stats("runway")["submits"] == 1


def test_jobs_at_a_vendor_are_held_before_anything_reserves(tmp_path: Path) -> None:
    """A resumed (or early-submitted) job's money is held when the ledger is made, so another
    shot cannot reserve it first."""
    spec = write_board(tmp_path, [fal_shot(0), fal_shot(1)], budget={"max_usd": 2})
    plan = make_plan(spec)
    with Journal(tmp_path / "journal.sqlite") as journal:
        row = journal.intent(shot_id="s0", attempt=1, provider="fal", model="kling-2.5-turbo-pro",
                             cache_key="k", estimated_usd=1.5, reserved_usd=1.5)
        journal.submitted(row, "job-1", {})
        ledger = ledger_for(plan, journal)
    assert ledger.remaining_usd == pytest.approx(0.5)
    held = ledger.held(row)
    assert held is not None and ledger.held(row) is None  # handed over once
    ledger.settle(held, 1.25)
    assert ledger.spent_usd == pytest.approx(1.25) and ledger.remaining_usd == pytest.approx(0.75)


def test_cli_submits_before_the_flow_and_pays_once(emu_env, prefect_api: str,
                                                   tmp_path: Path) -> None:
    emu_env.configure(latency=1.0)
    spec = write_board(tmp_path, [fal_shot(0), fal_shot(1)], budget={"max_usd": 5})
    env = {**os.environ, "PREFECT_API_URL": prefect_api,
           "STORYREEL_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 shot(s) submitted before the flow started" in proc.stderr
    assert emu_env.stats("fal")["submits"] == 2
    rows = cost_rows(out)
    assert [r["status"] for r in rows] == ["done", "done"] and total(rows) == charged(emu_env)
    assert "test-fal-key" not in proc.stderr + proc.stdout
