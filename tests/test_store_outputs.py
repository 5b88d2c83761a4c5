"""Run folders on object storage (`--out s3://...`) and the clip cache shared through a store
(STORYREEL_CACHE_URL), against moto's standalone S3 server on loopback and the vendor emulator:
the deliverables land in the bucket and play; another machine (another STORYREEL_HOME, another
local cache) resumes from the store and pays nothing; a URL the operator did not allow is
refused before anything runs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from flows.cli.commands import main
from flows.media.ffmpeg_exec import ffmpeg_exe
from flows.money.journal import Journal
from providers.errors import SpecError
from tests.s3_kit import BUCKET
from tests.storyboards import cost_rows, write_board

URL = f"s3://{BUCKET}/runs/x"
SHOTS = [{"id": "kite", "prompt": "a red kite over the dunes", "provider": "fal",
          "model": "kling-2.5-turbo-pro", "duration": 5},
         {"id": "title", "prompt": "the beach at dusk", "provider": "local",
          "model": "animatic", "duration": 1}]


def machine(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Another worker: its own home (scratch folders) and local clip cache."""
    monkeypatch.setenv("STORYREEL_HOME", str(root / "home"))
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(root / "cache"))


def objects(s3: object, prefix: str) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents") or []
    return {o["Key"][len(prefix) + 1:]: o["ETag"] for o in listed}


