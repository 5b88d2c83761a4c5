"""`storyreel cut` gives the run's finished film, and a run folder can be moved or copied.

One small local storyboard (free, offline: the animatic provider) with a title and an end card,
captions, a music bed with a loudness target and a logo is run once through the CLI; each test
works on a copy of that folder. Expected times are worked out here by hand from the storyboard;
frames, captions and the music are read from the files, not through the product's own code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from flows.cli.commands import main
from tests.cli_kit import Ran, storyreel
from tests.review_kit import difference, frame_at
from tests.test_deliverable import MUSIC_HZ, audio, band_db, cues, make_logo, make_music

FPS, W, H = 12, 320, 180
BLUE = (0x20, 0x60, 0xE0)
BOARD = f"""\
version: 1
title: recut test
output: {{size: {W}x{H}, fps: {FPS},
         logo: {{image: logo.png, position: top-right, opacity: 1, scale: 0.2}}}}
budget: {{max_usd: 0}}
defaults: {{provider: local, duration: 1}}
audio: {{music: music.wav, volume_db: -6, loudness: -16}}
title_card: {{text: Opening, duration: 1, background: "#2060e0"}}
end_card: {{text: The end, duration: 1, background: "#000000"}}
shots:
  - {{id: a, prompt: boats at dawn, seed: 1, caption: First, takes: 2}}
  - {{id: b, prompt: gulls over the harbour, seed: 2, caption: Second}}
