"""Shared fixtures: one vendor emulator per test session, reset for each test that uses it."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulator.core import Emulator
from tests.storyboards import cost_rows

pytest_plugins = ["tests.prefect_fixtures", "tests.review_kit", "tests.pg", "tests.s3_kit",
                  "tests.prefect_server_kit", "tests.schedule"]


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The session's emulator (every vendor module), on a free port of 127.0.0.1."""
    with Emulator() as emu:
        yield emu


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The session emulator with no jobs, counters or faults, and default latency/prices."""
    emulator.reset()
    return emulator


@pytest.fixture
def emu_env(monkeypatch: pytest.MonkeyPatch, emu: Emulator) -> Emulator:
    """`emu` plus its base URL overrides and fake keys in os.environ, and fast polling."""
    for key, value in emu.env().items():
        monkeypatch.setenv(key, value)
    # the adapters' default first poll is 1 s; the emulator's jobs finish in ~0.3 s
    monkeypatch.setenv("STORYREEL_POLL_FIRST_S", "0.05")
    monkeypatch.setenv("STORYREEL_POLL_MAX_S", "0.25")
    return emu


@pytest.fixture
def run(emu_env, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Render a storyboard through the Prefect flow; returns (result, rows)."""
    from flows.orchestration.flow import render_storyboard

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.2)

    async def go(spec: Path, out: Path, **kw: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
        result = await render_storyboard(storyboard=str(spec), out=str(out), **kw)
        return result, cost_rows(out)

    return go


@pytest.fixture
def shot_run(emu_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Like `run`, without Prefect and without the finish (tests/shot_kit.py): for money
    rules of the shot code, whose flow-level twin stays on `run`."""
    from tests.shot_kit import render_shots

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.2)
    return render_shots


# -- where the suite's time goes ----------------------------------------------------------------
# STORYREEL_TEST_TIMELINE=DIR writes one JSON line per test to DIR/<worker>.jsonl: when it ran
# and the CPU it used, its own and its waited-for children's (CLI runs, ffmpeg, servers stopped
# in it), which wall times on shared cores do not show.

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    folder = os.environ.get("STORYREEL_TEST_TIMELINE")
    if not folder:
        yield
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    t0, own0, kids0 = time.time(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    yield
    line = {"test": item.nodeid, "worker": worker, "start": t0, "wall": time.time() - t0,
            "cpu": _cpu(resource.RUSAGE_SELF) - own0,
            "children": _cpu(resource.RUSAGE_CHILDREN) - kids0}
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{worker}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
