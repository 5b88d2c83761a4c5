"""End to end under Prefect: every local storyboard in specs/ renders into a verified cut.
specs/demo.yaml is rendered once, by the README's command (`demo_run`), and checked as the
other specs are and as a second run of its folder."""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flows.media.probe import probe
from flows.storyboard.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SPECS = [p for p in sorted((ROOT / "specs").glob("*.yaml"))
               if make_plan(p).providers_used() == {"local"}]


def expected_length(spec: Path) -> float:
    plan = make_plan(spec)
    junctions = sum(s.transition.duration for s in plan.shots[:-1] if s.transition.kind != "cut")
    cards = [c for c in (plan.finishing.title, plan.finishing.end) if c] if plan.finishing else []
    # a title/end card lasts its duration, less its junction with the cut when not a hard cut
    extra = sum(c.card.duration - (c.transition.duration if c.transition.kind != "cut" else 0)
                for c in cards)
    return plan.total_duration - junctions + extra


DEMO = ROOT / "specs" / "demo.yaml"


@dataclass
class DemoRun:
    cmd: list[str]
    env: dict[str, str]
    out: Path
    first: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> DemoRun:
    """The README's command, as a user types it (sharing the harness's API to skip a cold start)."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "STORYREEL_CACHE_DIR": str(tmp / "cache")}
    out = tmp / "demo"
    cmd = [sys.executable, "-m", "flows.cli", "run", str(DEMO), "--out", str(out),
           "--var", "day=a calm day"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return DemoRun(cmd, env, out, proc)


@pytest.mark.e2e
@pytest.mark.parametrize("spec", LOCAL_SPECS, ids=lambda p: p.stem)
async def test_local_spec_renders(spec: Path, tmp_path: Path, prefect_api: str,
                                  monkeypatch: pytest.MonkeyPatch,
                                  request: pytest.FixtureRequest) -> None:
    if spec == DEMO:  # rendered by the CLI (below), checked the same way
        demo: DemoRun = request.getfixturevalue("demo_run")
        assert demo.first.returncode == 0, demo.first.stderr[-3000:]
        out = demo.out
    else:
        from flows.orchestration.flow import render_storyboard

        monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
        out = tmp_path / "run"
        result = await render_storyboard(storyboard=str(spec), out=str(out))
        assert result["ok"], result
    plan = make_plan(spec)
    info = probe(out / "final.mp4")
    assert (info.width, info.height) == (plan.width, plan.height)
    assert abs(info.fps - plan.fps) < 0.01
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert abs(info.duration - expected_length(spec)) <= 1 / plan.fps + 1e-6
    assert info.audio_duration is not None
    assert abs(info.audio_duration - info.duration) <= 1 / plan.fps + 0.03
    with open(out / "cost.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["shot_id"] for r in rows) == sorted(s.shot_id for s in plan.shots)
    assert all(float(r["actual_usd"] or 0) == 0 for r in rows)
    assert (out / "run.json").exists() and (out / "contact_sheet.png").exists()


@pytest.mark.e2e
def test_cli_run_demo(demo_run: DemoRun) -> None:
    """The README's command twice on one folder: a cut, then nothing to do."""
    cmd, env, out, proc = demo_run.cmd, demo_run.env, demo_run.out, demo_run.first
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"cut:    {out / 'final.mp4'}" in proc.stdout
    # what the user waits for is said first, before the contact sheet, page and reports
    early = proc.stdout.index(f"cut ready: {out / 'final.mp4'}")
    assert early < proc.stdout.index(f"cut:    {out / 'final.mp4'}")
    assert (out / "final.mp4").stat().st_size > 10_000
    before = rendered(out)
    assert before["final.mp4"] and any(k.startswith("clips/") for k in before), before
    # second run of the same folder: everything is already done, nothing is rendered again
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"up to date: {out / 'final.mp4'}", proc.stdout[-2000:]
    assert rendered(out) == before  # the same files, untouched: no clip, slate or cut made anew


def rendered(out: Path) -> dict[str, Any]:
    """What a render leaves: each media file's (inode, mtime, size), and the journal's rows
    (one per attempt: a shot rendered again would add one)."""
    found: dict[str, Any] = {}
    for path in sorted([out / "final.mp4", *out.glob("clips/*"), *out.glob("raw/*")]):
        st = path.stat()
        found[str(path.relative_to(out))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    with sqlite3.connect(f"file:{out / 'journal.sqlite'}?mode=ro", uri=True) as db:
        found["journal"] = db.execute(
            "SELECT id, shot_id, status, finished_at FROM attempts ORDER BY id").fetchall()
    return found
