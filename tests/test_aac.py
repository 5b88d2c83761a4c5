"""The cut's AAC track in chunks and reused from the previous cut (flows/media/aac.py), checked
against the source PCM and against a single-pass encode (ffmpeg's own, as the cut was made
before), with the real ffmpeg and decoder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio

from flows.media import aac
from flows.media.assemble import Transition, assemble, concat_list
from flows.media.conform import PCM_ARGS, OutputFormat, as_argv, video_codec_args
from flows.media.ffmpeg_exec import ffmpeg_exe, run_ffmpeg_sync

SR = 48000
FMT = OutputFormat(320, 180, 24)
CLIP_S = 2  # 20 clips: a 40 s cut, long enough for chunks with their 10.9 s pre-roll
SLACK = 1.15  # spliced error per block may exceed the single pass's by this factor (+1 LSB)


def _signal(n: int, seed: int, noise: float, transients: list[int]) -> np.ndarray:
    """Stereo int16: a rising chirp, a 440 Hz tone, white noise, and a loud decaying 1.5 kHz
    square burst at each of `transients` (the worst case for a splice: a window switch)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 150 + 40 * seed
    x = (0.3 * np.sin(2 * np.pi * (f0 * t + 2000 / (2 * t[-1]) * t * t))
         + 0.15 * np.sin(2 * np.pi * 440 * t) + noise * rng.standard_normal(n))
    k = np.arange(400)
    burst = 0.9 * np.sign(np.sin(2 * np.pi * 1500 * k / SR)) * np.exp(-k / 100)
    for at in transients:
        end = min(n, at + len(k))
        x[at:end] += burst[: end - at]
    left = np.clip(x, -1, 1)
    right = np.roll(left, 37)  # the channels differ: M/S and stereo decisions are exercised
    return (np.stack([left, right], 1) * 32000).astype(np.int16)


def _pcm(path: Path) -> np.ndarray:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path),
                          "-map", "0:a:0", "-f", "s16le", "-ac", "2", "-ar", str(SR), "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int16).reshape(-1, 2).astype(float)


def _block_rms(err: np.ndarray, blocks: range) -> np.ndarray:
    return np.array([np.sqrt((err[b * 1024:(b + 1) * 1024] ** 2).mean()) for b in blocks])


def _single_pass(listfile: Path, out: Path) -> None:
    """The cut's audio as assemble made it before chunks: one ffmpeg, the whole concat list."""
    run_ffmpeg_sync(["-f", "concat", "-safe", "0", "-i", str(listfile), "-vn", "-c:a", "aac",
                     "-b:a", "192k", "-ar", "48000", "-f", "mp4", str(out)])


def _check_splices(src: np.ndarray, single: np.ndarray, spliced: np.ndarray,
                   at: list[int]) -> list[float]:
    """Per 1024-sample block around each splice (3 before, 3 after), the spliced track's
    error against the source is within SLACK of the single pass's; no click: its largest
    sample error there is within SLACK of the single pass's largest anywhere. Returns the
    worst block ratio."""
    e1, e2 = single - src, spliced - src
    worst = []
    for s in at:
        blocks = range(s // 1024 - 3, s // 1024 + 3)
        r1, r2 = _block_rms(e1, blocks), _block_rms(e2, blocks)
        assert (r2 <= SLACK * r1 + 1).all(), (s, r1.round(1), r2.round(1))
        window = slice(s - 2048, s + 2048)
        assert np.abs(e2[window]).max() <= SLACK * np.abs(e1).max() + 1, s
        worst.append(float((r2 / r1).max()))
    return worst


@pytest.mark.parametrize("noise", [0.01, 0.05])
async def test_chunked_encode_splices_inaudibly(tmp_path: Path, noise: float) -> None:
    n = 60 * SR + 517  # not a whole number of AAC frames
    chunks = aac.ranges(0, n, 3)
    assert len(chunks) == 3
    splices = [a for a, _ in chunks[1:]]
    assert all(s % 1024 == 0 for s in splices)
    src = _signal(n, 1, noise, splices)
    raw = tmp_path / "src.wav"
    _write_wav(raw, src)
    listfile = tmp_path / "list.txt"
    concat_list([raw], listfile)

    out = tmp_path / "spliced.m4a"
    stats = await aac.encode(listfile, [aac.Piece("src", n)], out, tmp_path, slots=3)
    assert (stats.chunks, stats.reused, stats.total) == (3, 0, n)
    _single_pass(listfile, tmp_path / "single.m4a")

    single, spliced = _pcm(tmp_path / "single.m4a"), _pcm(out)
    assert len(single) == len(spliced) == n  # exact: priming trimmed, last frame's padding too
    worst = _check_splices(src.astype(float), single, spliced, splices)
    # and overall no worse than the single pass
    e1, e2 = single - src, spliced - src
    assert np.sqrt((e2 ** 2).mean()) <= 1.05 * np.sqrt((e1 ** 2).mean())
    print(f"noise {noise}: worst block error ratio at the splices {max(worst):.3f}")


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "s16le",
                    "-ar", str(SR), "-ac", "2", "-i", "-", str(path)],
                   input=pcm.tobytes(), check=True)


