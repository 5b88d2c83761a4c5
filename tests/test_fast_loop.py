"""The edit loop: a finished folder with an unchanged storyboard is "up to date" without
touching a vendor, ffmpeg or Prefect; an edited shot is the only one generated again; an
unchanged cut is not joined again; storyreel's background Prefect server starts once, is
reused, and stops (flows/run/uptodate.py, flows/orchestration/server.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flows.media.ffmpeg_exec import ffmpeg_exe
from tests.emulator.core import Emulator

ROOT = Path(__file__).resolve().parent.parent
SHOTS = 3


def board(path: Path, prompts: dict[int, str] | None = None, transition: str = "crossfade",
          fit: str = "pad", budget: float = 50) -> Path:
    """SHOTS fal shots at 320x180; a transition into the second shot."""
    shots: list[dict[str, Any]] = [{"id": f"s{i}", "prompt": (prompts or {}).get(i, f"shot {i}")}
                                   for i in range(SHOTS)]
    shots[0]["transition"] = transition
    data = {"version": 1, "title": "fast loop", "output": {"size": "320x180", "fps": 24, "fit": fit},
            "budget": {"max_usd": budget}, "defaults": {"provider": "fal", "duration": 5},
            "shots": shots}
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def ffmpeg_shim(folder: Path) -> tuple[Path, Path]:
    """An ffmpeg that records its argv (one JSON line per call), then runs the real one."""
    log = folder / "ffmpeg-calls.jsonl"
    shim = folder / "ffmpeg-shim.py"
    shim.write_text(
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({ffmpeg_exe()!r}, [{ffmpeg_exe()!r}, *sys.argv[1:]])\n")
    exe = folder / "ffmpeg"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {shim} \"$@\"\n")
    exe.chmod(0o755)
    return exe, log


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def dead_api() -> str:
    """A Prefect API URL nobody answers: a run that needs Prefect fails against it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


# Runs the CLI in-process and reports which heavy modules it imported.
PROBE = (
    "import json, sys\n"
    "from flows.cli.commands import main\n"
    "rc = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'pandas', 'av'))\n"
    "print('MODULES ' + json.dumps(heavy))\n"
    "sys.exit(rc)\n"
)


