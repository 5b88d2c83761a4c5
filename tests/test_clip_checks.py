"""Clip checks: a black, frozen or silent clip is caught in the conform's own decode, is not
cut in, is still paid and reported, and the shot tries again (flows/media/checks.py)."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from flows.media import conform as conform_mod
from flows.media.checks import Measures, Thresholds, parse_measures
from flows.media.conform import OutputFormat, conform_measured
from flows.media.ffmpeg_exec import ffmpeg_exe
from providers.errors import SpecError
from tests.storyboards import charged, total, write_board

FMT = OutputFormat(320, 180, 24)


# -- the detectors' log, parsed -----------------------------------------------------------------

# as ffmpeg 9 prints them at -loglevel info, with the lines around them
LOG = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'clip.mp4':
  Duration: 00:00:04.00, start: 0.000000, bitrate: 94 kb/s
[Parsed_silencedetect_12 @ 0x7f74f0001c00] silence_start: 1.5
[Parsed_freezedetect_8 @ 0x7f9bc00023c0] lavfi.freezedetect.freeze_start: 0.5
[Parsed_freezedetect_8 @ 0x7f9bc00023c0] lavfi.freezedetect.freeze_duration: 1
[Parsed_freezedetect_8 @ 0x7f9bc00023c0] lavfi.freezedetect.freeze_end: 1.5
[Parsed_silencedetect_12 @ 0x7f74f0001c00] silence_end: 2.25 | silence_duration: 0.75
[Parsed_blackdetect_7 @ 0x7f9bc0001f00] black_start:0 black_end:1 black_duration:1
[Parsed_freezedetect_8 @ 0x7f9bc00023c0] lavfi.freezedetect.freeze_start: 3
[Parsed_blackdetect_7 @ 0x7f9bc0001f00] black_start:3.5 black_end:3.958333 black_duration:0.458333
[out#0/mov @ 0x5569c4dd4740] video:30KiB audio:258KiB subtitle:0KiB other streams:0KiB
"""


def test_log_intervals_are_summed_over_the_span() -> None:
    m = parse_measures(LOG, span_s=4.0, fps=24, has_audio=True)
    # black 0-1, and 3.5 to the last frame (stamped at its start: one frame short of the end)
    assert m.black_s == pytest.approx(1.5)
    # frozen 0.5-1.5, and from 3 on with no end (still frozen when the stream ended)
    assert m.frozen_s == pytest.approx(2.0)
    assert m.silent_s == pytest.approx(0.75)
    assert (m.black, m.frozen, m.silent) == pytest.approx((0.375, 0.5, 0.1875))


def test_intervals_past_the_kept_frames_are_not_counted() -> None:
    # the conform reads a second past what it keeps: the detectors see it, the cut does not
    log = ("[Parsed_blackdetect_0 @ 0x1] black_start:2.5 black_end:4.2 black_duration:1.7\n"
           "[Parsed_silencedetect_1 @ 0x2] silence_start: 3.5\n")
    m = parse_measures(log, span_s=3.0, fps=24, has_audio=True)
    assert m.black_s == pytest.approx(0.5)
    assert m.silent_s == pytest.approx(0.0)
    assert m.frozen_s == 0.0


def test_a_clip_without_audio_is_silent_throughout_and_nothing_is_measured_from_nothing() -> None:
    m = parse_measures("", span_s=2.0, fps=24, has_audio=False)
    assert (m.black, m.frozen, m.silent) == (0.0, 0.0, 1.0)
    assert parse_measures("", span_s=2.0, fps=24, has_audio=True).silent == 0.0


def test_thresholds() -> None:
    whole = Measures(span_s=4.0, black_s=4.0, frozen_s=4.0, silent_s=4.0)
    night = Measures(span_s=4.0, black_s=3.8, frozen_s=0.0)  # 95% black: passes at 98%
    still = Measures(span_s=4.0, frozen_s=3.9)  # moves in its last 0.1 s
    t = Thresholds()
    assert t.failure(whole, audio_asked=False).startswith("black: 100%")
    assert t.failure(night, audio_asked=False) is None
    assert t.failure(still, audio_asked=False) is None
    assert Thresholds(black=None).failure(whole, audio_asked=False).startswith("frozen")
    assert Thresholds(black=None, frozen=None).failure(whole, audio_asked=False) is None
    assert Thresholds(black=None, frozen=None).failure(whole, audio_asked=True).startswith(
        "silent")
    assert Thresholds(black=0.9).failure(night, audio_asked=False).startswith("black: 95%")
    mute = Measures(span_s=4.0, silent_s=4.0, has_audio=False)
    assert "no audio track" in Thresholds().failure(mute, audio_asked=True)


