"""Takes, picks, rejections and re-cuts, through the real flow and the vendor emulator."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from flows.cli.commands import main
from tests import browser
from tests.review_kit import difference, frame_at
from tests.storyboards import charged, cost_rows, total, write_board

SECONDS = 2.0  # every shot's length in these boards (runway gen4.5 takes 2-10 s)


def _board(tmp_path: Path, **top: object) -> Path:
    shots = [
        {"id": "open", "prompt": "A lighthouse at dusk", "takes": 2},
        {"id": "lamp", "prompt": "Close-up of the lamp"},
        {"id": "sea", "prompt": "The beam sweeps the sea", "takes": 2},
    ]
    return write_board(tmp_path, shots, title="takes",
                       defaults={"provider": "runway", "model": "gen4.5", "duration": SECONDS},
                       budget={"max_usd": 5, "max_usd_per_shot": 1}, **top)


def _save_small(png: bytes, dest: Path) -> None:
    """The README's screenshot: scaled and palette-reduced to stay well under 200 KB."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)


def _shot_frame(cut: Path, index: int) -> object:
    """A frame from the middle of the index-th shot of a cut of SECONDS-long shots."""
    return frame_at(cut, index * SECONDS + SECONDS / 2)


def _take_frame(run_dir: Path, shot_id: str, take: int) -> object:
    from flows.money.journal import Journal
    from flows.review.picks import by_take, good_clip

    with Journal(run_dir / "journal.sqlite") as journal:
        clip = good_clip(by_take(journal.attempts(shot_id))[take])
    assert clip is not None
    return frame_at(clip, SECONDS / 2)


def _closest_take(run_dir: Path, shot_id: str, index: int, takes: list[int]) -> int:
    cut = _shot_frame(run_dir / "final.mp4", index)
    diffs = {t: difference(cut, _take_frame(run_dir, shot_id, t)) for t in takes}
    best = min(diffs, key=diffs.get)
    others = [d for t, d in diffs.items() if t != best]
    assert all(d > diffs[best] + 10 for d in others), diffs  # the takes really look different
    return best


@pytest.mark.e2e
async def test_takes_pay_one_job_each_and_the_review_page_shows_them(
        review_run, emu_env, tmp_path: Path) -> None:
    emu_env.configure(distinct_clips=True)
    out = tmp_path / "out"
    result = await review_run(_board(tmp_path), out)
    assert result["ok"], result
    assert emu_env.stats("runway")["submits"] == 5  # 2 + 1 + 2
    rows = cost_rows(out)
    assert sorted((r["shot_id"], r["take"]) for r in rows) == [
        ("lamp", "1"), ("open", "1"), ("open", "2"), ("sea", "1"), ("sea", "2")]
    assert all(r["status"] == "done" and r["job_id"] for r in rows)
    assert total(rows) == charged(emu_env)
    # each take asked the vendor with its own seed
    seeds = [j.request.get("seed") for j in emu_env._jobs.values()]
    assert len(set(seeds)) == 5 and None not in seeds
    # the cut uses the first good take of each shot
    assert _closest_take(out, "open", 0, [1, 2]) == 1

    report = await browser.aload(out / "review.html")
    assert report.errors == []
    assert [v["label"] for v in report.videos] == [
        "the cut", "open take 1", "open take 2", "lamp take 1", "sea take 1", "sea take 2"]
    assert all(v["error"] is None and v["readyState"] >= 1 for v in report.videos)
    assert "take 1 in the cut" in report.text and "Take 2" in report.text


def test_plan_prices_the_takes_and_the_per_shot_cap_counts_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.storyboard.plan import make_plan

    monkeypatch.setenv("RUNWAYML_API_SECRET", "not-used")
    plan = make_plan(_board(tmp_path))
    one = plan.shots[1].estimate_usd
    assert plan.shots[0].takes == 2 and plan.shots[0].estimate_usd == pytest.approx(2 * one)
    assert plan.total_estimate == pytest.approx(5 * one)
    assert plan.shots[0].for_take(2).seed != plan.shots[0].seed
    assert plan.shots[0].for_take(1).seed == plan.shots[0].seed
    # three takes of a 2 s gen4.5 shot do not fit a per-shot cap of two takes' price
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "takes": 3}], title="tight",
                       defaults={"provider": "runway", "model": "gen4.5", "duration": SECONDS},
                       budget={"max_usd": 5, "max_usd_per_shot": 2.5 * one})
    assert main(["plan", str(spec)]) == 1
    err = capsys.readouterr()
    assert "x 3 takes exceeds budget.max_usd_per_shot" in err.err
    assert "3 takes" in err.out


def test_takes_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "takes": 2}], defaults={"takes": 3})
    assert main(["validate", str(spec)]) == 0
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "takes": 0}])
    assert main(["validate", str(spec)]) == 2
    assert "shots[0].takes" in capsys.readouterr().err