class Loop:
    """One run folder, rendered once for the module, and the commands that run it again."""

    def __init__(self, tmp: Path, emulator: Emulator, prefect_api: str) -> None:
        self.tmp, self.emu = tmp, emulator
        self.out = tmp / "out"
        self.current = tmp / "board.yaml"  # the storyboard of the folder's last run
        self.ffmpeg, self.log = ffmpeg_shim(tmp)
        self.env = {**os.environ, **emulator.env(), "PREFECT_API_URL": prefect_api,
                    "STORYREEL_CACHE_DIR": str(tmp / "cache"), "FFMPEG_BINARY": str(self.ffmpeg),
                    "STORYREEL_POLL_FIRST_S": "0.05", "STORYREEL_POLL_MAX_S": "0.25",
                    "STORYREEL_SERVER": "ephemeral", "STORYREEL_HOME": str(tmp / "home"),
                    "PYTHONPATH": str(ROOT)}

    def run(self, spec: Path, *extra: str, api: str | None = None,
            probe: bool = False) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if api is not None:
            env["PREFECT_API_URL"] = api
        args = ["run", str(spec), "--out", str(self.out), *extra]
        cmd = [sys.executable, "-c", PROBE, *args] if probe else \
            [sys.executable, "-m", "flows.cli", *args]
        self.emu.reset()
        self.emu.configure(latency=0.3)
        self.log.unlink(missing_ok=True)
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            self.current = spec
        return proc

    def final_stamp(self) -> int:
        return (self.out / "final.mp4").stat().st_mtime_ns


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator, prefect_api: str) -> Loop:
    lp = Loop(tmp_path_factory.mktemp("loop"), emulator, prefect_api)
    first = lp.run(board(lp.tmp / "board.yaml"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert lp.emu.stats("fal")["submits"] == SHOTS
    return lp


def test_noop_rerun_touches_no_vendor_ffmpeg_or_prefect(loop: Loop) -> None:
    stamp = loop.final_stamp()
    # a dead PREFECT_API_URL: a run that started a flow would fail
    proc = loop.run(loop.tmp / "board.yaml", api=dead_api(), probe=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"up to date: {loop.out / 'final.mp4'}" in proc.stdout
    stats = loop.emu.stats()["total"]
    assert stats["requests"] == 0 and stats["submits"] == 0
    assert calls(loop.log) == []
    assert loop.final_stamp() == stamp
    heavy = json.loads(proc.stdout.split("MODULES ", 1)[1])
    assert heavy == [], heavy


def test_noop_check_is_exact(loop: Loop) -> None:
    """Anything the cut depends on makes it not up to date (checked without running)."""
    from flows.run.uptodate import check
    from flows.storyboard.plan import make_plan

    spec = loop.tmp / "board.yaml"
    assert check(make_plan(spec), loop.out).final is not None
    other = loop.tmp / "variants"
    other.mkdir(exist_ok=True)
    assert check(make_plan(board(other / "a.yaml", {2: "shot 2, at night"})), loop.out).final is None
    assert check(make_plan(board(other / "b.yaml", transition="fade_black")), loop.out).final is None
    assert check(make_plan(board(other / "c.yaml", fit="crop")), loop.out).final is None
    # money settings are not on screen
    assert check(make_plan(board(other / "d.yaml", budget=99)), loop.out).final is not None
    review = loop.out / "review.yaml"
    review.write_text("shots: {s1: {rejected: [1]}}\n")  # a person rejected s1: redo it
    try:
        assert check(make_plan(spec), loop.out).final is None
    finally:
        review.unlink()
    final = loop.out / "final.mp4"
    os.utime(final, ns=(final.stat().st_atime_ns, final.stat().st_mtime_ns + 10**9))
    try:
        assert check(make_plan(spec), loop.out).final is None  # final.mp4 changed since
    finally:
        os.utime(final, ns=(final.stat().st_atime_ns, final.stat().st_mtime_ns - 10**9))
    assert check(make_plan(spec), loop.out).final is not None


def test_unchanged_cut_is_not_joined_again(loop: Loop) -> None:
    """finish() on the same clips and settings keeps final.mp4 (no ffmpeg for the cut)."""
    from flows.money.journal import Journal
    from flows.run.context import ShotResult
    from flows.run.session import finish, ledger_for
    from flows.storyboard.plan import make_plan

    plan = make_plan(loop.current)
    stamp = loop.final_stamp()
    journal = Journal(loop.out / "journal.sqlite")
    try:
        results = []
        for s in plan.shots:
            row = journal.attempts(s.shot_id)[-1]
            assert row is not None and row.status == "done"
            results.append(ShotResult(s.shot_id, "done", conformed=Path(row.conformed_path or "")))
        asyncio.run(finish(plan, loop.out, journal, ledger_for(plan, journal), results,
                           contact_sheet=False))
    finally:
        journal.close()
    assert loop.final_stamp() == stamp


def test_transition_change_joins_again_without_regenerating(loop: Loop) -> None:
    stamp = loop.final_stamp()
    spec = board(loop.tmp / "fade.yaml", transition="fade_black")
    proc = loop.run(spec)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert loop.emu.stats("fal")["submits"] == 0
    argvs = calls(loop.log)
    assert not any("/raw/" in " ".join(a) for a in argvs), "a clip was conformed again"
    assert any("concat" in a for a in argvs), "the cut was not joined again"
    assert loop.final_stamp() != stamp
    again = loop.run(spec, api=dead_api())
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-3000:]


def test_edited_shot_alone_is_generated_again(loop: Loop) -> None:
    """Same --out, one prompt edited: one paid job, one conform, a new cut."""
    stamp = loop.final_stamp()
    record = loop.out / "cut.json"
    before = json.loads(record.read_text())["key"] if record.exists() else None
    spec = board(loop.tmp / "edited.yaml", {1: "shot 1, now in the rain"}, transition="fade_black")
    proc = loop.run(spec)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert loop.emu.stats("fal")["submits"] == 1
    # sent before Prefect started (flows/run/early.py), although the shot has attempts here
    assert "1 shot(s) submitted before the flow started" in proc.stderr
    # at most s1's conform (the emulator serves equal bytes, which conform's cache may know)
    conforms = [a for a in calls(loop.log) if any("/raw/" in x for x in a)]
    assert all(any("/raw/s1-" in x for x in a) for a in conforms) and len(conforms) <= 1
    from flows.money.journal import Journal

    (job,) = loop.emu.jobs("fal")
    with Journal(loop.out / "journal.sqlite") as j:
        latest = {s: j.attempts(s)[-1] for s in ("s0", "s1", "s2")}
    assert latest["s1"] is not None and latest["s1"].job_id == job.id
    assert all(r is not None and r.job_id != job.id for s, r in latest.items() if s != "s1")
    assert loop.final_stamp() != stamp
    assert before is not None and json.loads(record.read_text())["key"] != before
    again = loop.run(spec, api=dead_api())
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-3000:]


def test_failed_shot_is_not_up_to_date(loop: Loop, tmp_path: Path) -> None:
    """A shot that ended as a slate is tried again: the folder is not up to date."""
    from flows.money.journal import Journal
    from flows.run.uptodate import check
    from flows.storyboard.plan import make_plan

    out = tmp_path / "copy"
    shutil.copytree(loop.out, out)
    spec = loop.current
    with Journal(out / "journal.sqlite") as j:
        for row in j.attempts():  # the copy's journal points at the original's files
            j.status(row.id, row.status, conformed_path=str(out / "clips" /
                     Path(row.conformed_path or "x").name) if row.conformed_path else None)
        assert check(make_plan(spec), out).final is not None
        j.record(shot_id="s2", attempt=9, provider="fal", model="kling-2.5-turbo-pro",
                 status="failed", failure_reason="content_policy: test")
    assert check(make_plan(spec), out).final is None


# -- storyreel's background Prefect server --------------------------------------------------

def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.server
def test_local_server_starts_once_is_reused_and_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update({"STORYREEL_HOME": str(tmp_path / "home"), "STORYREEL_SERVER": "local",
                "STORYREEL_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
                "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_HOME": str(tmp_path / "ph")})
    state_file = tmp_path / "home" / "server" / "server.json"
    pid = None
    try:
        st = cli(env, "server", "status", "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["running"] is False
        # two at once: one server (the lock), both told its URL
        starts = [subprocess.Popen([sys.executable, "-m", "flows.cli", "server", "start"],
                                   env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in starts]
        assert all(p.returncode == 0 for p in starts), outs
        state = json.loads(state_file.read_text())
        pid, url = state["pid"], state["url"]
        assert all(url in o for o, _ in outs), outs
        assert alive(pid)
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            assert resp.status == 200
        # a run with no PREFECT_API_URL uses it: same pid afterwards, and the flow run is there
        spec = tmp_path / "one.yaml"
        spec.write_text(json.dumps({"version": 1, "title": "one", "output": {"size": "320x180"},
                                    "shots": [{"id": "a", "prompt": "a lighthouse",
                                               "duration": 1}]}))
        run = cli(env, "run", str(spec), "--out", str(tmp_path / "demo"), timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(state_file.read_text())["pid"] == pid
        req = urllib.request.Request(f"{url}/flow_runs/count", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read()) >= 1
        st = json.loads(cli(env, "server", "status", "--json").stdout)
        assert st["running"] and st["healthy"] and st["pid"] == pid
        assert st["database"].startswith(str(tmp_path / "home"))
        stop = cli(env, "server", "stop")
        assert stop.returncode == 0 and "stopped" in stop.stdout
        end = time.monotonic() + 30
        while alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        assert not alive(pid)
        assert json.loads(cli(env, "server", "status", "--json").stdout)["running"] is False
    finally:
        if pid is not None and alive(pid):  # leave nothing behind, whatever failed
            os.killpg(pid, 9)