def decodes(path: Path) -> float:
    """Decode the whole file with ffmpeg (stricter than a probe); its duration in seconds."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-i", str(path),
                          "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    import av

    with av.open(str(path)) as c:
        return float(c.duration or 0) / 1e6


def test_out_on_a_store_publishes_and_another_machine_resumes_without_paying(
        emu_env, s3, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    emu_env.configure(latency=0.2)
    monkeypatch.setenv("STORYREEL_ALLOWED_STORES", f"s3://other/x, s3://{BUCKET}/runs")
    board = write_board(tmp_path / "specs", SHOTS, budget={"max_usd": 5})

    machine(monkeypatch, tmp_path / "a")
    assert main(["run", str(board), "--out", URL]) == 0
    assert emu_env.stats("fal")["submits"] == 1
    first = objects(s3, "runs/x")
    for name in ("final.mp4", "cost.csv", "run.json", "review.html", "contact_sheet.png",
                 "journal.sqlite", "cut.json"):
        assert name in first, sorted(first)
    assert any(k.startswith("clips/") for k in first)  # the cut's clips: a resume needs them
    assert not any(k.startswith(("raw/", ".")) or k.endswith("-wal") for k in first)

    got = tmp_path / "got"
    got.mkdir()
    for name in ("final.mp4", "cost.csv"):
        s3.download_file(BUCKET, f"runs/x/{name}", str(got / name))
    assert decodes(got / "final.mp4") == pytest.approx(6.0, abs=0.25)
    rows = cost_rows(got)
    assert [r["shot_id"] for r in rows if r["status"] == "done"] == ["kite", "title"]

    # another machine, nothing local: it pulls the state and the run is up to date
    machine(monkeypatch, tmp_path / "b")
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["run", str(board), "--out", URL]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "0 file(s) put" in out, out
    assert emu_env.stats("fal")["submits"] == 1  # paid once, on machine a
    assert objects(s3, "runs/x") == first  # nothing put again
    # and on that machine a second rerun reads its scratch: one LIST, nothing hashed or put
    t1 = time.perf_counter()
    assert main(["run", str(board), "--out", URL]) == 0
    print(f"rerun on a fresh machine {t1 - t0:.2f} s, again {time.perf_counter() - t1:.2f} s")
    assert objects(s3, "runs/x") == first

    # an edit on machine b: only the edited shot is made, and the store gets the new cut
    SHOTS_B = [SHOTS[0], {**SHOTS[1], "prompt": "the beach at night"}]
    board = write_board(tmp_path / "specs", SHOTS_B, budget={"max_usd": 5})
    assert main(["run", str(board), "--out", URL]) == 0
    assert emu_env.stats("fal")["submits"] == 1
    second = objects(s3, "runs/x")
    assert second["final.mp4"] != first["final.mp4"]
    assert second["journal.sqlite"] != first["journal.sqlite"]

    # back on machine a, whose scratch is a cut behind: the store wins, nothing is paid
    machine(monkeypatch, tmp_path / "a")
    assert main(["run", str(board), "--out", URL]) == 0
    assert "up to date" in capsys.readouterr().out
    assert objects(s3, "runs/x") == second
    scratch = next((tmp_path / "a" / "home" / "scratch").iterdir())
    with Journal(scratch / "journal.sqlite") as j:
        assert sum(1 for a in j.attempts() if a.provider == "fal") == 1


def test_out_outside_the_allowed_stores_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from flows.storyboard.files import check_run_params

    monkeypatch.setenv("STORYREEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STORYREEL_ALLOWED_STORES", f"s3://{BUCKET}/runs")
    board = write_board(tmp_path, SHOTS[1:])
    for url in (f"s3://{BUCKET}/elsewhere/x", f"s3://{BUCKET}/runsx/y", "s3://other/runs/x",
                f"s3://{BUCKET}/runs/../secret"):
        assert main(["run", str(board), "--out", url]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: out:") and url.split("/")[2] in err, err
    assert "STORYREEL_ALLOWED_STORES" in err or ".." in err
    assert not (tmp_path / "home").exists()  # refused before a scratch folder was made
    monkeypatch.delenv("STORYREEL_ALLOWED_STORES")
    assert main(["run", str(board), "--out", f"s3://{BUCKET}/runs/x"]) == 2
    assert "STORYREEL_ALLOWED_STORES: none" in capsys.readouterr().err
    # a deployment's `out` parameter gets the same check
    with pytest.raises(SpecError, match="STORYREEL_ALLOWED_STORES"):
        check_run_params(str(board), f"s3://{BUCKET}/runs/x", deployed=False)


async def test_cache_url_lets_another_machine_reuse_a_paid_clip(
        emu_env, s3, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.orchestration.flow import render_storyboard

    emu_env.configure(latency=0.2)
    monkeypatch.setenv("STORYREEL_CACHE_URL", f"s3://{BUCKET}/clip-cache")
    board = write_board(tmp_path, SHOTS[:1], budget={"max_usd": 5})
    runs = []
    for name in ("a", "b"):
        machine(monkeypatch, tmp_path / name)
        result = await render_storyboard(storyboard=str(board), out=str(tmp_path / name / "run"))
        assert result["ok"]
        runs.append(cost_rows(tmp_path / name / "run"))
    assert emu_env.stats("fal")["submits"] == 1  # machine b paid nothing
    assert [r["status"] for r in runs[1]] == ["cached"]
    assert sum(float(r["actual_usd"] or 0) for r in runs[1]) == 0
    shared = [k for k in objects(s3, "clip-cache") if k.endswith(".json")]
    assert len(shared) == 1


def test_a_run_killed_mid_way_is_finished_on_another_machine_without_paying_twice(
        emu_env, s3, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL while the vendor still has the job: the store holds the journal's checkpoint,
    so the other machine polls that job instead of submitting the shot again."""
    import os
    import signal
    import sys

    from flows.money.status import AT_VENDOR

    emu_env.configure(latency=120)  # the job outlives the first machine
    url = f"s3://{BUCKET}/runs/killed"
    monkeypatch.setenv("STORYREEL_ALLOWED_STORES", f"s3://{BUCKET}/runs")
    monkeypatch.setenv("STORYREEL_STORE_CHECKPOINT_S", "1")
    board = write_board(tmp_path / "specs", SHOTS[:1], budget={"max_usd": 5})
    machine(monkeypatch, tmp_path / "a")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(board), "--out", url],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    seen = tmp_path / "seen.sqlite"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no journal checkpoint with the job at the vendor"
            if "journal.sqlite" in objects(s3, "runs/killed"):
                s3.download_file(BUCKET, "runs/killed/journal.sqlite", str(seen))
                with Journal(seen) as j:
                    if any(a.status in AT_VENDOR and a.job_id for a in j.attempts()):
                        break
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert emu_env.stats("fal")["submits"] == 1
    emu_env.advance(300)  # the vendor finishes the job meanwhile

    machine(monkeypatch, tmp_path / "b")
    assert main(["run", str(board), "--out", url]) == 0
    assert emu_env.stats("fal")["submits"] == 1  # polled, not submitted again
    got = tmp_path / "got"
    got.mkdir()
    s3.download_file(BUCKET, "runs/killed/cost.csv", str(got / "cost.csv"))
    [row] = [r for r in cost_rows(got) if r["provider"] == "fal"]
    assert row["status"] == "done" and float(row["actual_usd"]) == pytest.approx(
        emu_env.stats("fal")["charged_usd"])


def test_with_the_journal_in_postgresql_a_store_run_is_one_run_on_every_machine(
        emu_env, s3, prefect_api: str, pg_server: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """STORYREEL_DB_URL + --out s3://...: the run's database key is its URL (not the scratch
    folder, which differs per machine), so a second machine finds its journal there."""
    from flows.run.journals import run_key
    from tests.pg import fresh_pg_database

    emu_env.configure(latency=0.2)
    url = f"s3://{BUCKET}/runs/db"
    monkeypatch.setenv("STORYREEL_DB_URL", fresh_pg_database(pg_server, "store_runs"))
    monkeypatch.setenv("STORYREEL_ALLOWED_STORES", f"s3://{BUCKET}/runs")
    board = write_board(tmp_path / "specs", SHOTS[:1], budget={"max_usd": 5})
    scratch = []
    for name in ("a", "b"):
        machine(monkeypatch, tmp_path / name)
        assert main(["run", str(board), "--out", url]) == 0
        scratch.append(next((tmp_path / name / "home" / "scratch").iterdir()))
    assert "up to date" in capsys.readouterr().out
    assert emu_env.stats("fal")["submits"] == 1
    assert run_key(scratch[0]) == run_key(scratch[1]) == url
    assert "journal.sqlite" not in objects(s3, "runs/db")  # the journal is in the database
