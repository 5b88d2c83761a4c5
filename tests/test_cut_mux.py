"""The end of the edit loop: the cut written in this process in one pass (flows/media/mux.py)
and the contact sheet's tiles kept by content (flows/media/contact_sheet.py), checked against
what the ffmpeg commands they replace make, with the real ffmpeg and decoders."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest

from flows.media import assemble as assemble_mod
from flows.media import contact_sheet as sheet_mod
from flows.media.assemble import Transition, assemble, segments_dir, segments_list
from flows.media.conform import PCM_ARGS, OutputFormat, as_argv, video_codec_args
from flows.media.ffmpeg_exec import run_ffmpeg_sync

FMT = OutputFormat(320, 180, 24)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five 2 s house intermediates, each its own picture and tone."""
    d = tmp_path_factory.mktemp("muxclips")
    out = []
    for i in range(5):
        path = d / f"c{i}.mov"
        run_ffmpeg_sync(["-f", "lavfi", "-i", f"testsrc2=s=320x180:r=24:d=2,hue=h={70 * i}",
                         "-f", "lavfi", "-i", f"sine=f={300 + 90 * i}:r=48000:d=2",
                         *as_argv(video_codec_args(FMT)), *as_argv(PCM_ARGS),
                         "-frames:v", "48", "-f", "mov", str(path)])
        out.append(path)
    return out


def _boxes(path: Path) -> list[str]:
    """The file's top-level ISO BMFF boxes, in order."""
    names, data = [], path.read_bytes()
    at = 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size == 1:
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
        names.append(kind.decode("latin-1"))
        if size < 8:
            break
        at += size
    return names


def _without_parameter_sets(data: bytes) -> bytes:
    """An AVC sample (4-byte lengths) without its SPS and PPS units (NAL types 7 and 8)."""
    out, at = bytearray(), 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 4], "big")
        if data[at + 4] & 0x1F not in (7, 8):
            out += data[at:at + 4 + n]
        at += 4 + n
    return bytes(out)


def _packets(path: Path, kind: str) -> tuple[list[tuple[int, int, bool, bytes]], bytes]:
    with av.open(str(path)) as c:
        s = getattr(c.streams, kind)[0]
        return ([(p.pts, p.dts, p.is_keyframe, bytes(p)) for p in c.demux(s) if p.size],
                bytes(s.codec_context.extradata or b""))


