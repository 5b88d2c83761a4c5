"""Conform any vendor clip into the house intermediate, so that clips join by stream copy.

The intermediate is identical in all that the concat demuxer needs to match (the same streams,
codecs and time base in every file: https://ffmpeg.org/ffmpeg-formats.html#concat-1): exactly
n = round(duration * fps) frames at constant rate, W x H with square pixels (SAR-aware scale,
then letterbox or crop-fill), yuv420p, BT.709 tags, libx264 with fixed settings and a fixed
track timescale, and PCM s16le 48 kHz stereo audio exactly as long as the video (silence when
the source has none). PCM rather than AAC because AAC priming samples pile up at every
stream-copied join (+33 ms per join, docs/ffmpeg-notes.md); the final cut encodes AAC once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ffmpeg as ffmpeg_python

from flows.media.checks import Measures, audio_detectors, parse_measures, read_measures, video_detectors
from flows.media.ffmpeg_exec import ffmpeg_exe, run_ffmpeg
from flows.media.probe import VideoInfo, probe
from providers.errors import MediaError, StoryreelError

SAMPLE_RATE = 48000


@dataclass(frozen=True)
class OutputFormat:
    width: int
    height: int
    fps: int
    fit: Literal["pad", "crop"] = "pad"

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2 or self.width % 2 or self.height % 2:
            raise ValueError(f"{self.width}x{self.height}: width and height must be even (4:2:0)")
        if not 1 <= self.fps <= 240:
            raise ValueError(f"fps {self.fps} is out of range")

    def frames(self, seconds: float) -> int:
        """Whole frames for a duration (at least one)."""
        return max(1, round(seconds * self.fps))

    def samples(self, frames: int) -> int:
        """Audio samples that last exactly as long as `frames` video frames (rounded)."""
        return round(frames * SAMPLE_RATE / self.fps)

    @property
    def timescale(self) -> int:
        # One time base for every intermediate (concat copy needs it); 90 kHz divides most rates.
        return 90000 if 90000 % self.fps == 0 else self.fps * 1000


def video_codec_args(fmt: OutputFormat, preset: str = "veryfast") -> dict[str, object]:
    """Encoder settings shared by every segment that is later joined by stream copy."""
    return {
        "c:v": "libx264",
        "preset": preset,
        "crf": 20,
        "profile:v": "high",
        # Headers that do not depend on the content, so that segments encoded apart join.
        "x264-params": "stitchable=1",
        "pix_fmt": "yuv420p",
        "g": 2 * fmt.fps,
        "threads": 1,
        "video_track_timescale": fmt.timescale,
        "colorspace": "bt709",
        "color_primaries": "bt709",
        "color_trc": "bt709",
        "color_range": "tv",
    }


PCM_ARGS: dict[str, object] = {"c:a": "pcm_s16le", "ar": SAMPLE_RATE, "ac": 2}


def as_argv(options: dict[str, object]) -> list[str]:
    return [x for k, v in options.items() for x in (f"-{k}", str(v))]


def _fit_size(fmt: OutputFormat) -> tuple[str, str]:
    """scale w/h expressions on the display aspect (`dar` includes SAR), evaluated by ffmpeg.

    Evaluated at run time rather than from the probe so that rotated phone clips (autorotated
    by ffmpeg before the graph) are sized right too. A naive scale ignoring SAR squeezes a
    720x480 32:27 clip to 3:2 (docs/ffmpeg-notes.md, display aspect).
    """
    w, h = fmt.width, fmt.height
    wide = f"gte(dar,{w}/{h})"
    if fmt.fit == "pad":  # fit inside, bars on the short side
        return (f"if({wide},{w},max(2,2*round({h}*dar/2)))",
                f"if({wide},max(2,2*round({w}/dar/2)),{h})")
    return (f"if({wide},2*round({h}*dar/2),{w})",  # cover, then crop the overflow
            f"if({wide},{h},2*round({w}/dar/2))")


@dataclass(frozen=True)
class Reading:
    """How to read a source: the facts of its probe that change conform's ffmpeg arguments."""

    has_audio: bool
    matrix: str = "auto"  # scale's in_color_matrix


def reading_of(info: VideoInfo) -> Reading:
    # Not done: skipping H.264 deblocking when downscaling 3x or more (-skip_loop_filter all).
    # On a detailed 8 Mbit/s 1080p clip with one keyframe it saved ~10% of the decode, but the
    # 320x180 result lost 0.2 dB of PSNR on average and 1.7 dB on the worst frame (errors
    # drift until the next keyframe): not worth a softer picture (bench/README.md, "Large boards":
    # decode-side options).
    return Reading(info.has_audio, source_matrix(info))