"""
# by hand: title 0-1, shot a 1-2, shot b 2-3, end card 3-4 (every junction a hard cut)
LENGTH = 4.0
CAPTIONS = [(1.0, 2.0, "First"), (2.0, 3.0, "Second")]


@dataclass
class Made:
    spec: Path
    out: Path
    env: dict[str, str]

    def cli(self, *args: str) -> Ran:
        """The command in this process: what it does to the folder is the subject here."""
        return storyreel(*args, env=self.env)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Made:
    tmp = tmp_path_factory.mktemp("recut")
    make_music(tmp / "music.wav")
    make_logo(tmp / "logo.png")
    spec = tmp / "board.yaml"
    spec.write_text(BOARD, encoding="utf-8")
    env = {"PREFECT_API_URL": prefect_api, "STORYREEL_CACHE_DIR": str(tmp / "cache")}
    m = Made(spec, tmp / "run", env)
    proc = m.cli("run", str(spec), "--out", str(m.out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return m


def rows(run_dir: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        return db.execute("SELECT id, shot_id, take, status, cache_key FROM attempts "
                          "ORDER BY id").fetchall()
    finally:
        db.close()


def frames(video: Path) -> int:
    with av.open(str(video)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def pictures(video: Path) -> str:
    """A digest of every decoded picture of a video, in order."""
    h = hashlib.sha256()
    with av.open(str(video)) as c:
        for f in c.decode(c.streams.video[0]):
            h.update(f.to_ndarray(format="rgb24").tobytes())
    return h.hexdigest()


def take_clip(run_dir: Path, shot: str, take: int) -> Path:
    [name] = [p for p in (run_dir / "clips").glob(f"*-{shot}{'' if take == 1 else f'-take{take}'}.*")
              if "missing" not in p.name]
    return name


def links(page: str) -> list[str]:
    return re.findall(r'(?:src|href|poster)="([^"#]+)', page)


@pytest.mark.e2e
def test_cut_after_a_pick_is_the_film_the_run_makes(made: Made, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYREEL_CACHE_DIR", made.env["STORYREEL_CACHE_DIR"])
    work = tmp_path / "work"
    shutil.copytree(made.out, work)
    cost, journal = (work / "cost.csv").read_bytes(), rows(work)

    assert main(["pick", str(work), "a", "2"]) == 0
    assert main(["cut", str(work)]) == 0
    final = work / "final.mp4"

    # the whole film: title card, the shots, end card
    assert abs(frames(final) / FPS - LENGTH) <= 1 / FPS + 1e-6
    title = frame_at(final, 0.5)
    assert np.abs(title[H - 10:, :40] - BLUE).max() < 40  # the title card's background
    assert np.abs(frame_at(final, 3.5)[H - 10:, :40]).max() < 40  # the end card's (black)
    for t in (0.5, 1.5, 3.5):  # the logo (opaque magenta) in the top-right corner throughout
        corner = frame_at(final, t)[10:20, W - 50:W - 20]
        assert np.abs(corner - [255, 0, 255]).max() < 60, t
    # the picked take plays at shot a's place (below the logo's corner)
    shot_a = frame_at(final, 1.5)[50:, :]
    near = {t: difference(shot_a, frame_at(take_clip(work, "a", t), 0.5)[50:, :]) for t in (1, 2)}
    assert near[2] + 10 < near[1], near
    # captions beside it, one cue per captioned shot, within a frame
    for name, sep in (("final.srt", ","), ("final.vtt", r"\.")):
        got = cues((work / name).read_text(encoding="utf-8"), sep)
        assert [c[2] for c in got] == [c[2] for c in CAPTIONS], got
        for (s, e, _), (gs, ge, _) in zip(CAPTIONS, got, strict=True):
            assert abs(gs - s) <= 1 / FPS and abs(ge - e) <= 1 / FPS, got
    # the music bed: its tone is there over the (silent) title card
    samples, rate = audio(final)
    assert band_db(samples, rate, 0.2, 0.8, MUSIC_HZ) > -40
    # cut.json records this cut; run.json describes it; nothing was paid or attempted
    record = json.loads((work / "cut.json").read_text())
    spans = [s[0] for s in record["report"]["spans"]]
    assert spans[1] == f"clips/{take_clip(work, 'a', 2).name}", spans
    assert json.loads((work / "run.json").read_text())["cut"] == record["report"]
    assert (work / "cost.csv").read_bytes() == cost and rows(work) == journal

    # the run, with the same picks, has nothing to add: the cut's key is its own
    proc = made.cli("run", str(made.spec), "--out", str(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("up to date"), proc.stdout[-2000:]
    # and when it makes the film itself, it makes the same one
    cut_pictures, cut_sound = pictures(final), samples
    (work / "cut.json").unlink()
    final.unlink()
    proc = made.cli("run", str(made.spec), "--out", str(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((work / "cut.json").read_text())["report"]
    # the same film; its measured loudness (rounded to 0.1 LU) may differ by a rounding step,
    # as the cut's AAC is encoded afresh here and partly reused after the pick
    lufs = again["loudness"].pop("integrated_lufs"), record["report"]["loudness"]["integrated_lufs"]
    assert abs(lufs[0] - lufs[1]) <= 0.15, lufs
    assert again == {**record["report"], "loudness": {
        k: v for k, v in record["report"]["loudness"].items() if k != "integrated_lufs"}}
    assert pictures(final) == cut_pictures  # frame for frame
    # the sound too, sample for sample but for the last AAC frames (their flush differs from
    # one encode of the same mix to the next, a cut with itself included)
    run_sound, _ = audio(final)
    assert len(run_sound) == len(cut_sound)
    body = int((LENGTH - 0.5) * rate)
    assert np.abs(run_sound[:body] - cut_sound[:body]).max() < 1e-4
    assert rows(work) == journal  # no take was made again


def _check_page(run_dir: Path, *elsewhere: Path) -> str:
    page = (run_dir / "review.html").read_text(encoding="utf-8")
    for link in links(page):
        assert not link.startswith(("/", "file:")), link
        assert (run_dir / link).is_file(), link
    for other in elsewhere:
        assert str(other) not in page
    return page


@pytest.mark.e2e
def test_a_moved_folder_reruns_recuts_and_reconciles(made: Made, tmp_path: Path) -> None:
    first = tmp_path / "first"
    shutil.copytree(made.out, first)
    copy = tmp_path / "elsewhere" / "copy"
    # a plain copy (cp -r: new modification times), then the original goes away
    shutil.copytree(first, copy, copy_function=shutil.copyfile)
    first.rename(tmp_path / "gone")
    journal = rows(copy)
    # the shots' conformed clips (the cards are copied from the card cache by every cut)
    clips = {p.name: p.stat().st_mtime_ns for p in (copy / "clips").iterdir()
             if "-card." not in p.name}
    assert len(clips) == 3

    proc = made.cli("run", str(made.spec), "--out", str(copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert rows(copy) == journal  # nothing rendered, cached or attempted again
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "clips").iterdir()
            if p.name in clips} == clips  # nor conformed again
    page = _check_page(copy, first, made.out)
    assert "final.mp4#t=" in page  # the takes in the cut play from it
    assert json.loads((copy / "run.json").read_text())["results"][0]["clip"].startswith("clips/")

    proc = made.cli("run", str(made.spec), "--out", str(copy))
    assert proc.returncode == 0 and proc.stdout.startswith("up to date"), proc.stdout[-2000:]
    for args in (["cut", str(copy)], ["reconcile", str(copy)]):
        proc = made.cli(*args)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
    # reconcile rewrites cost.csv and keeps each row's shot duration (from run.json's plan)
    with open(copy / "cost.csv", newline="") as fh:
        durations = {r["shot_id"]: r["duration_s"] for r in csv.DictReader(fh) if r["shot_id"]}
    assert durations and all(d not in ("", None) for d in durations.values()), durations
    _check_page(copy, first, made.out)


def _make_old(run_dir: Path, where: Path) -> None:
    """Rewrite a run folder's records as earlier versions wrote them for a folder at `where`:
    absolute paths into it in the journal (no migration mark), cut.json and run.json."""
    db = sqlite3.connect(run_dir / "journal.sqlite")
    for row_id, clip, conformed in db.execute(
            "SELECT id, clip_path, conformed_path FROM attempts").fetchall():
        db.execute("UPDATE attempts SET clip_path = ?, conformed_path = ? WHERE id = ?",
                   (str(where / clip) if clip else None,
                    str(where / conformed) if conformed else None, row_id))
    db.execute("DELETE FROM meta WHERE key = 'paths'")
    db.commit()
    db.close()
    record = json.loads((run_dir / "cut.json").read_text())
    report = record["report"]
    report["spans"] = [[str(where / c), a, b] for c, a, b in report["spans"]]
    report["srt"], report["vtt"] = str(where / "final.srt"), str(where / "final.vtt")
    (run_dir / "cut.json").write_text(json.dumps(record))


@pytest.mark.e2e
def test_an_older_folder_moved_elsewhere_still_works(made: Made, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(made.out, old)  # modification times kept (cp -a, mv): the cut is current
    _make_old(old, tmp_path / "made-here")
    journal = rows(old)

    proc = made.cli("run", str(made.spec), "--out", str(old))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("up to date"), proc.stdout[-2000:]
    proc = made.cli("cut", str(old))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert rows(old) == journal
    page = _check_page(old, tmp_path / "made-here")
    assert "final.mp4#t=" in page  # the old record's spans found their clips here


def test_journal_paths_are_relative_and_older_journals_migrate(tmp_path: Path) -> None:
    from flows.money.journal import Journal

    folder = tmp_path / "moved" / "run"
    folder.mkdir(parents=True)
    cache = tmp_path / "cache" / "clips" / "ab" / ("ab" * 32 + ".0123456789abcdef.mp4")
    db = sqlite3.connect(folder / "journal.sqlite")
    db.executescript("""
        CREATE TABLE attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
        shot_id TEXT NOT NULL, attempt INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
        cache_key TEXT, job_id TEXT, job_data TEXT, status TEXT NOT NULL, failure_reason TEXT,
        estimated_usd REAL, reserved_usd REAL, actual_usd REAL, cost_source TEXT, clip_path TEXT,
        conformed_path TEXT, queued_s REAL, generation_s REAL, download_s REAL,
        started_at TEXT NOT NULL, finished_at TEXT, updated_at TEXT NOT NULL,
        take INTEGER NOT NULL DEFAULT 1);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);""")
    old = [  # as earlier versions wrote them: absolute, relative to the run's cwd, the cache
        ("/srv/was/here/raw/a-r1.mp4", "/srv/was/here/clips/000-a.12345678.mov"),
        ("out/raw/b-r2.mp4", "out/clips/001-b.12345678.mov"),
        (str(cache), str(folder / "clips" / "002-c.12345678.mov")),
    ]
    for i, (clip, conformed) in enumerate(old):
        db.execute("INSERT INTO attempts (run_id, shot_id, attempt, provider, model, status, "
                   "clip_path, conformed_path, started_at, updated_at) VALUES "
                   "('r', ?, 1, 'fal', 'm', 'done', ?, ?, 't', 't')", ("abc"[i], clip, conformed))
    db.commit()
    db.close()

    with Journal(folder / "journal.sqlite") as journal:
        got = [(a.clip_path, a.conformed_path) for a in journal.attempts()]
        row = journal.record(shot_id="d", attempt=1, provider="fal", model="m", status="done",
                             clip_path=folder / "raw" / "d-r4.mp4",
                             conformed_path=folder / "clips" / "003-d.12345678.mov")
    assert got == [
        (str(folder / "raw/a-r1.mp4"), str(folder / "clips/000-a.12345678.mov")),
        (str(folder / "raw/b-r2.mp4"), str(folder / "clips/001-b.12345678.mov")),
        (str(cache), str(folder / "clips/002-c.12345678.mov")),  # the cache stays where it is
    ]
    db = sqlite3.connect(folder / "journal.sqlite")
    stored = db.execute("SELECT clip_path, conformed_path FROM attempts ORDER BY id").fetchall()
    db.close()
    assert stored == [("raw/a-r1.mp4", "clips/000-a.12345678.mov"),
                      ("raw/b-r2.mp4", "clips/001-b.12345678.mov"),
                      (str(cache), "clips/002-c.12345678.mov"),
                      ("raw/d-r4.mp4", "clips/003-d.12345678.mov")]
    assert row == 4
    # the folder moves again: its journal reads its files where it is now
    moved = tmp_path / "again"
    shutil.move(str(folder), moved)
    with Journal(moved / "journal.sqlite") as journal:
        assert journal.get(4).conformed_path == str(moved / "clips" / "003-d.12345678.mov")
        assert journal.get(3).clip_path == str(cache)
