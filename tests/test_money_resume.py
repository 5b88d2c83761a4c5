"""Money across runs of one folder: the per-shot cap survives a rerun, a folder has
one owner at a time, and a resumed run sees the storyboard's edits."""

from __future__ import annotations

import re
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from tests.money_kit import charged, cli, cli_env, cost_rows, shot, total, wait_idle
from tests.storyboards import write_board

pytestmark = pytest.mark.e2e


async def test_per_shot_cap_holds_across_reruns_of_the_folder(shot_run, emu_env,
                                                              tmp_path: Path) -> None:
    """NanoGPT bills every accepted job, failed or not ($1.40 for 5 s of kling-video-v2 in the
    emulator's table). With a $2.00 per-shot cap one job fits, two do not: not in one run,
    and not in two runs of the same folder either."""
    emu, run = emu_env, shot_run
    emu.inject("nanogpt", "job", "fail", times=-1)
    spec = write_board(tmp_path, [shot("a", "nanogpt", retries=3)],
                       budget={"max_usd": 10, "max_usd_per_shot": 2.0, "on_exhausted": "skip"})
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert emu.stats("nanogpt")["jobs"] == 1 and charged(emu) == Decimal("1.4")
    assert rows[-1]["status"] == "skipped" and rows[-1]["failure_reason"].startswith("budget")
    for _ in range(2):  # the folder run again (after a crash, or by a person)
        result, rows = await run(spec, out)
        wait_idle(emu)
        assert charged(emu, "nanogpt") <= Decimal("2.0"), rows
        assert emu.stats("nanogpt")["jobs"] == 1
    assert total(rows) == charged(emu)


def _holder_pid(text: str) -> str | None:
    match = re.search(r"in use.*?pid\D*(\d+)|pid\D*(\d+).*?in use", text, re.S | re.I)
    return next((g for g in match.groups() if g), None) if match else None


def _board(tmp_path: Path, n: int = 3) -> Path:
    return write_board(tmp_path, [shot(f"s{i}", "fal") for i in range(n)],
                       budget={"max_usd": 5}, defaults={"retries": 0})


def test_two_runs_on_one_folder_never_submit_a_shot_twice(emu_env, prefect_api: str,
                                                         tmp_path: Path) -> None:
    emu = emu_env
    emu.configure(latency=3.0)
    spec, out = _board(tmp_path), tmp_path / "out"
    env = cli_env(emu, prefect_api, tmp_path)
    first = cli(env, "run", str(spec), "--out", str(out))
    second = cli(env, "run", str(spec), "--out", str(out))
    logs = {p.pid: p.communicate(timeout=300)[0] for p in (first, second)}
    wait_idle(emu)
    per_shot = Counter(j.request.get("prompt") for j in emu.jobs("fal"))
    assert per_shot and max(per_shot.values()) == 1, per_shot
    assert emu.stats("fal")["jobs"] == 3
    codes = sorted((p.returncode, p.pid) for p in (first, second))
    (winner_code, winner), (loser_code, loser) = codes
    assert (winner_code, loser_code) == (0, 2), logs
    assert "in use" in logs[loser] and _holder_pid(logs[loser]) == str(winner), logs[loser][-2000:]
    assert "Traceback" not in logs[loser]
    rows = cost_rows(out)
    assert sorted(r["shot_id"] for r in rows) == ["s0", "s1", "s2"]
    assert total(rows) == charged(emu)


def test_second_run_with_wait_runs_after_the_first(emu_env, prefect_api: str,
                                                   tmp_path: Path) -> None:
    emu = emu_env
    emu.configure(latency=2.0)
    spec, out = _board(tmp_path), tmp_path / "out"
    env = cli_env(emu, prefect_api, tmp_path)
    first = cli(env, "run", str(spec), "--out", str(out))
    deadline = time.monotonic() + 120
    while emu.stats("fal")["submits"] < 3:  # the first run holds the folder and has submitted
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = cli(env, "run", str(spec), "--out", str(out), "--wait")
    log1, _ = first.communicate(timeout=300)
    log2, _ = second.communicate(timeout=300)
    assert first.returncode == 0, log1[-3000:]
    assert second.returncode == 0, log2[-3000:]
    assert emu.stats("fal")["jobs"] == 3  # the second found every shot done
    assert total(cost_rows(out)) == charged(emu)


async def test_edited_shot_is_regenerated_when_the_folder_is_resumed(shot_run, emu_env,
                                                                     tmp_path: Path) -> None:
    emu, run = emu_env, shot_run
    shots = [shot(f"s{i}", "fal") for i in range(2)]
    spec = write_board(tmp_path, shots, budget={"max_usd": 5}, defaults={"retries": 0})
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert result["ok"] and emu.stats("fal")["jobs"] == 2
    shots[1]["prompt"] = "the same shot, at night"
    spec = write_board(tmp_path, shots, budget={"max_usd": 5}, defaults={"retries": 0})
    result, rows = await run(spec, out)  # the same folder: s0 resumes, s1 changed
    assert result["ok"]
    prompts = [j.request.get("prompt") for j in emu.jobs("fal")]
    assert len(prompts) == 3 and "the same shot, at night" in prompts[-1], prompts
    assert total(rows) == charged(emu)


async def test_local_placeholder_never_hides_the_paid_option_on_a_later_run(
        shot_run, emu_env, tmp_path: Path) -> None:
    emu, run = emu_env, shot_run
    board = [shot("a", "fal", retries=0, fallback=["local:animatic"])]
    spec = write_board(tmp_path, board, budget={"max_usd": 2})
    emu.inject("fal", "job", "fail")
    result, rows = await run(spec, tmp_path / "first")
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "failed"), ("local", "done")]
    # a later run (new folder, same clip cache): the vendor works again and is asked again
    result, rows = await run(spec, tmp_path / "second")
    assert emu.stats("fal")["jobs"] == 2, rows
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "done")], rows


async def test_a_paid_clip_missing_from_the_folder_is_fetched_again_not_paid_again(
        shot_run, emu_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder resumed where its downloads are gone (another worker's disk, a fresh
    container, a cleaned folder) and no clip cache has them: the vendor's result is fetched
    again; nothing is submitted or charged twice."""
    import shutil

    emu, run = emu_env, shot_run
    spec = write_board(tmp_path, [shot("a", "fal"), shot("b", "runway")],
                       budget={"max_usd": 5}, defaults={"retries": 0})
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert result["ok"] and [r["status"] for r in rows] == ["done", "done"]
    paid = charged(emu)
    before = {v: emu.stats(v)["downloads"] for v in ("fal", "runway")}
    for sub in ("raw", "clips"):
        shutil.rmtree(out / sub)
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "another-cache"))
    result, rows = await run(spec, out)
    assert result["ok"], result
    assert {v: emu.stats(v)["submits"] for v in ("fal", "runway")} == {"fal": 1, "runway": 1}
    assert {v: emu.stats(v)["downloads"] - before[v] for v in ("fal", "runway")} == \
        {"fal": 1, "runway": 1}  # each result downloaded once more
    assert charged(emu) == paid == total(rows)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all((out / "clips").iterdir())
