"""Join conformed clips into the final MP4: stream-copy the video, AAC from flows.media.aac.

Transitions render only the junctions, each as its own short segment in the house format, and
everything is then joined by the concat demuxer with `-c:v copy` (one chained xfade graph keeps
every input open: docs/ffmpeg-notes.md, bench/README.md P6). A junction of T frames overlaps
the tail of clip i with the head of clip i+1, so the cut lasts sum(d) - sum(T).

Choice for the bodies: a clip that touches a transition is trimmed on exact frames
(trim/atrim on frame and sample indices) and its body re-encoded with the house settings, so
that it starts on a keyframe; clips with hard cuts on both sides are copied untouched. This
costs one short re-encode per touched clip and keeps every join frame-exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flows.media import aac
from flows.media.conform import PCM_ARGS, OutputFormat, as_argv, temp_name, video_codec_args
from flows.media.ffmpeg_exec import run_ffmpeg
from flows.media.mux import NotJoinable, VideoTrack
from flows.media.probe import VideoInfo, probe
from providers.errors import MediaError

XFADE = {"crossfade": "fade", "fade_black": "fadeblack"}


@dataclass(frozen=True)
class Transition:
    kind: Literal["cut", "crossfade", "fade_black"] = "cut"
    duration: float = 0.0


def junction_frames(frames: list[int], transitions: list[Transition], fps: int) -> list[int]:
    """Frames of overlap at each junction: 0 for cuts, at most half the shorter neighbour."""
    out = []
    for i, t in enumerate(transitions):
        if t.kind == "cut" or t.duration <= 0:
            out.append(0)
        else:
            out.append(max(0, min(round(t.duration * fps), frames[i] // 2, frames[i + 1] // 2)))
    return out


def concat_list(paths: list[Path], listfile: Path) -> None:
    """Concat demuxer list: absolute paths, single-quoted, ' written as '\\''
    (https://ffmpeg.org/ffmpeg-formats.html#concat-1, ffmpeg-utils.html#Quoting-and-escaping)."""
    with open(listfile, "w", encoding="utf-8") as f:
        for p in paths:
            s = str(Path(p).resolve()).replace("\\", "/").replace("'", "'\\''")
            f.write(f"file '{s}'\n")


def _check_house(path: Path, info: VideoInfo, fmt: OutputFormat) -> None:
    if (
        (info.width, info.height) != (fmt.width, fmt.height)
        or abs(info.fps - fmt.fps) > 1e-3
        or info.video_codec != "h264"
        or info.pix_fmt != "yuv420p"
        or info.audio_codec != "pcm_s16le"
        or not info.nb_frames
    ):
        raise MediaError(
            f"{path.name} is not a conformed {fmt.width}x{fmt.height}@{fmt.fps} clip "
            f"({info.width}x{info.height}@{info.fps:g} {info.video_codec}/{info.audio_codec}); "
            "conform it first"
        )


def _encode_args(fmt: OutputFormat, frames: int, out: Path) -> list[str]:
    return [*as_argv(video_codec_args(fmt)), *as_argv(PCM_ARGS), "-frames:v", str(frames),
            "-f", "mov", str(out)]


def _at(frame: float, fmt: OutputFormat) -> str:
    """A time half a frame before `frame`: as -ss it keeps that frame and drops the one
    before; as -t it keeps frames up to `frame - 1`. Frame-exact on 1/fps timestamps."""
    return f"{max(0.0, frame - 0.5) / fmt.fps:.6f}"


# Decoders single-threaded like the encoders: two ffmpeg run at once on a 2-core machine.
_IN = ["-threads", "1"]


async def _render_body(clip: Path, out: Path, fmt: OutputFormat, start: int, end: int) -> None:
    graph = (
        f"[0:v]trim=start_frame={start}:end_frame={end},setpts=PTS-STARTPTS[v];"
        f"[0:a]atrim=start_sample={fmt.samples(start)}:end_sample={fmt.samples(end)},"
        "asetpts=PTS-STARTPTS[a]"
    )
    # -t: stop reading at the body's end instead of decoding the rest of the clip
    await run_ffmpeg([*_IN, "-t", _at(end + 1, fmt), "-i", str(clip), "-filter_complex", graph,
                      "-map", "[v]", "-map", "[a]", *_encode_args(fmt, end - start, out)])


async def _render_join(a: Path, a_frames: int, b: Path, out: Path, fmt: OutputFormat,
                       frames: int, kind: str) -> None:
    """Only the frames of the junction are decoded: clip a's tail by an input seek (its
    audio, cheap PCM, is read whole from a second, unseeked input so that sample positions
    stay exact), clip b's head by an input duration. Decoding whole clips made joins cost
    ~3x the decode of a single xfade chain (bench/README.md P6)."""
    start = a_frames - frames
    tail = fmt.samples(a_frames) - fmt.samples(start)
    head = fmt.samples(frames)
    graph = (
        "[0:v]setpts=PTS-STARTPTS[va];"
        f"[1:v]trim=end_frame={frames},setpts=PTS-STARTPTS[vb];"
        f"[va][vb]xfade=transition={XFADE[kind]}:duration={frames / fmt.fps:.6f}:offset=0,"
        # xfade may round its last frame away: hold it, then cut exactly.
        f"tpad=stop=-1:stop_mode=clone,trim=end_frame={frames}[v];"
        f"[2:a]atrim=start_sample={fmt.samples(start)},asetpts=PTS-STARTPTS[aa];"
        f"[1:a]atrim=end_sample={head},asetpts=PTS-STARTPTS[ab];"
        f"[aa][ab]acrossfade=ns={min(tail, head)}:c1=tri:c2=tri,"
        f"apad,atrim=end_sample={head}[a]"
    )
    await run_ffmpeg([*_IN, "-ss", _at(start, fmt), "-i", str(a),
                      *_IN, "-t", _at(frames + 1, fmt), "-i", str(b),
                      *_IN, "-vn", "-i", str(a), "-filter_complex", graph,
                      "-map", "[v]", "-map", "[a]", *_encode_args(fmt, frames, out)])


def _verify(path: Path, fmt: OutputFormat, frames: int) -> VideoInfo:
    info = probe(path)
    want, frame = frames / fmt.fps, 1 / fmt.fps
    problems = []
    if abs(info.duration - want) > frame + 1e-6:
        problems.append(f"lasts {info.duration:.3f} s instead of {want:.3f} s")
    if info.nb_frames and info.nb_frames != frames:
        problems.append(f"{info.nb_frames} frames instead of {frames}")
    if info.audio_duration is None or info.audio_codec != "aac":
        problems.append("no AAC audio track")
    elif abs(info.audio_duration - info.duration) > frame + 1e-6:
        problems.append(f"audio {info.audio_duration:.3f} s vs video {info.duration:.3f} s")
    if (info.width, info.height) != (fmt.width, fmt.height) or abs(info.fps - fmt.fps) > 1e-3:
        problems.append(f"{info.width}x{info.height}@{info.fps:g} instead of "
                        f"{fmt.width}x{fmt.height}@{fmt.fps}")
    if info.video_codec != "h264":
        problems.append(f"video codec {info.video_codec}")
    if problems:
        raise MediaError(f"{path.name}: the assembled cut is wrong: " + "; ".join(problems))
    return info


def segments_dir(dest: Path) -> Path:
    """Beside the cut (one folder per cut file): its rendered bodies and junctions."""
    return dest.parent / f".{dest.stem}.segments"

_SEGMENT_VERSION = 1  # a change in how segments are rendered: none is reused


def _segment_key(what: list[Any], sources: list[Path], fmt: OutputFormat) -> str:
    """A segment's name from what it is made of: its clips' identities (resolved path, size,
    mtime_ns), the frames and transition, the house format and the encoder settings."""
    ids = []
    for p in sources:
        st = p.stat()
        ids.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    text = json.dumps([_SEGMENT_VERSION, what, ids, [fmt.width, fmt.height, fmt.fps],
                       as_argv(video_codec_args(fmt))], separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def _cached(render: Any, seg: Path) -> None:
    """Render into `seg` unless a previous cut left it there (the name is its content)."""
    if seg.is_file() and seg.stat().st_size > 0:
        return
    tmp = temp_name(seg)
    try:
        await render(tmp)
        os.replace(tmp, seg)
    finally:
        tmp.unlink(missing_ok=True)


async def _render_segments(clips: list[Path], frames: list[int], joins: list[int],
                           transitions: list[Transition], fmt: OutputFormat, work: Path,
                           segments: list[Path], cache: Path | None = None) -> None:
    """Fill `segments` in playback order, rendering bodies and junctions concurrently.
    `cache`: a folder where the segments are kept by content, so that the next cut (one clip
    edited) renders only the segments that touch the changed clip (bench/README.md P9)."""
    def name(kind: str, i: int, what: list[Any], sources: list[Path]) -> Path:
        if cache is None:
            return work / f"{kind}{i:04d}.mov"
        cache.mkdir(parents=True, exist_ok=True)  # a cut of hard cuts only makes none
        return cache / f"{kind}-{_segment_key([kind, *what], sources, fmt)}.mov"

    async with asyncio.TaskGroup() as tg:  # a failure cancels (and kills) the others
        for i, clip in enumerate(clips):
            t_in = joins[i - 1] if i > 0 else 0
            t_out = joins[i] if i < len(joins) else 0
            if not t_in and not t_out:
                segments.append(clip)
            elif frames[i] - t_in - t_out > 0:
                end = frames[i] - t_out
                seg = name("body", i, [t_in, end], [clip])
                tg.create_task(_cached(
                    lambda out, c=clip, a=t_in, b=end: _render_body(c, out, fmt, a, b), seg))
                segments.append(seg)
            if t_out:
                kind = transitions[i].kind
                seg = name("join", i, [frames[i], t_out, kind], [clip, clips[i + 1]])
                tg.create_task(_cached(
                    lambda out, a=clip, n=frames[i], b=clips[i + 1], t=t_out, k=kind:
                    _render_join(a, n, b, out, fmt, t, k), seg))
                segments.append(seg)
    if cache is not None and cache.is_dir():  # only this cut's: the size of one cut's
        used = {s.name for s in segments}
        for old in cache.glob("*.mov"):
            if old.name not in used:
                old.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # empty (no transition any more): gone
            cache.rmdir()


def layout(clips: list[Path], fmt: OutputFormat, transitions: list[Transition] | None
           ) -> tuple[list[int], list[int], list[Transition]]:
    """Check the clips are house intermediates; their frames, junction frames and transitions."""
    transitions = list(transitions) if transitions is not None else [Transition()] * (len(clips) - 1)
    if not clips:
        raise ValueError("assemble needs at least one clip")
    if len(transitions) != len(clips) - 1:
        raise ValueError(f"{len(clips)} clips need {len(clips) - 1} transitions, "
                         f"got {len(transitions)}")
    # PyAV lets go of the GIL while it opens and reads: 20 clips probed in 4 threads took
    # 0.07 s against 0.12-0.19 s one after another (bench/README.md P9)
    with ThreadPoolExecutor(min(4, len(clips))) as pool:
        infos = list(pool.map(probe, clips))
    for c, info in zip(clips, infos, strict=True):
        _check_house(c, info, fmt)
    frames = [i.nb_frames for i in infos]
    return frames, junction_frames(frames, transitions, fmt.fps), transitions


async def segments_list(clips: list[Path], frames: list[int], joins: list[int],
                        transitions: list[Transition], fmt: OutputFormat, work: Path,
                        cache: Path | None = None) -> Path:
    """Render the junctions (and the bodies they trim) into `cache` (kept by content) or
    `work`; the concat list of all segments in playback order."""
    return (await _segments(clips, frames, joins, transitions, fmt, work, cache))[1]


async def _segments(clips: list[Path], frames: list[int], joins: list[int],
                    transitions: list[Transition], fmt: OutputFormat, work: Path,
                    cache: Path | None = None) -> tuple[list[Path], Path]:
    """`segments_list`, and the segments themselves."""
    segments: list[Path] = []
    try:
        await _render_segments(clips, frames, joins, transitions, fmt, work, segments, cache)
    except ExceptionGroup as group:  # callers expect the MediaError itself
        raise group.exceptions[0] from None
    listfile = work / "segments.txt"
    concat_list(segments, listfile)
    return segments, listfile


verify_cut = _verify


def segment_frames(frames: list[int], joins: list[int]) -> list[int]:
    """Frames of each segment of the concat list, in its order (`_render_segments`): per clip
    its body (the whole clip between hard cuts), then its junction with the next."""
    out = []
    for i, n in enumerate(frames):
        t_in = joins[i - 1] if i > 0 else 0
        t_out = joins[i] if i < len(joins) else 0
        if not t_in and not t_out:
            out.append(n)
        elif n - t_in - t_out > 0:
            out.append(n - t_in - t_out)
        if t_out:
            out.append(t_out)
    return out


async def assemble(
    clips: list[Path],
    dest: Path,
    fmt: OutputFormat,
    transitions: list[Transition] | None = None,
    laid_out: tuple[list[int], list[int], list[Transition]] | None = None,
) -> VideoInfo:
    """Join conformed clips into `dest` (.mp4); transitions[i] joins clips[i] and clips[i+1].
    `laid_out`: the caller's `layout()` of these clips, to not probe them again."""
    clips, dest = [Path(c) for c in clips], Path(dest)
    frames, joins, transitions = laid_out or layout(clips, fmt, transitions)
    total = sum(frames) - sum(joins)

    parts = aac.pieces(clips, frames, joins, [t.kind for t in transitions], fmt)

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".assemble-") as tmpdir:
        work = Path(tmpdir)
        segments, listfile = await _segments(clips, frames, joins, transitions, fmt, work,
                                             segments_dir(dest))
        # The audio (chunks in parallel, the previous cut's packets reused), written with the
        # segments' video into the cut in this process: one pass, the moov in front
        # (flows/media/mux.py)
        reuse = aac.reusable(dest, parts)
        tmp = temp_name(dest)
        try:
            video = VideoTrack(segments, segment_frames(frames, joins), fmt.fps)
            try:
                await aac.encode(listfile, parts, tmp, work, previous=dest, reuse=reuse,
                                 video=video)
            except NotJoinable:  # the concat demuxer's copy repeats each segment's headers
                audio = work / "audio.m4a"
                await aac.encode(listfile, parts, audio, work, previous=dest, reuse=reuse)
                await run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listfile),
                                  "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
                                  "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
                                  str(tmp)])
            finally:
                video.close()
            info = _verify(tmp, fmt, total)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    aac.remember(dest, parts)
    return info  # the file just verified, renamed
