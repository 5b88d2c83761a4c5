"""Live progress of `storyreel run`: per-shot states, elapsed time, spend vs cap; in place on a
terminal, plain lines otherwise; Prefect's own log lines off the terminal unless -v."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from flows.run import progress
from flows.run.context import ShotEvent
from tests.storyboards import write_board


def _shots() -> list[dict[str, object]]:
    return [{"id": "intro", "prompt": "A kite", "takes": 2},
            {"id": "lamp", "prompt": "A lamp", "retries": 0}]


@pytest.mark.e2e
async def test_plain_lines_follow_every_shot_and_take(review_run, emu_env, tmp_path: Path) -> None:
    emu_env.inject("runway", "job", "policy", message="refused by the vendor")
    emu_env.configure(latency=0.6)
    spec = write_board(tmp_path, _shots(), budget={"max_usd": 4},
                       defaults={"provider": "runway", "model": "gen4.5", "duration": 2})
    buf = io.StringIO()
    progress.use(progress.Progress(stream=buf, live=False))
    try:
        await review_run(spec, tmp_path / "out")
    finally:
        progress.use(None)
    lines = buf.getvalue().splitlines()
    assert lines and all(re.match(r"\[ *\d+\.\ds\] \S+", ln) for ln in lines), lines

    def states(who: str) -> list[str]:
        return [ln.split(f"] {who}: ", 1)[1].split()[0] for ln in lines if f"] {who}: " in ln]

    # one of the three jobs is refused (whichever was submitted first); the rest go all the way
    finals = {who: states(who)[-1] for who in ("intro", "lamp")}
    assert "submitted" in states("lamp") and "submitted" in states("intro take 1")
    for who in ("intro take 1", "intro take 2", "lamp"):
        seen = states(who)
        assert seen[0] == "submitted", (who, seen)
        assert seen[-1] in ("conformed", "failed"), (who, seen)
        if seen[-1] == "conformed":
            assert seen.index("running") < seen.index("downloading") < seen.index("conformed")
    assert sorted(finals.values()) in (["done", "done"], ["done", "failed"])
    assert any("refused by the vendor" in ln for ln in lines)
    last = lines[-1]
    assert re.search(r"spent \$\d+\.\d\d \+ reserved \$0\.00 of \$4\.00", last), last


def test_the_table_shows_takes_vendor_progress_and_money() -> None:
    from rich.console import Console

    plan = types.SimpleNamespace(storyboard=types.SimpleNamespace(title="Board"), cap_usd=10.0,
                                 shots=[types.SimpleNamespace(shot_id=s, takes=t)
                                        for s, t in (("intro", 2), ("lamp", 1), ("sea", 1))])
    ledger = types.SimpleNamespace(spent_usd=1.5, reserved_usd=0.75,
                                   shot_spent_usd=lambda s: {"intro": 1.25}.get(s, 0.0))
    board = progress.Progress(stream=io.StringIO(), live=False)
    board.start(plan)
    board.bind(ledger)
    board.event(ShotEvent("intro", 1, "conformed", "runway:gen4.5"))
    board.event(ShotEvent("intro", 2, "running", "runway:gen4.5", 0.42))
    board.event(ShotEvent("lamp", 1, "failed", "content_policy: no"))
    board.event(ShotEvent("lamp", 0, "failed", "content_policy: no"))
    console = Console(record=True, width=110, file=io.StringIO())
    console.print(board)
    text = console.export_text()
    assert "Board  1/3 shots  spent $1.50 + reserved $0.75 of $10.00" in text
    assert re.search(r"intro +#1 conformed +#2 running 42% +\d+\.\ds +\$1\.25 +runway:gen4\.5", text)
    assert re.search(r"lamp +failed .*content_policy: no", text)
    assert re.search(r"sea +queued", text)


def _cli(spec: Path, out: Path, prefect_api: str, tmp_path: Path, *extra: str
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api,
           "STORYREEL_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec), "--out", str(out),
                           *extra], env=env, capture_output=True, text=True, timeout=300)


def test_cli_shows_progress_and_keeps_prefect_logs_off_the_terminal_unless_verbose(
        emu_env, prefect_api: str, tmp_path: Path) -> None:
    spec = write_board(tmp_path, [{"id": "a", "prompt": "kite"}, {"id": "b", "prompt": "lamp"}],
                       budget={"max_usd": 3},
                       defaults={"provider": "fal", "model": "kling-2.5-turbo-pro", "duration": 5})
    quiet = _cli(spec, tmp_path / "quiet", prefect_api, tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    # not a terminal: one plain line per change of state, each with the money against the cap
    for shot in ("a", "b"):
        assert re.search(rf"\] {shot}: submitted \(fal:kling-2.5-turbo-pro\) \| spent \$0\.00 "
                         rf"\+ reserved \$0\.\d\d of \$3\.00", quiet.stderr), quiet.stderr
        assert re.search(rf"\] {shot}: done ", quiet.stderr)
    assert "| INFO    |" not in quiet.stderr + quiet.stdout  # Prefect's lines stay off
    assert "review: " in quiet.stdout

    loud = _cli(spec, tmp_path / "loud", prefect_api, tmp_path, "-v")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "| INFO    | Flow run" in loud.stderr  # -v shows them
    assert re.search(r"\] a: cached ", loud.stderr)  # (the first run filled the cache)