def source_matrix(info: VideoInfo) -> str:
    """The colour matrix to read a source's pixels with: its own tag, else the one players
    assume for untagged video (BT.709 from 1280 wide or above 576 lines, else BT.601; mpv's
    rule). swscale alone would take BT.601 for every untagged clip, so an untagged HD clip
    came out with shifted colours, and converting between the two matrices cost ~15% of a
    1080p -> 180p conform (bench/README.md, "Large boards": colour matrix)."""
    if info.color_tagged:
        return "auto"
    return "bt709" if info.width >= 1280 or info.height > 576 else "bt601"


_SRC, _OUT = "<src>", "<out>"  # stand-ins in the argv template


def conform_argv(src: Path, out: Path, fmt: OutputFormat, frames: int, reading: Reading,
                 threads: int = 1) -> list[str]:
    """The ffmpeg arguments (without the binary) that make the intermediate. `threads`: the
    decoder's (`_Slots.threads`: one while other processes hold the other cores, frame threads
    when it runs alone). The encoder keeps one thread: x264's output depends on its thread
    count, and the same clip must always make the same intermediate."""
    paths = {_SRC: str(src), _OUT: str(out)}
    argv = [paths.get(a, a) for a in _argv_template(fmt, frames, reading)]
    i = argv.index("-i")
    argv[i:i] = ["-threads", str(max(1, threads))]
    return argv


@functools.lru_cache(maxsize=64)
def _argv_template(fmt: OutputFormat, frames: int, reading: Reading) -> tuple[str, ...]:
    """conform_argv with stand-in paths; built once per shape, since ffmpeg-python takes
    ~3 ms of CPU to compile a graph (a tenth of storyreel's CPU per shot at 1000 shots)."""
    seconds = frames / fmt.fps
    # Read a little past what we keep: decoding the rest of a long source is wasted work.
    inp = ffmpeg_python.input(_SRC, t=f"{seconds + 1:.3f}")
    sw, sh = _fit_size(fmt)
    v = (
        inp.video.filter("setpts", "PTS-STARTPTS")
        .filter("fps", fmt.fps)
        .filter("scale", w=sw, h=sh, flags="bicubic", in_color_matrix=reading.matrix,
                out_color_matrix="bt709", out_range="tv")
        .filter("format", "yuv420p")
        # Tag the frames too: recent ffmpeg lets frame tags override -color_primaries & co.
        .filter("setparams", range="tv", color_primaries="bt709", color_trc="bt709",
                colorspace="bt709")
        .filter("setsar", "1")
    )
    # the clip checks' detectors, in the same decode: after the scale (fewer pixels than a
    # 1080p source), before the bars and the held last frame (never counted)
    for name, opts in video_detectors():
        v = v.filter(name, **opts)
    if fmt.fit == "pad":
        v = v.filter("pad", fmt.width, fmt.height, "(ow-iw)/2", "(oh-ih)/2", color="black")
    else:
        v = v.filter("crop", fmt.width, fmt.height)
    # Hold the last frame for short sources, then cut at exactly n frames.
    v = v.filter("tpad", stop=-1, stop_mode="clone").filter("trim", end_frame=frames)
    if reading.has_audio:
        a = (
            inp.audio.filter("aresample", SAMPLE_RATE)
            .filter("aformat", sample_fmts="s16", channel_layouts="stereo")
            .filter("asetpts", "PTS-STARTPTS")
        )
        for name, opts in audio_detectors():
            a = a.filter(name, **opts)
        a = a.filter("apad")
    else:
        a = ffmpeg_python.input(f"anullsrc=r={SAMPLE_RATE}:cl=stereo", f="lavfi").audio
    a = a.filter("atrim", end_sample=fmt.samples(frames))
    options = {**video_codec_args(fmt), **PCM_ARGS, "frames:v": frames, "map_metadata": -1}
    stream = ffmpeg_python.output(v, a, _OUT, f="mov", **options)
    return tuple(ffmpeg_python.compile(stream, cmd=ffmpeg_exe())[1:])


