"""What is in a media file (PyAV, in-process: no ffprobe needed) and is it a complete video?

Headers lie about truncated files: a faststart MP4 cut at 60% still reports its full duration
and frame count (docs/ffmpeg-notes.md). `verify_clip` therefore demuxes every video packet, compares
the count with the header and the last timestamp with the duration, and decodes one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers.errors import BadMediaError

if TYPE_CHECKING:
    import av


def _av() -> Any:
    """PyAV, imported on first use (~0.1 s): `storyreel run` on an up-to-date folder and the
    path to the first vendor submit never open a video."""
    import av

    return av


# A complete file's last frame ends within this share of the header duration (docs/ffmpeg-notes.md).
END_SLACK = 0.02
_UNSPECIFIED = 2  # AVCOL_SPC_UNSPECIFIED
GENERIC = "not a readable video (damaged, incomplete or not media at all)"


@dataclass
class VideoInfo:
    duration: float  # seconds, video stream (format duration when the stream has none)
    width: int
    height: int
    fps: float
    has_audio: bool
    video_codec: str
    audio_codec: str | None
    pix_fmt: str | None
    sar: float  # sample (pixel) aspect ratio; 1.0 when unknown
    nb_frames: int  # from the header, or counted when probed with count=True; 0 = unknown
    audio_duration: float | None
    color_tagged: bool = False  # the stream says which colour matrix it uses


def _open(path: Path) -> av.container.InputContainer:
    try:
        return _av().open(str(path), mode="r")
    except FileNotFoundError as exc:
        raise BadMediaError(f"{path.name}: file not found") from exc
    except (_av().FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = _not_media_reason(path)
        if reason == GENERIC:  # add ffmpeg's own words only when we have none better
            reason += f" ({getattr(exc, 'strerror', None) or exc})"
        raise BadMediaError(f"{path.name}: {reason}") from exc


def _not_media_reason(path: Path) -> str:
    try:
        head = path.read_bytes()[:512]
    except OSError:
        return "cannot be read"
    if not head:
        return "the file is empty"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return "this is an HTML/XML page, not a video"
    if text.startswith((b"{", b"[")):
        return "this is a JSON document, not a video"
    return GENERIC


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    for s in container.streams.video:
        if not s.disposition & _av().stream.Disposition.attached_pic:  # skip cover art
            return s
    return None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _info(container: av.container.InputContainer, path: Path) -> tuple[VideoInfo, object]:
    v = _video_stream(container)
    if v is None:
        raise BadMediaError(f"{path.name}: the file has no video stream")
    a = container.streams.audio[0] if container.streams.audio else None
    cc = v.codec_context
    rate = v.average_rate or v.guessed_rate or v.base_rate
    fmt_duration = container.duration / _av().time_base if container.duration else None
    duration = _seconds(v.duration, v.time_base) or fmt_duration or 0.0
    sar = v.sample_aspect_ratio or cc.sample_aspect_ratio
    info = VideoInfo(
        duration=duration,
        width=cc.width,
        height=cc.height,
        fps=float(rate) if rate else 0.0,
        has_audio=a is not None,
        video_codec=cc.name,
        audio_codec=a.codec_context.name if a is not None else None,
        pix_fmt=cc.pix_fmt,
        sar=float(sar) if sar else 1.0,
        nb_frames=v.frames or 0,
        audio_duration=(_seconds(a.duration, a.time_base) or fmt_duration) if a else None,
        color_tagged=int(cc.colorspace or _UNSPECIFIED) != _UNSPECIFIED,
    )
    return info, v


def probe(path: str | Path, *, count: bool = False) -> VideoInfo:
    """Stream facts from the headers; with count=True, frames and durations from the packets."""
    path = Path(path)
    with _open(path) as container:
        info, v = _info(container, path)
        if count:
            n, end, _ = _demux(container, v, path)
            info.nb_frames, info.duration = n, end or info.duration
    return info


def _demux(container, v, path: Path) -> tuple[int, float, bool]:
    """Count the video packets; return (count, end time of the last frame, stopped on error)."""
    count, end, broken = 0, 0.0, False
    tb = v.time_base
    try:
        for pkt in container.demux(v):
            if pkt.size == 0:  # the flush packet at the end
                continue
            count += 1
            if pkt.pts is not None and tb is not None:
                end = max(end, float((pkt.pts + (pkt.duration or 0)) * tb))
    except _av().FFmpegError:
        broken = True
    start = _seconds(v.start_time, tb) or 0.0
    return count, max(0.0, end - start), broken


def verify_clip(
    path: str | Path, *, expect_duration: float | None = None, tolerance: float = 0.25
) -> VideoInfo:
    """Probe a downloaded clip and raise BadMediaError unless it is a complete, playable video.

    `tolerance` is the share of `expect_duration` a clip may be short by (vendors round
    durations; a clip 25% short was not what was paid for).
    """
    path = Path(path)
    if not path.is_file():
        raise BadMediaError(f"{path.name}: file not found")
    if path.stat().st_size == 0:
        raise BadMediaError(f"{path.name}: the file is empty")
    with _open(path) as container:
        info, v = _info(container, path)
        if info.width <= 0 or info.height <= 0:
            raise BadMediaError(f"{path.name}: the video stream has no picture size")
        header_frames, header_duration = info.nb_frames, info.duration
        n, end, broken = _demux(container, v, path)
        if n == 0:
            raise BadMediaError(f"{path.name}: the video stream holds no frames")
        if broken:
            raise BadMediaError(
                f"{path.name}: the file is damaged or truncated (reading stopped after {n} frames)"
            )
        if header_frames and n < header_frames:
            raise BadMediaError(
                f"{path.name}: the file is truncated: {n} of {header_frames} frames present"
            )
        if header_duration and end and end < (1 - END_SLACK) * header_duration:
            raise BadMediaError(
                f"{path.name}: the file is truncated: video ends at {end:.2f} s "
                f"of {header_duration:.2f} s"
            )
        info.nb_frames = n
        info.duration = end or header_duration
    _decode_one(path)
    if info.duration <= 0:
        raise BadMediaError(f"{path.name}: the video has no duration")
    if expect_duration and info.duration < (1 - tolerance) * expect_duration:
        raise BadMediaError(
            f"{path.name}: the video lasts {info.duration:.2f} s, "
            f"far less than the {expect_duration:g} s asked for"
        )
    return info


def _decode_one(path: Path) -> None:
    """A header can parse while the codec data is garbage: decode the first frame to be sure."""
    with _open(path) as container:
        v = _video_stream(container)
        # one thread: a decoder's thread pool costs more to start than one frame to decode,
        # and many clips are verified at once
        if v is not None:
            v.codec_context.thread_count = 1
        try:
            for _frame in container.decode(v):
                return
        except _av().FFmpegError as exc:
            raise BadMediaError(f"{path.name}: the video cannot be decoded ({exc})") from exc
    raise BadMediaError(f"{path.name}: no video frame could be decoded")
