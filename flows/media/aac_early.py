"""The edited span's AAC encoder started before its clip exists (the producer's loop).

When a cut is made again into the same file with one shot changed, flows/media/aac.py encodes
only the span from that shot on, after PREROLL + WINDOW frames of pre-roll taken from the
identical part before it (~11 s of audio for a ~5 s clip): two thirds of that encode is
pre-roll, known as soon as the shots before the changed one are done. `prime` starts the
span's encoder then, reading raw PCM from a pipe, and feeds it that pre-roll while the changed
shot is still at the vendor; once the cut is made, `aac.encode` takes it (`take`) and feeds
only the rest (`complete`). The encoder sees exactly the samples a chunk encoder reading the
concat list would (the same sample range of the same PCM), so its packets are the same bytes.

Everything is checked again when the cut is made: the previous track's record, the pieces
before the span (identities and sample counts) and the span's first sample; otherwise the
primed encoder is killed and the span encoded as before. Only hard cuts before the span are
primed (a junction's audio is rendered at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.media import aac
from flows.media.conform import SAMPLE_RATE, OutputFormat
from flows.media.ffmpeg_exec import BASE_ARGS, _lower_priority, ffmpeg_exe
from providers.errors import MediaError

BYTES = 4  # per sample: s16le stereo, as conform writes the intermediates' audio


@dataclass
class Primed:
    """An encoder of the span after `prefix` (the pieces the cut begins with), fed the cut's
    samples [lo, fed) so far; its packets go to `out`, the source PCM of its head splice
    window is in `window`."""

    prefix: tuple[aac.Piece, ...]
    lo: int
    head: int  # the span's first sample (where the previous track's packets stop)
    fed: int
    out: Path
    window: tuple[int, int, Path]
    proc: asyncio.subprocess.Process
    folder: Path

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_PRIMED: dict[Path, asyncio.Task[Primed | None]] = {}  # by the cut's resolved path


def prime(dest: Path, clips: Sequence[Path], fmt: OutputFormat) -> None:
    """Start priming the encoder of the span that follows `clips` (the cut's first clips,
    hard cuts between them and after the last) in the track `dest` holds now."""
    key = Path(dest).resolve()
    discard(key)
    _PRIMED[key] = asyncio.ensure_future(_prime(Path(dest), list(clips), fmt))


def discard(dest: Path) -> None:
    """Kill what `prime` started for `dest`, if nothing took it."""
    task = _PRIMED.pop(Path(dest).resolve(), None)
    if task is None:
        return
    if not task.done():
        task.cancel()  # _prime kills its encoder on cancellation
    elif not task.cancelled() and task.exception() is None and (p := task.result()):
        p.kill()


async def _prime(dest: Path, clips: list[Path], fmt: OutputFormat) -> Primed | None:
    from flows.media.probe import probe

    old = aac.recorded(dest)
    if old is None or len(old) <= len(clips):
        return None
    infos = await asyncio.to_thread(lambda: [probe(c) for c in clips])
    frames = [i.nb_frames or 0 for i in infos]
    prefix = aac.pieces(clips, frames, [0] * (len(clips) - 1), ["cut"] * (len(clips) - 1),
                        fmt)
    if [(p.ident, p.samples) for p in prefix] != old[:len(prefix)]:
        return None
    start = sum(p.samples for p in prefix)
    head = (start // aac.FRAME - aac.MARGIN) * aac.FRAME  # as aac.reusable sets it
    if head <= 0:
        return None
    lo = max(0, head - (aac.WINDOW + aac.PREROLL) * aac.FRAME)
    w0 = max(aac.FRAME, head - aac.WINDOW * aac.FRAME)
    pcm = await asyncio.to_thread(_pcm, clips, prefix, lo, start)
    if pcm is None:
        return None
    for stale in dest.parent.glob(f".{dest.stem}.primed-*"):  # a killed run's (one per folder)
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.stem}.primed-"))
    window = (w0, head, folder / "head.pcm")
    window[2].write_bytes(pcm[(w0 - lo) * BYTES:(head + aac.FRAME - lo) * BYTES])
    out = folder / "span.mp4"
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), *BASE_ARGS, "-threads", "1", "-f", "s16le", "-ar", str(SAMPLE_RATE),
        "-ac", "2", "-i", "pipe:0", "-map", "0:a", *aac.ENCODE_ARGS, "-threads", "1",
        "-f", "mp4", str(out), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _lower_priority(proc.pid)
    primed = Primed(tuple(prefix), lo, head, start, out, window, proc, folder)
    try:
        assert proc.stdin is not None
        proc.stdin.write(pcm)
        await proc.stdin.drain()
    except BaseException:
        primed.kill()
        raise
    return primed


def _pcm(clips: Sequence[Path], parts: Sequence[aac.Piece], lo: int, hi: int) -> bytes | None:
    """The cut's samples [lo, hi) from `clips` (one piece each, in order) as s16le stereo;
    None when a clip's audio is not the samples its piece says."""
    import av

    out, at = bytearray(), 0
    for clip, part in zip(clips, parts, strict=True):
        a, b = at, at + part.samples
        at = b
        if b <= lo or a >= hi:
            continue
        with av.open(str(clip)) as c:
            s = c.streams.audio[0]
            if (s.codec_context.name != "pcm_s16le" or s.codec_context.channels != 2
                    or s.codec_context.sample_rate != SAMPLE_RATE):
                return None
            data = b"".join(bytes(p) for p in c.demux(s) if p.size)
        if len(data) != part.samples * BYTES:
            return None
        out += data[max(0, lo - a) * BYTES:(min(hi, b) - a) * BYTES]
    return bytes(out)


async def take(dest: Path, parts: Sequence[aac.Piece], lo: int, head: int) -> Primed | None:
    """The encoder primed for `dest`, when it was primed for this span: the cut begins with
    its prefix and the span starts at `head`, fed from `lo`. Anything else is killed."""
    task = _PRIMED.pop(Path(dest).resolve(), None)
    if task is None:
        return None
    try:
        primed = await task
    except (MediaError, OSError, ValueError):
        return None
    if primed is None:
        return None
    n = len(primed.prefix)
    if (primed.lo, primed.head) != (lo, head) or tuple(parts[:n]) != primed.prefix:
        primed.kill()
        return None
    return primed


async def complete(primed: Primed, segments: Sequence[Path], parts: Sequence[aac.Piece],
                   hi: int, side: Sequence[tuple[int, int, Path]]) -> None:
    """Feed the rest of the span, [fed, hi) of the cut (`segments`: one per piece), write the
    source PCM of `side`'s ranges, and wait for the encoder."""
    try:
        if hi <= primed.fed:
            raise MediaError("the span ends before what was primed")
        pcm = await asyncio.to_thread(_pcm, segments, parts, primed.fed, hi)
        if pcm is None:
            raise MediaError("the edited span's audio is not what its pieces say")
        for a, b, path in side:
            path.write_bytes(pcm[(a - primed.fed) * BYTES:(b - primed.fed) * BYTES])
        proc = primed.proc
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(pcm)
        await proc.stdin.drain()
        proc.stdin.close()
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise MediaError(f"the primed AAC encoder failed (exit code {proc.returncode})",
                             None, err.decode(errors="replace"))
    except BaseException:
        primed.kill()
        raise




