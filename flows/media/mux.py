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

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from providers.errors import MediaError

# moov bytes per packet: stsz 4, stco <= 8 (a chunk per packet at worst), stts/ctts 8 each,
# stss 4, sdtp 1; plus the fixed boxes. Measured: ~10 per packet (100 s cut at 720p).
MOOV_PER_PACKET = 40
MOOV_FIXED = 64 * 1024


class NotJoinable(MediaError):
    """A segment's video has other codec headers than the first's: the caller joins them by
    the concat demuxer instead, which repeats the headers in the stream at every keyframe."""


def moov_bound(packets: int) -> int:
    """Bytes enough for the moov of a file with `packets` samples (over-reserved: the rest
    is a `free` box)."""
    return MOOV_FIXED + MOOV_PER_PACKET * packets


def write_cut(out: Path, segments: Sequence[Path], frames: Sequence[int], fps: int,
              audio: Iterable[Any], audio_template: Any, audio_packets: int) -> None:
    """Write `out` (.mp4): the video of `segments` (frames[k] each, at `fps`) in order, and
    the AAC packets `audio` (pts in samples of `audio_template`'s 1/rate time base, in order,
    the first one's pts negative for the encoder's priming)."""
    import av

    if len(segments) != len(frames):
        raise MediaError("write_cut: one frame count per segment")
    containers: list[Any] = []
    try:
        first = av.open(str(segments[0]))
        containers.append(first)
        vtemplate = first.streams.video[0]
        tb = vtemplate.time_base
        if tb is None or Fraction(1, fps) / tb != int(Fraction(1, fps) / tb):
            raise MediaError(f"{segments[0].name}: video time base {tb} is not a multiple of "
                             f"1/{fps}")
        per_frame = int(Fraction(1, fps) / tb)
        total = sum(frames) + audio_packets
        with av.open(str(out), "w", format="mp4",
                     options={"moov_size": str(moov_bound(total))}) as dst:
            vo = dst.add_stream_from_template(vtemplate)
            vo.time_base = tb
            ao = dst.add_stream_from_template(audio_template)
            ao.time_base = audio_template.time_base
            atb = float(audio_template.time_base)
            apkts = iter(audio)
            pending = next(apkts, None)
            start = 0  # the segment's first frame on the cut's timeline
            for k, seg in enumerate(segments):
                c = first if k == 0 else av.open(str(seg))
                if k:
                    containers.append(c)
                vs = c.streams.video[0]
                if vs.time_base != tb or vs.codec_context.extradata != vtemplate.codec_context.extradata:
                    raise NotJoinable(f"{seg.name}: other video headers than "
                                      f"{segments[0].name}")
                offset = start * per_frame
                for pkt in c.demux(vs):
                    if pkt.dts is None:  # the demuxer's flush packet
                        continue
                    pkt.dts += offset
                    if pkt.pts is not None:
                        pkt.pts += offset
                    t = float(pkt.dts * tb)
                    while pending is not None and float(pending.dts) * atb <= t:
                        pending.stream = ao
                        dst.mux(pending)
                        pending = next(apkts, None)
                    pkt.stream = vo
                    dst.mux(pkt)
                start += frames[k]
                if k:
                    c.close()
                    containers.remove(c)
            while pending is not None:
                pending.stream = ao
                dst.mux(pending)
                pending = next(apkts, None)
    except av.FFmpegError as exc:
        raise MediaError(f"{Path(out).name}: cannot write the cut ({exc})") from None
    finally:
        for c in containers:
            c.close()