async def test_the_cut_is_written_in_one_pass_as_the_concat_copy_would(
        clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    real = assemble_mod.run_ffmpeg

    async def spy(args: list[str], **kw: object) -> str:
        argvs.append(list(args))
        return await real(args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(assemble_mod, "run_ffmpeg", spy)
    transitions = [Transition(), Transition("crossfade", 0.5), Transition(), Transition()]
    dest = tmp_path / "final.mp4"
    await assemble(clips, dest, FMT, transitions)
    # ffmpeg rendered the junction's segments only: no mux, no faststart rewrite of the file
    assert argvs and not any("concat" in a or "+faststart" in a for a in argvs)
    boxes = _boxes(dest)
    assert boxes.index("moov") < boxes.index("mdat")  # plays while it downloads

    # the ffmpeg command it replaces, on the same segments and this cut's AAC track
    frames, joins, kinds = assemble_mod.layout(clips, FMT, transitions)
    listfile = await segments_list(clips, frames, joins, kinds, FMT, tmp_path,
                                   segments_dir(dest))
    ref = tmp_path / "ref.mp4"
    run_ffmpeg_sync(["-f", "concat", "-safe", "0", "-i", str(listfile), "-i", str(dest),
                     "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", "-movflags", "+faststart",
                     "-f", "mp4", str(ref)])
    (got_v, got_x), (ref_v, ref_x) = _packets(dest, "video"), _packets(ref, "video")
    assert got_x == ref_x and len(got_v) == len(ref_v) == sum(frames) - sum(joins)
    # the same packets at the same times; the concat copy repeats the stream's parameter sets
    # (the same as the headers') in each keyframe, this file has them in its headers only
    assert [p[:3] for p in got_v] == [p[:3] for p in ref_v]
    assert [p[3] for p in got_v] == [_without_parameter_sets(p[3]) for p in ref_v]
    assert _packets(dest, "audio") == _packets(ref, "audio")
    with av.open(str(dest)) as a, av.open(str(ref)) as b:
        for kind in ("video", "audio"):
            sa, sb = getattr(a.streams, kind)[0], getattr(b.streams, kind)[0]
            assert (sa.start_time, sa.duration, sa.frames) == (sb.start_time, sb.duration,
                                                               sb.frames)


async def test_contact_sheet_decodes_only_the_keyframes_it_has_not_seen(
        clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = sheet_mod._rgb

    def spy(frame: object, width: int) -> object:
        drawn.append(1)
        return real(frame, width)

    monkeypatch.setattr(sheet_mod, "_rgb", spy)
    cut = tmp_path / "final.mp4"
    await assemble(clips[:4], cut, FMT)  # 8 s: four tiles 2 s apart, one per clip's keyframe
    png = tmp_path / "contact_sheet.png"
    await sheet_mod.contact_sheet(cut, png, tiles=4, columns=2)
    assert len(drawn) == 4 and len(list(sheet_mod.tiles_dir(png).glob("*.npy"))) == 4

    drawn.clear()
    await assemble([clips[0], clips[4], clips[2], clips[3]], cut, FMT)  # clip 1 edited
    await sheet_mod.contact_sheet(cut, png, tiles=4, columns=2)
    assert len(drawn) == 1  # the edited clip's tile; the others were kept
    assert len(list(sheet_mod.tiles_dir(png).glob("*.npy"))) == 4  # only this sheet's

    # the same picture as a sheet drawn from nothing
    fresh = tmp_path / "fresh.png"
    times = [(i + 0.5) * 2.0 for i in range(4)]
    sheet_mod._draw(cut, fresh, times, 2, 320, False)
    assert png.read_bytes() == fresh.read_bytes()
    with av.open(str(png)) as c:
        px = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 10


def _audio(path: Path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]


async def test_edited_span_encoder_primed_before_its_clip_exists(
        clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer's loop: clip 3 of 4 is being made again. The span's encoder is fed its
    pre-roll (clips 0-2) before the clip exists; once it does, the cut encodes only the rest,
    and its audio is the same bytes as a cut made without priming."""
    import asyncio

    from flows.media import aac, aac_early

    chunks: list[object] = []
    real = aac._encode_chunk

    async def spy(*a: object, **kw: object) -> int:
        chunks.append(a)
        return await real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(aac, "_encode_chunk", spy)
    first = [*clips[:4]]
    edited = [clips[0], clips[1], clips[2], clips[4]]
    primed_dest, plain_dest = tmp_path / "a" / "final.mp4", tmp_path / "b" / "final.mp4"
    for d in (primed_dest, plain_dest):
        d.parent.mkdir()
        await assemble(first, d, FMT)
    assert _audio(primed_dest) == _audio(plain_dest)

    aac_early.prime(primed_dest, edited[:3], FMT)
    task = aac_early._PRIMED[primed_dest.resolve()]
    primed = await asyncio.shield(task)
    assert primed is not None and primed.proc.returncode is None  # waiting for the clip
    for _ in range(100):  # the pre-roll is encoded already, without the clip
        if primed.out.stat().st_size > 0:
            break
        await asyncio.sleep(0.05)
    assert primed.out.stat().st_size > 0

    chunks.clear()
    await assemble(edited, primed_dest, FMT)
    assert chunks == []  # no chunk encoder: the primed one coded the span
    assert primed.proc.returncode == 0 and not primed.folder.exists()
    await assemble(edited, plain_dest, FMT)
    assert len(chunks) == 1
    assert _audio(primed_dest) == _audio(plain_dest)
    assert aac.record_path(primed_dest).read_text() != ""

    # primed for a cut that then changes before the span too: killed, and the cut is right
    aac_early.prime(primed_dest, edited[:3], FMT)
    primed = await asyncio.shield(aac_early._PRIMED[primed_dest.resolve()])
    assert primed is not None
    chunks.clear()
    again = [clips[1], clips[0], clips[2], clips[3]]
    await assemble(again, primed_dest, FMT)
    await assemble(again, plain_dest, FMT)
    assert len(chunks) == 2 and await asyncio.wait_for(primed.proc.wait(), 10) != 0
    assert not primed.folder.exists()
    assert _audio(primed_dest) == _audio(plain_dest)


async def test_the_run_primes_the_span_of_the_first_shot_not_done_as_before(
        clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from flows.run import early_audio
    from flows.storyboard.plan import make_plan
    from tests.storyboards import write_board

    primed: list[list[Path]] = []
    monkeypatch.setattr(early_audio.aac_early, "prime",
                        lambda dest, cs, fmt: primed.append(list(cs)))
    monkeypatch.setattr(early_audio.aac_early, "discard", lambda dest: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    await assemble(clips[:4], run_dir / "final.mp4", FMT)  # the previous cut: clips 0-3

    def plan(transition: str = "cut") -> early_audio.Plan:
        shots = [{"id": f"s{i}", "prompt": f"shot {i}", "duration": 5} for i in range(4)]
        shots[0]["transition"] = {"kind": transition, "duration": 0.5}
        board = write_board(tmp_path / transition, shots,
                            output={"size": "320x180", "fps": 24},
                            defaults={"provider": "fal", "model": "kling-2.5-turbo-pro"})
        return make_plan(str(board), {}, None)

    async def done(early: early_audio.EarlyAudio, shot: int, clip: Path | None) -> None:
        early.done(f"s{shot}", clip)
        for _ in range(500):  # until the watcher has looked at every clip it was given
            await asyncio.sleep(0.01)
            if not early.wake.is_set() and set(early.same) == set(early.clips):
                break
        await asyncio.sleep(0.02)

    early = early_audio.EarlyAudio(plan(), run_dir)
    await done(early, 0, clips[0])
    assert primed == [[clips[0]]]  # s1 is not done: the span starts there
    await done(early, 1, clips[1])  # ... and s1 is the same clip as before: from s2 on
    assert primed == [[clips[0]], clips[:2]]
    await done(early, 3, clips[3])
    await done(early, 2, clips[4])  # s2 edited: what was primed is the span
    assert primed == [[clips[0]], clips[:2]]
    early.close()

    primed.clear()
    early = early_audio.EarlyAudio(plan(), run_dir)
    await done(early, 1, clips[4])  # s1 edited, done before s0
    assert primed == []
    await done(early, 0, clips[0])
    assert primed == [[clips[0]]]
    early.close()

    primed.clear()
    for first, board in ((None, plan()), (clips[0], plan("crossfade"))):
        early = early_audio.EarlyAudio(board, run_dir)  # a slate; a junction before the span
        await done(early, 0, first)
        await done(early, 2, clips[2])
        early.close()
    assert primed == []


async def test_exact_frame_sheet_of_an_edit_decodes_only_its_new_frames(
        clips: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ffmpeg_sheets: list[Path] = []
    decoded: list[float] = []
    real_ffmpeg, real_frame = sheet_mod._draw_ffmpeg, sheet_mod._frame_at

    async def spy_ffmpeg(video: Path, out: Path, *a: object) -> None:
        ffmpeg_sheets.append(out)
        await real_ffmpeg(video, out, *a)  # type: ignore[arg-type]

    def spy_frame(container: object, stream: object, t: float, exact: bool) -> object:
        decoded.append(t)
        return real_frame(container, stream, t, exact)

    monkeypatch.setattr(sheet_mod, "_draw_ffmpeg", spy_ffmpeg)
    monkeypatch.setattr(sheet_mod, "_frame_at", spy_frame)
    cut = tmp_path / "final.mp4"
    await assemble(clips[:4], cut, FMT)  # 8 s: 12 tiles 0.67 s apart, exact frames
    png = tmp_path / "contact_sheet.png"
    await sheet_mod.contact_sheet(cut, png)
    assert len(ffmpeg_sheets) == 1 and decoded == []  # a new sheet: ffmpeg draws it
    assert len(list(sheet_mod.tiles_dir(png).glob("*.npy"))) == 12

    await assemble([clips[0], clips[4], clips[2], clips[3]], cut, FMT)  # clip 1 (2-4 s) edited
    ffmpeg_sheets.clear()
    await sheet_mod.contact_sheet(cut, png)
    # the frames showing at 2.33, 3.0 and 3.67 s (24 fps), the tiles inside the edited clip
    assert ffmpeg_sheets == [] and [int(t * 24) for t in decoded] == [56, 72, 88]
    assert len(list(sheet_mod.tiles_dir(png).glob("*.npy"))) == 12

    # the sheet ffmpeg draws of the edited cut from nothing: the same tiles where nothing
    # changed, within swscale's rounding in the three decoded here
    fresh = tmp_path / "fresh.png"
    await real_ffmpeg(cut, fresh, [(int((i + 0.5) * 8 / 12 * 24 + 1e-6) + 0.5) / 24
                                   for i in range(12)], 4, 320, 1 / 24)

    def pixels(path: Path) -> np.ndarray:
        with av.open(str(path)) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)

    got, ref = pixels(png), pixels(fresh)
    assert got.shape == ref.shape
    rows = (4 + 180 + 4, 4 + 2 * (180 + 4))  # tiles 0-3, then 4-7 (3, 4, 5 are new)
    assert (got[:rows[0], :4 + 3 * 324] == ref[:rows[0], :4 + 3 * 324]).all()
    assert (got[rows[1]:] == ref[rows[1]:]).all()
    assert np.abs(got - ref).mean() < 2


async def test_every_tile_is_the_frame_showing_at_its_time(clips: list[Path],
                                                            tmp_path: Path) -> None:
    """14 s, 12 tiles: tile i shows the frame on screen at (i + 0.5) x 14/12 s, whether
    ffmpeg draws the sheet (from nothing) or this process decodes the tiles an edit changed.
    Several of those times fall on a frame's start where a millisecond argv rounds up."""
    cut, png = tmp_path / "final.mp4", tmp_path / "contact_sheet.png"

    def check() -> None:
        with av.open(str(cut)) as c:
            frames = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
        with av.open(str(png)) as c:
            sheet = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
        for i in range(12):
            k = int((i + 0.5) * 14 / 12 * 24 + 1e-6)  # the frame showing then (starts at 0)
            y, x = 4 + (i // 4) * (180 + 4), 4 + (i % 4) * (320 + 4)
            tile = sheet[y:y + 180, x:x + 320]
            near = {j: np.abs(tile - frames[j]).mean() for j in (k - 1, k, k + 1)
                    if 0 <= j < len(frames)}
            assert min(near, key=near.get) == k, (i, k, near)

    order = [0, 1, 2, 3, 4, 0, 1]
    await assemble([clips[j] for j in order], cut, FMT)
    await sheet_mod.contact_sheet(cut, png)  # every tile new: ffmpeg draws them
    check()
    order[3] = 2  # 6-8 s edited: its tiles (6.42 and 7.58 s) are decoded here
    await assemble([clips[j] for j in order], cut, FMT)
    await sheet_mod.contact_sheet(cut, png)
    check()