def temp_name(dest: Path) -> Path:
    """A hidden temp name beside `dest` (created folder included), for write-then-rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def check_intermediate(path: Path, fmt: OutputFormat, frames: int) -> VideoInfo:
    info = probe(path)
    want_audio = frames / fmt.fps
    problems = []
    if info.nb_frames != frames:
        problems.append(f"{info.nb_frames} frames instead of {frames}")
    if (info.width, info.height) != (fmt.width, fmt.height):
        problems.append(f"size {info.width}x{info.height} instead of {fmt.width}x{fmt.height}")
    if abs(info.fps - fmt.fps) > 1e-3:
        problems.append(f"{info.fps:g} fps instead of {fmt.fps}")
    if info.audio_codec != "pcm_s16le" or info.audio_duration is None:
        problems.append("no PCM audio track")
    elif abs(info.audio_duration - want_audio) > 1 / fmt.fps:
        problems.append(f"audio lasts {info.audio_duration:.3f} s, video {want_audio:.3f} s")
    if problems:
        raise MediaError(f"{path.name}: conformed clip is wrong: " + "; ".join(problems))
    return info


def _cache_path(cache_dir: Path, src: Path, fmt: OutputFormat, frames: int,
                reading: Reading, sha256: str | None = None) -> Path:
    """Where the intermediate of `src` lives in a conform cache: keyed by the source's bytes
    (`sha256`, when the caller has hashed them already) and the exact ffmpeg arguments, so a
    change of settings never reuses a stale clip."""
    from flows.files.digest import file_sha256

    digest = sha256 or file_sha256(src)
    material = json.dumps([digest, _argv_template(fmt, frames, reading)])
    key = hashlib.sha256(material.encode()).hexdigest()
    return Path(cache_dir) / key[:2] / f"{key}.mov"


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


async def conform(src: Path, dest: Path, fmt: OutputFormat, duration: float,
                  cache_dir: Path | None = None, source: VideoInfo | None = None,
                  sha256: str | None = None) -> VideoInfo:
    """Make the house intermediate (.mov) of `src` lasting `duration` (in whole frames).

    With `cache_dir`, an intermediate made before from the same bytes with the same settings
    is copied instead of encoded again (an edited storyboard re-conforms only what changed).
    `source`: the caller's probe of `src` (a just-verified download), to not open it again;
    `sha256`: the caller's hash of its bytes (the clip cache has one), to not read it again."""
    info, _ = await conform_measured(src, dest, fmt, duration, cache_dir, source, sha256)
    return info


def _measures_path(cached: Path) -> Path:
    return cached.with_suffix(".checks.json")


async def conform_measured(src: Path, dest: Path, fmt: OutputFormat, duration: float,
                           cache_dir: Path | None = None, source: VideoInfo | None = None,
                           sha256: str | None = None) -> tuple[VideoInfo, Measures]:
    """`conform`, and what the clip checks' detectors saw in the same decode (no second
    pass over the source). A cached intermediate keeps its measures beside it; one without
    them (made before the checks) is made again."""
    src, dest = Path(src), Path(dest)
    source = source if source is not None else probe(src)
    frames = fmt.frames(duration)
    reading = reading_of(source)
    cached = await asyncio.to_thread(_cache_path, cache_dir, src, fmt, frames, reading,
                                     sha256) if cache_dir else None
    known = read_measures(_measures_path(cached)) if cached is not None else None
    if cached is not None and known is None:
        cached.unlink(missing_ok=True)
    # the detectors see the source up to the kept frames (the rest is the held last frame)
    span = min(frames / fmt.fps, source.duration) if source.duration > 0 else frames / fmt.fps
    made: list[Measures] = []

    async def make(tmp: Path) -> None:
        log = await run_ffmpeg(
            lambda threads: conform_argv(src, tmp, fmt, frames, reading, threads),
            loglevel="info")
        made.append(parse_measures(log, span_s=span, fps=fmt.fps, has_audio=reading.has_audio))

    info = await make_intermediate(dest, fmt, frames, make, cached)
    if not made:  # the cached intermediate was used
        assert known is not None
        return info, known
    if cached is not None and cached.exists():
        try:
            tmp = temp_name(_measures_path(cached))
            tmp.write_text(json.dumps(made[0].to_json()), encoding="utf-8")
            os.replace(tmp, _measures_path(cached))
        except OSError:
            pass  # without its measures the entry is made again next time
    return info, made[0]


async def make_intermediate(dest: Path, fmt: OutputFormat, frames: int,
                            make: Callable[[Path], Awaitable[object]],
                            cached: Path | None = None) -> VideoInfo:
    """`make(tmp)` writes a house intermediate of `frames` frames; it is checked, then renamed
    to `dest`. With `cached` (a content-addressed path), a good copy there is used instead, and
    a new one is stored there."""
    if cached is not None and cached.exists():
        try:
            info = check_intermediate(cached, fmt, frames)
            _copy_atomic(cached, dest)
            return info
        except StoryreelError:  # damaged entry: make it again
            cached.unlink(missing_ok=True)
    tmp = temp_name(dest)
    try:
        await make(tmp)
        info = check_intermediate(tmp, fmt, frames)  # the same file `dest` becomes
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    if cached is not None:
        try:
            _copy_atomic(dest, cached)
        except OSError:
            pass  # a cache that cannot be written only costs a later re-encode
    return info
