"""SIGKILL the real CLI at several points, run it again on the same folder: the emulator sees
each shot submitted once, and the cut is the same as an uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from flows.media.probe import probe
from tests.cli_kit import storyreel
from tests.storyboards import charged, cost_rows, total, write_board

pytestmark = pytest.mark.e2e
SHOTS = 4
# the jobs run until the test advances the emulator's clock: still running when the flow
# begins to poll them however slowly Prefect starts (the CLI submits before the flow starts,
# flows/run/early.py), finished at once when the test says so
LATENCY = 600.0


def board(folder: Path) -> Path:
    shots = [{"id": f"s{i}", "prompt": f"take {i}", "provider": "fal",
              "model": "kling-2.5-turbo-pro", "duration": 5} for i in range(SHOTS)]
    shots[1]["transition"] = {"kind": "crossfade", "duration": 0.5}
    return write_board(folder, shots, budget={"max_usd": 3}, defaults={"retries": 0})


def cli(spec: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "flows.cli", "run", str(spec), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # own group: ffmpeg dies too


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def journal_count(out: Path, where: str) -> int:
    db = out / "journal.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(f"SELECT count(*) FROM attempts WHERE {where}").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], limit: float = 180,
              kill: bool = True) -> None:
    """Wait for a state of the run (journal, emulator, files), then SIGKILL its process group
    (or, kill=False, just return)."""
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"run ended before the kill point:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)
    if not kill:
        return
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def frame_digest(path: Path) -> list[str]:
    with av.open(str(path)) as c:
        return [hashlib.md5(f.to_ndarray().tobytes()).hexdigest()
                for i, f in enumerate(c.decode(video=0)) if i % 6 == 0]


@pytest.fixture
def env(emu_env, prefect_api: str, tmp_path: Path) -> dict[str, str]:
    emu_env.configure(latency=LATENCY)
    return {**os.environ, "PREFECT_API_URL": prefect_api,
            "STORYREEL_CACHE_DIR": str(tmp_path / "cache"), "STORYREEL_POLL_FIRST_S": "0.2",
            "STORYREEL_POLL_MAX_S": "0.5"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, emulator, prefect_api: str) -> list[str]:
    """The frames of an uninterrupted run (its own cache, so it pays normally)."""
    tmp = tmp_path_factory.mktemp("reference")
    emulator.configure(latency=0.2)
    env = {**emulator.env(), "STORYREEL_CACHE_DIR": str(tmp / "cache"),
           "STORYREEL_POLL_FIRST_S": "0.05"}
    # in this process: the uninterrupted cut is the subject here, not the process
    ran = storyreel("run", str(board(tmp)), "--out", str(tmp / "out"), env=env)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    return frame_digest(tmp / "out" / "final.mp4")


def submitted(out: Path) -> bool:
    """Every shot's job is journaled as at the vendor (none has finished: the clock stands)."""
    return journal_count(out, "job_id IS NOT NULL AND status IN ('submitted', 'running')") == SHOTS


KILL_POINTS = {
    # every job id is journaled, no job has finished
    "after-submit": lambda emu, out: journal_count(out, "job_id IS NOT NULL") == SHOTS,
    # the journal has every job at the vendor and the flow is polling them
    "mid-poll": lambda emu, out: submitted(out) and emu.stats("fal")["polls"] >= SHOTS + 2,
    # a download request is hanging in the emulator (a `slow` fault fired)
    "mid-download": lambda emu, out: emu.stats("fal")["errors_injected"] >= 1,
    # every clip conformed, the cut not yet written
    "mid-assembly": lambda emu, out: len(list((out / "clips").glob("*.mov"))) == SHOTS,
}
# kill points past the vendors' work: the jobs finish once they are all journaled
AFTER_JOBS = ("mid-download", "mid-assembly")


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_pays_once(point: str, env: dict[str, str], emu_env, tmp_path: Path,
                                       reference: list[str]) -> None:
    emu = emu_env
    emu.configure(latency=LATENCY)
    if point == "mid-download":
        emu.inject("fal", "download", "slow", delay=3.0, times=SHOTS)
    spec, out = board(tmp_path), tmp_path / "out"
    proc = cli(spec, out, env)
    if point in AFTER_JOBS:
        kill_when(proc, lambda: submitted(out), kill=False)
        emu.advance(LATENCY)
    kill_when(proc, lambda: KILL_POINTS[point](emu, out))
    assert not (out / "final.mp4").exists() or point == "mid-assembly"

    emu.advance(LATENCY)  # whatever the killed run left at the vendor has finished
    log = finish(cli(spec, out, env))
    assert emu.stats("fal")["submits"] == SHOTS, log[-3000:]  # never twice
    rows = cost_rows(out)
    assert sorted(r["shot_id"] for r in rows) == [f"s{i}" for i in range(SHOTS)]
    assert {r["status"] for r in rows} == {"done"}
    assert total(rows) == charged(emu)
    info = probe(out / "final.mp4")
    assert abs(info.duration - (5 * SHOTS - 0.5)) <= 1 / 12 + 1e-6
    assert frame_digest(out / "final.mp4") == reference