@pytest.mark.e2e
async def test_pick_then_cut_uses_the_picked_take_without_a_vendor_call(
        review_run, emu_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emu_env.configure(distinct_clips=True)
    out = tmp_path / "out"
    await review_run(_board(tmp_path), out)
    assert _closest_take(out, "sea", 2, [1, 2]) == 1
    before = emu_env.stats()["total"]
    spent = cost_rows(out)

    assert main(["pick", str(out), "sea", "2"]) == 0
    assert yaml.safe_load((out / "review.yaml").read_text())["shots"] == {"sea": {"pick": 2}}
    assert await asyncio.to_thread(main, ["cut", str(out)]) == 0  # (it runs its own loop)
    assert _closest_take(out, "sea", 2, [1, 2]) == 2  # the picked take is in the cut now
    assert _closest_take(out, "open", 0, [1, 2]) == 1  # and nothing else moved
    assert emu_env.stats()["total"] == before  # no request of any kind reached a vendor
    assert cost_rows(out) == spent
    page = (out / "review.html").read_text()
    assert 'id="sea-take2"' in page and "take 2 in the cut" in page

    # mistakes are named, with exit 2 and no traceback
    capsys.readouterr()
    assert main(["pick", str(out), "sea", "7"]) == 2
    assert "shot sea has no take 7" in capsys.readouterr().err
    assert main(["pick", str(out), "nope", "1"]) == 2
    assert await asyncio.to_thread(main, ["cut", str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
    (out / "review.yaml").write_text("shots: {sea: {pick: two}}\n")
    assert await asyncio.to_thread(main, ["cut", str(out)]) == 2
    assert "review.yaml: shots.sea.pick" in capsys.readouterr().err


@pytest.mark.e2e
async def test_reject_and_rerun_regenerates_only_that_shot(
        review_run, emu_env, tmp_path: Path) -> None:
    emu_env.configure(distinct_clips=True)
    spec, out = _board(tmp_path), tmp_path / "out"
    await review_run(spec, out)
    assert emu_env.stats("runway")["submits"] == 5

    assert main(["reject", str(out), "lamp", "--note", "too dark <b>"]) == 0
    result = await review_run(spec, out)
    assert result["ok"]
    assert emu_env.stats("runway")["submits"] == 6  # one new take of lamp, nothing else
    rows = cost_rows(out)
    lamp = [r for r in rows if r["shot_id"] == "lamp"]
    assert [(r["take"], r["status"]) for r in lamp] == [("1", "done"), ("2", "done")]
    new_seed = [j.request["seed"] for j in emu_env._jobs.values()][-1]
    assert new_seed not in [j.request["seed"] for j in list(emu_env._jobs.values())[:-1]]
    assert _closest_take(out, "lamp", 1, [1, 2]) == 2
    assert total(rows) == charged(emu_env)
    # the page keeps the history: the rejected take, the note, the new take in the cut
    page = (out / "review.html").read_text()
    assert 'id="lamp-take1"' in page and 'id="lamp-take2"' in page
    assert "too dark &lt;b&gt;" in page and "take 2 in the cut" in page

    report = await browser.aload(out / "review.html", 1280, 1500)
    assert report.errors == []
    assert [v["label"] for v in report.videos][:4] == [
        "the cut", "open take 1", "open take 2", "lamp take 1"]
    if os.environ.get("STORYREEL_REVIEW_SCREENSHOT"):  # how docs/review.png is made
        _save_small(report.screenshot, Path(os.environ["STORYREEL_REVIEW_SCREENSHOT"]))

    await review_run(spec, out)  # nothing is left to redo
    assert emu_env.stats("runway")["submits"] == 6
    assert Decimal(str(emu_env.stats("runway")["charged_usd"])) == total(cost_rows(out))


def test_an_older_journal_gains_the_take_column(tmp_path: Path) -> None:
    from flows.money.journal import Journal

    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
        shot_id TEXT NOT NULL, attempt INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
        cache_key TEXT, job_id TEXT, job_data TEXT, status TEXT NOT NULL, failure_reason TEXT,
        estimated_usd REAL, reserved_usd REAL, actual_usd REAL, cost_source TEXT, clip_path TEXT,
        conformed_path TEXT, queued_s REAL, generation_s REAL, download_s REAL,
        started_at TEXT NOT NULL, finished_at TEXT, updated_at TEXT NOT NULL);
        INSERT INTO attempts (run_id, shot_id, attempt, provider, model, status, started_at,
        updated_at) VALUES ('r', 'a', 1, 'fal', 'm', 'done', 't', 't');""")
    db.commit()
    db.close()
    with Journal(path) as journal:
        [old] = journal.attempts()
        assert old.take == 1
        row = journal.intent(shot_id="a", attempt=1, provider="fal", model="m", cache_key="k",
                             estimated_usd=0.1, reserved_usd=0.1, take=2)
        assert journal.get(row).take == 2
        assert journal.next_attempt("a", 2) == 2 and journal.next_attempt("a", 3) == 1
