"""The media layer against the real ffmpeg: heterogeneous synthetic "vendor" clips, tiny sizes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from flows.media import animatic as animatic_mod
from flows.media.animatic import render_animatic, wrap
from flows.media.assemble import (
    Transition,
    assemble,
    concat_list,
    junction_frames,
    segments_dir,
)
from flows.media.conform import OutputFormat, conform
from flows.media.contact_sheet import contact_sheet
from flows.media.ffmpeg_exec import _Slots, run_ffmpeg, run_ffmpeg_sync
from flows.media.probe import probe, verify_clip
from providers.errors import BadMediaError, MediaError

FMT = OutputFormat(320, 180, 24)
FRAME = 1 / FMT.fps
X264 = ["-c:v", "libx264", "-preset", "ultrafast"]
NASTY = ("He said \"it's 100% done\": C:\\path\\to\\x; [a,b] 'quoted' %{pts} \\n {x} "
         "🎬 日本語のテキスト 中文 — café\tline\nbreak")

# name: (ffmpeg args before the output path, file suffix, seconds asked for)
SOURCES: dict[str, tuple[list[str], str, float]] = {
    "land24": (["-f", "lavfi", "-i", "testsrc2=s=320x180:r=24:d=1", "-f", "lavfi",
                "-i", "sine=f=440:r=44100:d=1", *X264, "-c:a", "aac", "-ac", "1",
                "-movflags", "+faststart"], ".mp4", 1.0),
    # shorter than asked (held last frame), portrait, 4:4:4, no audio
    "portrait30": (["-f", "lavfi", "-i", "testsrc2=s=90x160:r=30:d=1", *X264,
                    "-pix_fmt", "yuv444p"], ".mp4", 1.5),
    # 720x480-style anamorphic: 240x160 pixels shown 16:9 through SAR 32:27
    "anamorphic25": (["-f", "lavfi", "-i", "color=c=white:s=240x160:r=25:d=1,setsar=32/27",
                      "-f", "lavfi", "-i", "anoisesrc=d=1:r=48000:a=0.1", *X264, "-c:a", "aac",
                      "-ac", "2"], ".mp4", 1.0),
    "vp9_60": (["-f", "lavfi", "-i", "testsrc2=s=256x144:r=60:d=1.2", "-f", "lavfi",
                "-i", "sine=r=48000:d=1.2", "-c:v", "libvpx-vp9", "-deadline", "realtime",
                "-cpu-used", "8", "-c:a", "libopus"], ".webm", 1.2),
    # longer than asked (trimmed)
    "long30": (["-f", "lavfi", "-i", "testsrc2=s=320x240:r=30:d=3", *X264], ".mp4", 1.0),
    # black with one white frame at 0.6 s and a 1 kHz beep at the same instant
    "sync25": (["-f", "lavfi", "-i",
                "color=c=black:s=160x90:r=25:d=1.2,drawbox=c=white:t=fill:enable='eq(n,15)'",
                "-f", "lavfi", "-i",
                "aevalsrc='if(between(t,0.6,0.7),0.8*sin(2*PI*1000*t),0)':s=44100:d=1.2",
                *X264, "-c:a", "aac"], ".mp4", 1.2),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("src")
    out = {}
    for name, (args, suffix, _) in SOURCES.items():
        out[name] = d / f"{name}{suffix}"
        run_ffmpeg_sync([*args, str(out[name])])
    return out


@pytest_asyncio.fixture(scope="module")
async def conformed(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("conformed")
    names = list(SOURCES)
    infos = await asyncio.gather(*(conform(sources[n], d / f"{n}.mov", FMT, SOURCES[n][2])
                                   for n in names))
    return {n: (d / f"{n}.mov", info) for n, info in zip(names, infos, strict=True)}


def _gray(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="gray").astype(float)
    raise AssertionError(f"{path} has no frame {index}")


def _decode_all(path: Path) -> int:
    """Full decode that fails on any error; returns the decoded frame count."""
    run_ffmpeg_sync(["-xerror", "-i", str(path), "-f", "null", "-"])
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _flash_minus_beep(path: Path, start: float, end: float) -> float:
    """Time of the white frame minus onset of the beep, both searched in [start, end)."""
    flash = beep = None
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            if start <= f.time < end and f.to_ndarray(format="gray").mean() > 128:
                flash = f.time
                break
    with av.open(str(path)) as c:
        for f in c.decode(audio=0):
            x = np.abs(f.to_ndarray()[0])
            t = f.time + np.arange(len(x)) / f.sample_rate
            hit = np.nonzero((x > 0.3) & (t >= start) & (t < end))[0]
            if len(hit):
                beep = float(t[hit[0]])
                break
    assert flash is not None and beep is not None, (flash, beep)
    return flash - beep


# ---------------------------------------------------------------------------------- conform


@pytest.mark.parametrize("name", list(SOURCES))
async def test_conform_exact_frames_and_house_format(conformed, name: str) -> None:
    path, info = conformed[name]
    n = FMT.frames(SOURCES[name][2])
    assert info.nb_frames == n and probe(path, count=True).nb_frames == n
    assert (info.width, info.height, info.fps, info.sar) == (320, 180, 24.0, 1.0)
    assert (info.video_codec, info.pix_fmt, info.audio_codec) == ("h264", "yuv420p", "pcm_s16le")
    assert info.audio_duration == pytest.approx(n / 24, abs=1e-3)
    assert info.duration == pytest.approx(n / 24, abs=1e-3)


async def test_conform_respects_sample_aspect_ratio(conformed) -> None:
    # 240x160 at SAR 32:27 is 16:9 on screen: it must fill 320x180, with no pillars.
    frame = _gray(conformed["anamorphic25"][0], 5)
    assert frame[:, :4].mean() > 200 and frame[:, -4:].mean() > 200


async def test_conform_pad_and_crop(tmp_path: Path) -> None:
    src = tmp_path / "white portrait.mp4"
    run_ffmpeg_sync(["-f", "lavfi", "-i", "color=c=white:s=90x160:r=30:d=0.5", *X264, str(src)])
    padded = await conform(src, tmp_path / "pad.mov", FMT, 0.5)
    cropped = await conform(src, tmp_path / "crop.mov",
                            OutputFormat(320, 180, 24, fit="crop"), 0.5)
    assert padded.nb_frames == cropped.nb_frames == 12
    pad = _gray(tmp_path / "pad.mov", 3)
    lit = np.nonzero(pad.max(axis=0) > 128)[0]
    assert pad[:, :20].max() < 40 and pad[:, -20:].max() < 40  # letterbox bars
    assert abs(len(lit) - 180 * 90 / 160) <= 4  # picture keeps its 9:16 shape
    assert _gray(tmp_path / "crop.mov", 3).min() > 200  # fills the frame


async def test_conform_holds_last_frame_of_short_source(conformed) -> None:
    path = conformed["portrait30"][0]  # 1 s of source stretched to 1.5 s
    assert np.abs(_gray(path, 30) - _gray(path, 35)).mean() < 1.0
    assert np.abs(_gray(path, 2) - _gray(path, 20)).mean() > 1.0  # it did move before


async def test_conform_writes_atomically_and_reports_ffmpeg_failure(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    with pytest.raises((MediaError, BadMediaError)):
        await conform(bad, tmp_path / "out.mov", FMT, 1.0)
    assert list(tmp_path.iterdir()) == [bad]  # no partial output left behind


# --------------------------------------------------------------------------------- assemble


async def test_assemble_hard_cuts(conformed, tmp_path: Path) -> None:
    odd = tmp_path / "it's a dir, [1]"
    odd.mkdir()
    clips = []
    for name in SOURCES:
        clips.append(odd / f"clip '{name}'.mov")
        shutil.copy(conformed[name][0], clips[-1])
    frames = [conformed[n][1].nb_frames for n in SOURCES]
    out = tmp_path / "final.mp4"
    info = await assemble(clips, out, FMT)
    total = sum(frames)
    assert info.duration == pytest.approx(total / 24, abs=FRAME)
    assert info.nb_frames == total
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert abs(info.audio_duration - info.duration) <= FRAME
    assert _decode_all(out) == total
    sync_start = sum(frames[:-1]) / 24
    assert abs(_flash_minus_beep(out, sync_start, sync_start + 1.2)) <= FRAME + 0.002
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


async def test_assemble_transitions(conformed, tmp_path: Path) -> None:
    names = ["land24", "anamorphic25", "vp9_60", "sync25"]
    clips = [conformed[n][0] for n in names]
    frames = [conformed[n][1].nb_frames for n in names]  # 24, 24, 29, 29
    transitions = [Transition("crossfade", 0.5), Transition("fade_black", 0.25),
                   Transition("crossfade", 0.25)]
    out = tmp_path / "xfade.mp4"
    info = await assemble(clips, out, FMT, transitions)
    joins = [12, 6, 6]
    total = sum(frames) - sum(joins)
    assert info.duration == pytest.approx((sum(frames) / 24) - 1.0, abs=FRAME)  # sum(d) - sum(T)
    assert info.nb_frames == total == _decode_all(out)
    assert abs(info.audio_duration - info.duration) <= FRAME
    start = (sum(frames[:3]) - sum(joins)) / 24  # where the sync clip's frame 0 plays
    assert abs(_flash_minus_beep(out, start + 0.3, start + 1.2)) <= FRAME + 0.002
    # the crossfade really blends: mid-junction frame differs from both neighbours' frames
    mid = _gray(out, 12 + 6)
    assert np.abs(mid - _gray(clips[1], 6)).mean() > 1 and np.abs(mid - _gray(clips[0], 18)).mean() > 1


def _video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


async def test_edited_cut_renders_only_the_segments_of_the_changed_clip(conformed,
                                                                        tmp_path: Path) -> None:
    """The edit loop: clip 3 of 3 replaced, cut again into the same file. The body and the
    junction that touch only clips 1-2 are the previous cut's files, untouched; the cut's
    picture is the one a cut made from nothing has (packet for packet); nothing else stays."""
    xf = [Transition("crossfade", 0.25), Transition("crossfade", 0.25)]
    first = [conformed[n][0] for n in ("land24", "anamorphic25", "vp9_60")]
    edited = [*first[:2], conformed["sync25"][0]]
    out = tmp_path / "loop" / "final.mp4"
    out.parent.mkdir()
    await assemble(first, out, FMT, xf)
    segs = segments_dir(out)
    before = {p.name: p.stat().st_mtime_ns for p in segs.iterdir()}
    assert len(before) == 5  # 3 bodies, 2 junctions
    await assemble(edited, out, FMT, xf)
    after = {p.name: p.stat().st_mtime_ns for p in segs.iterdir()}
    kept = {k for k in before if after.get(k) == before[k]}
    assert len(after) == 5 and len(kept) == 3  # clip 1's body, junction 1-2, clip 2's body
    fresh = tmp_path / "fresh" / "final.mp4"
    fresh.parent.mkdir()
    await assemble(edited, fresh, FMT, xf)
    assert _video_packets(out) == _video_packets(fresh)


async def test_transition_clamped_to_half_the_shorter_clip(conformed, tmp_path: Path) -> None:
    clips = [conformed["land24"][0], conformed["long30"][0]]  # 24 frames each
    info = await assemble(clips, tmp_path / "c.mp4", FMT, [Transition("crossfade", 5.0)])
    assert info.nb_frames == 24 + 24 - 12
    assert junction_frames([24, 10], [Transition("crossfade", 1.0)], 24) == [5]
    assert junction_frames([24, 24], [Transition("cut", 1.0)], 24) == [0]
    assert junction_frames([24, 24], [Transition("fade_black", 0.0)], 24) == [0]


async def test_assemble_refuses_unconformed_clips(sources, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="conform it first"):
        await assemble([sources["land24"], sources["long30"]], tmp_path / "x.mp4", FMT)
    with pytest.raises(ValueError):
        await assemble([], tmp_path / "x.mp4", FMT)


def test_concat_list_quotes_apostrophes(tmp_path: Path) -> None:
    listfile = tmp_path / "l.txt"
    concat_list([Path("/a/it's here.mov")], listfile)
    assert listfile.read_text() == "file '/a/it'\\''s here.mov'\n"


# ------------------------------------------------------------------------------ verify_clip


async def test_verify_clip_accepts_good_files(sources) -> None:
    info = verify_clip(sources["vp9_60"], expect_duration=1.2)
    assert info.nb_frames == 72 and info.video_codec == "vp9"  # WebM: counted, not in header
    assert verify_clip(sources["land24"]).nb_frames == 24


async def test_verify_clip_catches_bad_downloads(tmp_path: Path, sources) -> None:
    good = tmp_path / "good.mp4"
    run_ffmpeg_sync(["-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=2", *X264,
                     "-movflags", "+faststart", str(good)])
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    assert probe(cut).nb_frames == 50  # the header still claims every frame...
    with pytest.raises(BadMediaError, match="truncated"):  # ...but the packets are not there
        verify_clip(cut)
    html = tmp_path / "page.mp4"
    html.write_text("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")
    with pytest.raises(BadMediaError, match="HTML"):
        verify_clip(html)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(BadMediaError, match="empty"):
        verify_clip(empty)
    with pytest.raises(BadMediaError, match="far less"):
        verify_clip(good, expect_duration=5.0)
    audio_only = tmp_path / "audio.m4a"
    run_ffmpeg_sync(["-f", "lavfi", "-i", "sine=d=0.5", "-c:a", "aac", str(audio_only)])
    with pytest.raises(BadMediaError, match="no video stream"):
        verify_clip(audio_only)
    assert verify_clip(good, expect_duration=2.2).nb_frames == 50  # a little short is fine


# --------------------------------------------------------------------------------- animatic


async def test_animatic_title_card_with_hostile_prompt(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{x}.mp4" for x in "abc")
    await render_animatic(a, prompt=NASTY, duration=1.0, width=160, height=90, fps=25, seed=7,
                          title="Shot 1: 'intro' 100%")
    info = probe(a)
    assert (info.nb_frames, info.width, info.height, info.fps) == (25, 160, 90, 25.0)
    assert info.has_audio and abs(info.audio_duration - 1.0) <= 1 / 25
    assert verify_clip(a, expect_duration=1.0).nb_frames == 25
    assert np.abs(_gray(a, 0) - _gray(a, 24)).mean() > 0.5  # it moves
    # same seed, same picture; another seed, another picture
    await render_animatic(b, prompt=NASTY, duration=1.0, width=160, height=90, fps=25, seed=7,
                          title="Shot 1: 'intro' 100%")
    await render_animatic(c, prompt=NASTY, duration=1.0, width=160, height=90, fps=25, seed=8)
    assert np.abs(_gray(a, 12) - _gray(b, 12)).mean() < 0.5
    assert np.abs(_gray(a, 12) - _gray(c, 12)).mean() > 3


async def test_animatic_over_image(tmp_path: Path) -> None:
    img = tmp_path / "ref photo's.jpg"
    Image.radial_gradient("L").convert("RGB").resize((400, 300)).save(img)
    out = tmp_path / "pan.mp4"
    await render_animatic(out, prompt=NASTY, duration=1.5, width=192, height=108, fps=24, seed=3,
                          image=img)
    info = verify_clip(out, expect_duration=1.5)
    assert (info.nb_frames, info.width, info.height) == (36, 192, 108)
    assert np.abs(_gray(out, 0) - _gray(out, 35)).mean() > 0.5  # the camera moves
    with pytest.raises(MediaError, match="cannot be read"):
        bad = tmp_path / "bad.png"
        bad.write_text("not an image")
        await render_animatic(tmp_path / "x.mp4", prompt="p", duration=1, width=160, height=90,
                              fps=24, seed=1, image=bad)


async def test_animatic_without_a_font_still_renders(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(animatic_mod, "font_file", lambda: None)
    out = await render_animatic(tmp_path / "nofont.mp4", prompt=NASTY, duration=0.5, width=160,
                                height=90, fps=30, seed=1)
    assert probe(out).nb_frames == 15


def test_wrap_fits_and_truncates() -> None:
    lines = wrap("word " * 40 + "日本語のテキスト" * 5, 100, 12, 3, None)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert wrap("a\tb\nc\x00d", 1000, 12, 3, None) == ["a b c d"]


# ------------------------------------------------------------------- contact sheet, runner


async def test_contact_sheet(conformed, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    await assemble([conformed["land24"][0], conformed["long30"][0]], cut, FMT)
    png = await contact_sheet(cut, tmp_path / "sheet.png", tiles=6, columns=4)
    with Image.open(png) as im:
        assert im.size == (4 + 4 * 320 + 3 * 4 + 4, 4 + 2 * 180 + 4 + 4)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10
    # tiles a keyframe interval apart or more: drawn in-process (PyAV), the same layout
    png = await contact_sheet(cut, tmp_path / "sheet2.png", tiles=2, columns=2)
    with Image.open(png) as im:
        assert im.size == (4 + 2 * 320 + 4 + 4, 4 + 180 + 4)
        px = np.asarray(im.convert("RGB"))
        assert (px[0, 0] == 0x20).all() and len(np.unique(px[4:184, 4:324].sum(axis=2))) > 10


async def test_run_ffmpeg_errors_and_timeout() -> None:
    with pytest.raises(MediaError) as err:
        await run_ffmpeg(["-i", "/nonexistent/x.mp4", "-f", "null", "-"])
    assert err.value.argv[-1] == "-" and "nonexistent" in err.value.stderr_tail
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="did not finish"):
        await run_ffmpeg(["-re", "-f", "lavfi", "-i", "anullsrc", "-f", "null", "-"], timeout=0.5)
    assert time.monotonic() - t0 < 5


async def free_slots(slots: _Slots, most: int = 8) -> int:
    """How many slots can be taken at once right now, each without waiting: what a new ffmpeg
    would find (a waiter left behind by a cancellation would make it 0)."""
    async with contextlib.AsyncExitStack() as held:
        for n in range(most):
            try:
                await asyncio.wait_for(held.enter_async_context(slots()), 0.05)
            except TimeoutError:
                return n
    return most


async def test_slots_limit_concurrency_and_survive_cancellation() -> None:
    slots, running, peak = _Slots(2), 0, 0

    async def job() -> None:
        nonlocal running, peak
        async with slots:
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(0.02)
            finally:
                running -= 1

    waiter = asyncio.ensure_future(asyncio.gather(*(job() for _ in range(3))))
    await asyncio.sleep(0)
    waiter.cancel()  # cancel while some wait for a slot
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.gather(*(job() for _ in range(6)))
    assert peak == 2 and running == 0
    assert await free_slots(slots) == 2  # every slot came back, no stale waiter in the queue



async def test_background_work_yields_its_turn() -> None:
    """Previews (background) queued first still let a conform or the cut queued later go
    first; with nobody else waiting they run."""
    slots, order = _Slots(1), []

    async def job(name: str, background: bool) -> None:
        async with slots(background):
            order.append(name)
            await asyncio.sleep(0.01)

    async with slots():  # the core is busy while the others queue up
        tasks = [asyncio.ensure_future(job("preview1", True)),
                 asyncio.ensure_future(job("preview2", True))]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(job("cut", False)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["cut", "preview1", "preview2"]
    assert await free_slots(slots) == 1


async def test_a_lone_ffmpeg_decodes_on_every_core() -> None:
    cores = os.cpu_count() or 1
    slots = _Slots(cores)
    async with slots():
        assert slots.threads() == cores  # alone: all of them
        if cores > 1:
            async with slots():
                assert slots.threads() == cores // 2
    one = _Slots(1)
    async with one():
        waiting = asyncio.ensure_future(one.acquire())
        await asyncio.sleep(0)
        assert one.threads() == 1  # a smaller limit than the cores is kept as asked
    await waiting
    one._release()

def _ffmpeg_children() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:]
            if "ffmpeg" in comm and int(rest.split()[1]) == os.getpid():
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_cancelling_run_ffmpeg_kills_the_process() -> None:
    task = asyncio.ensure_future(
        run_ffmpeg(["-re", "-f", "lavfi", "-i", "anullsrc", "-f", "null", "-"]))
    for _ in range(50):
        await asyncio.sleep(0.05)
        if children := _ffmpeg_children():
            break
    assert children
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