# -- the storyboard's `checks:` ------------------------------------------------------------------

def _plan(tmp_path: Path, shots: list[dict], **top: object):
    from flows.storyboard.plan import make_plan

    return make_plan(write_board(tmp_path, shots, **top))


def test_checks_merge_defaults_and_shots(tmp_path: Path) -> None:
    shots = [{"id": "a", "prompt": "x"},
             {"id": "b", "prompt": "x", "checks": {"frozen": False}},
             {"id": "c", "prompt": "x", "checks": False},
             {"id": "d", "prompt": "x", "checks": {"black": 0.5}}]
    plan = _plan(tmp_path, shots)
    got = {s.shot_id: s.checks for s in plan.shots}
    assert got["a"] == Thresholds(0.98, 1.0, 1.0)
    assert got["b"] == Thresholds(0.98, None, 1.0)
    assert got["c"] == Thresholds(None, None, None)
    assert got["d"] == Thresholds(0.5, 1.0, 1.0)
    plan = _plan(tmp_path, shots, defaults={"checks": False})
    got = {s.shot_id: s.checks for s in plan.shots}
    assert got["a"] == got["b"] == got["c"] == Thresholds(None, None, None)
    assert got["d"] == Thresholds(0.5, None, None)  # only what the shot turns on
    plan = _plan(tmp_path, [{"id": "a", "prompt": "x", "checks": True}],
                 defaults={"checks": {"black": 0.9, "silent": False}})
    assert plan.shots[0].checks == Thresholds(0.98, 1.0, 1.0)


@pytest.mark.parametrize("where, value", [("black", 2), ("black", 0), ("frozen", "yes"),
                                          ("silent", -0.5)])
def test_a_bad_threshold_names_its_place_and_what_is_accepted(tmp_path: Path, where: str,
                                                              value: object) -> None:
    shots = [{"id": f"s{i}", "prompt": "x"} for i in range(3)]
    shots[2]["checks"] = {where: value}
    with pytest.raises(SpecError) as exc:
        _plan(tmp_path, shots)
    text = str(exc.value)
    assert f"shots[2].checks.{where}" in text
    assert "up to 1" in text and "false to turn this check off" in text


def test_an_unknown_check_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        _plan(tmp_path, [{"id": "a", "prompt": "x"}], defaults={"checks": {"blak": 1}})
    assert "defaults.checks.blak" in str(exc.value)
    assert "black, frozen, silent" in str(exc.value)


# -- measured in the conform's decode, on real clips ----------------------------------------------