def test_ranges_split_on_frames_and_balance_work() -> None:
    pre = (aac.PREROLL + aac.WINDOW) * aac.FRAME
    assert aac.ranges(0, 20 * SR, 2) == [(0, 20 * SR)]  # short audio: one encoder
    two = aac.ranges(0, 100 * SR, 2)
    assert len(two) == 2 and two[0][0] == 0 and two[-1][1] == 100 * SR
    assert two[1][0] % aac.FRAME == 0
    work = [b - a + min(a, pre) for a, b in two]
    assert abs(work[0] - work[1]) <= 2 * aac.FRAME  # each bound floored to a frame
    # after a reused prefix every range has a pre-roll; the ranges tile [start, total)
    rest = aac.ranges(47 * aac.FRAME, 100 * SR, 3)
    assert rest[0][0] == 47 * aac.FRAME and rest[-1][1] == 100 * SR
    assert all(a < b and b == c for (a, b), (c, _) in zip(rest, rest[1:], strict=False))


# -- the cut: 20 clips, one edited, made again into the same final.mp4 -----------------------

@pytest_asyncio.fixture(scope="module")
async def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """20 house intermediates with distinct demanding audio, and two others ("edited")."""
    d = tmp_path_factory.mktemp("aacclips")
    n = CLIP_S * SR

    def make(name: str, seed: int, seconds: int = CLIP_S) -> Path:
        raw, out = d / f"{name}.wav", d / f"{name}.mov"
        _write_wav(raw, _signal(seconds * SR, seed, 0.02, [n // 3]))
        run_ffmpeg_sync(["-f", "lavfi", "-i", f"testsrc2=s=320x180:r={FMT.fps}:d={seconds}",
                         "-i", str(raw), *as_argv(video_codec_args(FMT)), *as_argv(PCM_ARGS),
                         "-frames:v", str(seconds * FMT.fps), "-f", "mov", str(out)])
        raw.unlink()
        return out

    return {"cut": [make(f"c{i:02d}", i) for i in range(20)],
            "edits": [make(f"e{i}", 50 + i) for i in range(2)],
            "longer": [make("long", 60, CLIP_S + 1)]}


def _packets(path: Path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return [(p.pts, bytes(p)) for p in c.demux(s) if p.pts is not None]


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the sample range [lo, hi) that every encoder of the cut's audio was fed."""
    calls: list[tuple[int, int]] = []
    real = aac.encode

    async def spy(*args: object, **kwargs: object) -> aac.AudioStats:
        stats = await real(*args, **kwargs)  # type: ignore[arg-type]
        calls.extend(stats.ranges)
        return stats

    monkeypatch.setattr(aac, "encode", spy)
    return calls


def _timeline_pcm(files: list[Path]) -> np.ndarray:
    return np.concatenate([_pcm(f) for f in files])


async def _cut_ok(dest: Path, total_frames: int) -> np.ndarray:
    """final.mp4's audio decodes to exactly the cut's samples and lasts as long as its video."""
    pcm = _pcm(dest)
    assert len(pcm) == FMT.samples(total_frames)
    with av.open(str(dest)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        vdur, adur = float(v.duration * v.time_base), float(a.duration * a.time_base)
    assert abs(adur - vdur) <= 1 / FMT.fps and abs(vdur - total_frames / FMT.fps) <= 1e-6
    return pcm


@pytest.mark.parametrize(("edited", "longer"), [(10, False), (0, False), (10, True)])
async def test_edit_reuses_the_previous_cuts_audio(clips, tmp_path: Path, edited: int,
                                                   longer: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    cut = list(clips["cut"])
    dest = tmp_path / "final.mp4"
    await assemble(cut, dest, FMT)
    assert aac.record_path(dest).is_file()
    old = _packets(dest)
    assert calls[0][0] == 0
    calls.clear()

    cut[edited] = clips["longer" if longer else "edits"][0]
    total = (20 * CLIP_S + (1 if longer else 0)) * FMT.fps
    await assemble(cut, dest, FMT)
    got = await _cut_ok(dest, total)
    new = _packets(dest)
    assert new[0][0] == -1024  # the priming packet, trimmed by the edit list

    same = edited * CLIP_S * SR  # identical leading samples
    keep = max(0, (same // 1024 - aac.MARGIN) * 1024)
    first = min(lo for lo, _ in calls)
    if edited == 0:  # nothing before the change is identical: no leading packet reused
        assert keep == 0 and first == 0
    else:  # only what follows was encoded, its pre-roll inside the identical part
        assert first == keep - (aac.PREROLL + aac.WINDOW) * 1024
        # the old packets up to the splice, which may move back by WINDOW frames from keep
        # to where the new encoder codes better (aac._choose)
        lead = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
        assert lead >= (keep - aac.WINDOW * 1024) // 1024 + 1
    splices = [keep] if keep else []
    last = max(hi for _, hi in calls)
    if longer:  # the clips after the edit moved: every sample after it is encoded again
        assert last == len(got)
    else:  # they did not: their old packets are copied too, from a frame boundary after
        # the edited clip (+ MARGIN), where the splice back may move forward by WINDOW frames
        tail = (-(-(edited + 1) * CLIP_S * SR // 1024) + aac.MARGIN) * 1024
        assert last == tail + (aac.WINDOW + aac.POSTROLL) * 1024
        trail = next(i for i, (a, b) in enumerate(zip(old[::-1], new[::-1], strict=True))
                     if a != b)
        assert trail >= (len(got) - tail - aac.WINDOW * 1024) // 1024
        splices.append(tail)

    # the same cut from scratch (a new file) and as one ffmpeg pass: the reused track's error
    # per block is within SLACK of both around the splices, and overall
    scratch = tmp_path / "scratch" / "final.mp4"
    scratch.parent.mkdir()
    await assemble(cut, scratch, FMT)
    listfile = tmp_path / "list.txt"
    concat_list(cut, listfile)
    _single_pass(listfile, tmp_path / "single.m4a")
    src = _timeline_pcm(cut)
    for ref in (_pcm(scratch), _pcm(tmp_path / "single.m4a")):
        assert len(ref) == len(got) == len(src)
        _check_splices(src, ref, got, splices)
        assert np.sqrt(((got - src) ** 2).mean()) <= 1.05 * np.sqrt(((ref - src) ** 2).mean())


async def test_edit_with_transitions_reuses_up_to_the_junction(
        clips, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    cut = list(clips["cut"])
    transitions = [Transition("crossfade", 0.25)] * 19
    dest = tmp_path / "final.mp4"
    await assemble(cut, dest, FMT, transitions)
    calls.clear()
    cut[10] = clips["edits"][1]
    await assemble(cut, dest, FMT, transitions)
    join = round(0.25 * FMT.fps)
    total = 20 * CLIP_S * FMT.fps - 19 * join
    await _cut_ok(dest, total)
    # identical: clips 0-8 with their junctions, and clip 9's body up to its junction with 10
    same = FMT.samples(10 * CLIP_S * FMT.fps - 10 * join)
    keep = (same // 1024 - aac.MARGIN) * 1024
    assert min(lo for lo, _ in calls) == keep - (aac.PREROLL + aac.WINDOW) * 1024


async def test_a_stale_record_is_ignored(clips, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cut = list(clips["cut"])
    dest = tmp_path / "final.mp4"
    await assemble(cut, dest, FMT)
    parts = aac.pieces(cut, [CLIP_S * FMT.fps] * 20, [0] * 19, ["cut"] * 19, FMT)
    assert aac.reusable(dest, parts) == aac.Reuse(20 * CLIP_S * SR)  # unchanged: all of it
    edited = aac.pieces([*cut[:10], clips["edits"][0], *cut[11:]], [CLIP_S * FMT.fps] * 20,
                        [0] * 19, ["cut"] * 19, FMT)
    assert aac.reusable(dest, edited).head > 0

    # replaced by another file (same name): its identity no longer matches the record
    other = tmp_path / "other.mp4"
    await assemble(cut[:3], other, FMT)
    record = aac.record_path(dest).read_text()
    shutil.copy(other, dest)
    assert aac.reusable(dest, edited) == aac.Reuse()
    # touched in place (same size, new mtime)
    dest.unlink()
    await assemble(cut, dest, FMT)
    st = dest.stat()
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert aac.reusable(dest, edited) == aac.Reuse()
    # deleted: a full encode, and the cut is right
    dest.unlink()
    aac.record_path(dest).write_text(record)
    assert aac.reusable(dest, edited) == aac.Reuse()
    calls = _spy(monkeypatch)
    await assemble([*cut[:10], clips["edits"][0], *cut[11:]], dest, FMT)
    assert min(lo for lo, _ in calls) == 0
    await _cut_ok(dest, 20 * CLIP_S * FMT.fps)
    # a damaged record
    aac.record_path(dest).write_text("{not json")
    assert aac.reusable(dest, edited) == aac.Reuse()


async def test_chunk_times_are_whole_samples_for_conformed_vendor_clips(tmp_path: Path) -> None:
    """The emulator's 5 s clips (AAC at 44.1 kHz) through conform: the concat list's audio
    times are not whole samples of 1/48000 everywhere, and the encoder's packet times follow
    them; chunks must count samples, or a packet lands one sample off and the splice fails."""
    from flows.media.conform import conform
    from tests.emulator.media import clip_bytes

    clips = []
    for i in range(3):
        src = tmp_path / f"v{i}.mp4"
        src.write_bytes(clip_bytes(5, 320, 180, look=i))
        clips.append(tmp_path / f"v{i}.mov")
        await conform(src, clips[-1], FMT, 5.0)
    dest = tmp_path / "final.mp4"
    await assemble(clips, dest, FMT)
    await _cut_ok(dest, 3 * 5 * FMT.fps)
