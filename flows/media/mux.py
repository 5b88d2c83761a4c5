"""The cut's final MP4 written in this process (PyAV, FFmpeg's libraries): the segments' video
packets copied one after another, interleaved with the cut's AAC packets, the moov box at the
front of the file in the one pass.

What it replaces: an ffmpeg command (concat demuxer, `-c copy`, `-movflags +faststart`) that
read the AAC track back from its own file, and whose faststart moved the whole file again
after writing it. Here the audio packets come straight from the splice (flows/media/aac.py),
and space for the moov is reserved before the media (`moov_size`,
https://ffmpeg.org/ffmpeg-formats.html#Options-11): an unused rest is a `free` box, which every
ISO BMFF reader skips (ISO/IEC 14496-12, 8.1.2). The packets and their times are the ones the
concat demuxer gives: each segment starts where the frames before it end (frame-exact in the
house time base, where the demuxer sums durations in microseconds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from providers.errors import MediaError

# moov bytes per packet at worst (every packet its own chunk, no run of equal values): stsz
# 4, stco/co64 8, stsc 12, stts 8, ctts 8, stss 4, sdtp 1, sbgp 8 = 53; plus the fixed boxes.
# Measured: ~10 per packet (100 s cut at 720p), so ~0.3 MB of a 40 MB cut is a free box.
MOOV_PER_PACKET = 64
MOOV_FIXED = 64 * 1024


class NotJoinable(MediaError):
    """A segment's video has other codec headers than the first's: the caller joins them by
    the concat demuxer instead, which repeats the headers in the stream at every keyframe."""


def moov_bound(packets: int) -> int:
    """Bytes enough for the moov of a file with `packets` samples (over-reserved: the rest
    is a `free` box)."""
    return MOOV_FIXED + MOOV_PER_PACKET * packets


# segments up to this size are read into memory while the AAC encodes (a 100 s 720p cut is
# ~40 MB); larger cuts are read as they are written, so a long 1080p film never sits in RAM
READ_AHEAD_BYTES = 128 * 1024 * 1024


class VideoTrack:
    """The segments' video packets on the cut's timeline (each segment starting where the
    frames before it end). `read_ahead` (in a thread, while the cut's AAC is encoded) reads
    them all into memory when they are small enough; otherwise `packets` reads them as the
    cut is written."""

    def __init__(self, segments: Sequence[Path], frames: Sequence[int], fps: int) -> None:
        import av

        if len(segments) != len(frames) or not segments:
            raise MediaError("the cut's video: one frame count per segment")
        self.segments, self.frames, self.fps = list(segments), list(frames), fps
        self.first = av.open(str(segments[0]))  # kept open: the output stream's template
        self.template = self.first.streams.video[0]
        tb = self.template.time_base
        if tb is None or Fraction(1, fps) / tb != int(Fraction(1, fps) / tb):
            self.first.close()
            raise MediaError(f"{segments[0].name}: video time base {tb} is not a multiple of "
                             f"1/{fps}")
        self.per_frame = int(Fraction(1, fps) / tb)
        self.read: list[Any] | None = None

    def read_ahead(self) -> None:
        if self.read is not None:
            return
        with contextlib.suppress(OSError):
            if sum(p.stat().st_size for p in self.segments) > READ_AHEAD_BYTES:
                return
        self.read = list(self._demux())

    def packets(self) -> Iterator[Any]:
        return iter(self.read) if self.read is not None else self._demux()

    def _demux(self) -> Iterator[Any]:
        import av

        tb, headers = self.template.time_base, self.template.codec_context.extradata
        start = 0  # the segment's first frame on the cut's timeline
        for k, seg in enumerate(self.segments):
            c = av.open(str(seg))
            try:
                vs = c.streams.video[0]
                if vs.time_base != tb or vs.codec_context.extradata != headers:
                    raise NotJoinable(f"{seg.name}: other video headers than "
                                      f"{self.segments[0].name}")
                offset = start * self.per_frame
                for pkt in c.demux(vs):
                    if pkt.dts is None:  # the demuxer's flush packet
                        continue
                    pkt.dts += offset
                    if pkt.pts is not None:
                        pkt.pts += offset
                    yield pkt
            finally:
                c.close()
            start += self.frames[k]

    def close(self) -> None:
        self.read = None
        self.first.close()


def write_cut(out: Path, video: VideoTrack, audio: Iterable[Any], audio_template: Any,
              audio_packets: int) -> None:
    """Write `out` (.mp4): `video`'s packets and the AAC packets `audio` (pts in samples of
    `audio_template`'s 1/rate time base, in order, the first one's pts negative for the
    encoder's priming), interleaved by time."""
    import av

    try:
        tb = video.template.time_base
        total = sum(video.frames) + audio_packets
        with av.open(str(out), "w", format="mp4",
                     options={"moov_size": str(moov_bound(total))}) as dst:
            vo = dst.add_stream_from_template(video.template)
            vo.time_base = tb
            ao = dst.add_stream_from_template(audio_template)
            ao.time_base = audio_template.time_base
            atb = float(audio_template.time_base)
            apkts = iter(audio)
            pending = next(apkts, None)
            for pkt in video.packets():
                t = float(pkt.dts * tb)
                while pending is not None and float(pending.dts) * atb <= t:
                    pending.stream = ao
                    dst.mux(pending)
                    pending = next(apkts, None)
                pkt.stream = vo
                dst.mux(pkt)
            while pending is not None:
                pending.stream = ao
                dst.mux(pending)
                pending = next(apkts, None)
    except av.FFmpegError as exc:
        raise MediaError(f"{Path(out).name}: cannot write the cut ({exc})") from None