def _make(path: Path, video: str, audio: str | None = "sine=frequency=300:duration=3") -> Path:
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", video]
    if audio:
        cmd += ["-f", "lavfi", "-i", audio, "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-t", "3", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return path


SRC = "320x180:rate=24:duration=3"
# a night shot: the picture squeezed into luma 16..42 (average about 28 of 255)
NIGHT = f"testsrc2=size={SRC},lutyuv=y=16+(val-16)*0.12"
# a locked-off shot: one frame held, with one small thing moving across it
STILL = (f"testsrc2=size={SRC},trim=end_frame=1,tpad=stop=-1:stop_mode=clone,trim=duration=3[bg];"
         "color=c=white:size=24x24:rate=24:duration=3[box];"
         "[bg][box]overlay=x='20+t*40':y=70:shortest=1[out0]")
HELD = f"testsrc2=size={SRC},trim=end_frame=1,tpad=stop=-1:stop_mode=clone,trim=duration=3"


async def _measured(src: Path, tmp_path: Path) -> Measures:
    _, m = await conform_measured(src, tmp_path / f"{src.stem}.mov", FMT, 3.0)
    return m


async def test_black_and_held_clips_are_caught(tmp_path: Path) -> None:
    black = await _measured(_make(tmp_path / "black.mp4", f"color=c=black:size={SRC}"), tmp_path)
    assert black.black == pytest.approx(1.0)
    assert Thresholds().failure(black, audio_asked=False).startswith("black")
    held = await _measured(_make(tmp_path / "held.mp4", HELD), tmp_path)
    assert held.black == 0.0 and held.frozen == pytest.approx(1.0)
    assert Thresholds().failure(held, audio_asked=False).startswith("frozen")


async def test_a_night_shot_and_a_still_shot_pass_the_defaults(tmp_path: Path) -> None:
    night = await _measured(_make(tmp_path / "night.mp4", NIGHT), tmp_path)
    assert night.black == 0.0
    assert Thresholds().failure(night, audio_asked=True) is None
    still = await _measured(_make(tmp_path / "still.mp4", STILL), tmp_path)
    assert still.frozen < 0.5
    assert Thresholds().failure(still, audio_asked=True) is None


async def test_silence_counts_only_where_audio_was_asked(tmp_path: Path) -> None:
    quiet = await _measured(_make(tmp_path / "quiet.mp4", f"testsrc2=size={SRC}",
                                  "anullsrc=r=44100:cl=stereo"), tmp_path)
    assert quiet.has_audio and quiet.silent == pytest.approx(1.0)
    assert Thresholds().failure(quiet, audio_asked=False) is None
    assert Thresholds().failure(quiet, audio_asked=True).startswith("silent")
    mute = await _measured(_make(tmp_path / "mute.mp4", f"testsrc2=size={SRC}", None), tmp_path)
    assert not mute.has_audio
    assert "no audio track" in Thresholds().failure(mute, audio_asked=True)
    loud = await _measured(_make(tmp_path / "loud.mp4", f"testsrc2=size={SRC}"), tmp_path)
    assert loud.silent == 0.0


async def test_bars_and_the_held_end_are_not_measured(tmp_path: Path) -> None:
    """A portrait clip letterboxed into 16:9 is mostly bars, and a 2 s clip conformed to 3 s
    holds its last frame for a second: neither is black nor frozen."""
    src = _make(tmp_path / "tall.mp4", "testsrc2=size=180x320:rate=24:duration=2")
    _, m = await conform_measured(src, tmp_path / "tall.mov", FMT, 3.0)
    assert m.span_s == pytest.approx(2.0, abs=0.05)
    assert (m.black, m.frozen) == (0.0, 0.0)


async def test_a_cached_intermediate_keeps_its_measures(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = _make(tmp_path / "black.mp4", f"color=c=black:size={SRC}")
    cache = tmp_path / "conformed"
    _, first = await conform_measured(src, tmp_path / "a.mov", FMT, 3.0, cache_dir=cache)

    async def no_ffmpeg(*a: object, **k: object) -> str:
        raise AssertionError("a cache hit runs no ffmpeg")

    monkeypatch.setattr(conform_mod, "run_ffmpeg", no_ffmpeg)
    _, again = await conform_measured(src, tmp_path / "b.mov", FMT, 3.0, cache_dir=cache)
    assert again == first and again.black == pytest.approx(1.0)
    # an entry without its measures (made before the checks) is made again, not trusted
    for side in cache.rglob("*.checks.json"):
        side.unlink()
    with pytest.raises(AssertionError, match="no ffmpeg"):
        await conform_measured(src, tmp_path / "c.mov", FMT, 3.0, cache_dir=cache)


# -- through the shot code and the flow, against the emulator ------------------------------------

def mean_luma(path: Path, at: float) -> float:
    """The average luma (0-255) of the frame at `at` seconds, decoded by ffmpeg here."""
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", f"{at}", "-i", str(path),
                          "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         check=True, capture_output=True, timeout=60).stdout
    assert out, f"no frame at {at} s in {path}"
    return sum(out) / len(out)


SHOT = {"id": "a", "prompt": "a lighthouse", "provider": "fal", "model": "kling-3-pro",
        "duration": 3, "retries": 1}


async def test_a_black_clip_is_caught_retried_reported_and_kept_out_of_the_cut(
        run, emu_env, tmp_path: Path) -> None:
    emu = emu_env
    emu.inject("fal", "job", "black")
    spec = write_board(tmp_path, [dict(SHOT)], budget={"max_usd": 5})
    out = tmp_path / "out"
    result, rows = await run(spec, out)
    assert emu.stats("fal")["submits"] == 2
    refused, good = rows
    assert refused["status"] == "failed" and good["status"] == "done"
    assert refused["failure_reason"].startswith("check: black: 100% of the clip is black")
    # both clips were paid, and both are reported
    assert Decimal(refused["actual_usd"]) > 0
    assert total(rows) == charged(emu, "fal")
    # the refused download really was black, and the cut is not
    raw = sorted((out / "raw").glob("a-r*.mp4"))
    assert len(raw) == 2 and mean_luma(raw[0], 1.0) < 20
    final = out / "final.mp4"
    for at in (0.2, 1.5, 2.8):
        assert mean_luma(final, at) > 40
    page = (out / "review.html").read_text()
    assert "check: black" in page and f'href="raw/{raw[0].name}"' in page


async def test_checks_false_lets_the_black_clip_through(shot_run, emu_env,
                                                        tmp_path: Path) -> None:
    emu = emu_env
    emu.inject("fal", "job", "black")
    spec = write_board(tmp_path, [{**SHOT, "checks": False}], budget={"max_usd": 5})
    result, rows = await shot_run(spec, tmp_path / "out")
    assert result["ok"] and emu.stats("fal")["submits"] == 1
    [row] = rows
    assert row["status"] == "done" and not row["failure_reason"]
    [clip] = (tmp_path / "out" / "clips").glob("*.mov")
    assert mean_luma(clip, 1.0) < 20  # the black clip is the one the cut would use


async def test_a_frozen_clip_falls_back_and_a_turned_off_check_lets_it_through(
        shot_run, emu_env, tmp_path: Path) -> None:
    emu = emu_env
    emu.inject("fal", "job", "frozen")
    shot = {**SHOT, "retries": 0, "fallback": ["runway:gen4.5"]}
    spec = write_board(tmp_path, [shot], budget={"max_usd": 5})
    result, rows = await shot_run(spec, tmp_path / "out")
    assert result["ok"]
    assert [(r["provider"], r["status"]) for r in rows] == [("fal", "failed"), ("runway", "done")]
    assert rows[0]["failure_reason"].startswith("check: frozen")
    assert total(rows) == charged(emu)
    # the same fault with the frozen check turned off for the shot: the first clip is kept
    emu.reset()
    emu.inject("fal", "job", "frozen")
    shot = {**shot, "prompt": "a lighthouse, still", "checks": {"frozen": False}}
    spec = write_board(tmp_path / "off", [shot], budget={"max_usd": 5})
    result, rows = await shot_run(spec, tmp_path / "out-off")
    assert result["ok"] and [(r["provider"], r["status"]) for r in rows] == [("fal", "done")]


async def test_a_shot_whose_every_clip_fails_gets_no_clip_and_says_why(
        shot_run, emu_env, tmp_path: Path) -> None:
    emu = emu_env
    emu.inject("fal", "job", "black", times=2)
    spec = write_board(tmp_path, [dict(SHOT)], budget={"max_usd": 5})
    result, rows = await shot_run(spec, tmp_path / "out")
    assert result["failed"] == ["a"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["failure_reason"].startswith("check: black") for r in rows)
    assert total(rows) == charged(emu, "fal") > 0
    assert not list((tmp_path / "out" / "clips").glob("*.mov"))


async def test_a_cached_clip_that_fails_the_checks_is_not_reused(shot_run, emu_env,
                                                                 tmp_path: Path) -> None:
    """A black clip cached by a run with `checks: false` is refused (at no cost, and taking
    none of the shot's retries) by a run that checks; the new job's clip replaces it."""
    emu = emu_env
    emu.inject("fal", "job", "black")
    spec = write_board(tmp_path / "off", [{**SHOT, "checks": False}], budget={"max_usd": 5})
    await shot_run(spec, tmp_path / "first")
    spec = write_board(tmp_path / "on", [{**SHOT, "retries": 0}], budget={"max_usd": 5})
    result, rows = await shot_run(spec, tmp_path / "second")
    assert result["ok"] and emu.stats("fal")["submits"] == 2
    assert [r["status"] for r in rows] == ["skipped", "done"]
    assert rows[0]["failure_reason"].startswith("check: black")
    assert Decimal(rows[0]["actual_usd"]) == 0
    result, rows = await shot_run(spec, tmp_path / "third")  # the good clip, from the cache
    assert [r["status"] for r in rows] == ["cached"] and emu.stats("fal")["submits"] == 2


def test_plan_shows_the_checks_and_the_shots_that_differ(tmp_path, capsys):
    from flows.cli.commands import dispatch

    spec = tmp_path / "s.yaml"
    spec.write_text("""title: t
defaults: {provider: local, duration: 1, checks: {black: 0.9}}
shots:
  - {id: a, prompt: x}
  - {id: b, prompt: y, checks: {frozen: false}}
  - {id: c, prompt: z, checks: false}
  - {id: d, prompt: w}
""")
    assert dispatch(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "clip checks before the cut: black 90%, frozen 100%, silent 100%" in out
    assert "  b: black 90%, frozen off, silent 100%" in out
    assert "  c: off" in out
    assert "  a: " not in out and "  d: " not in out
