"""The cut's AAC track: encoded in parallel chunks that are spliced packet by packet, and, when
the cut is made again into the same file, the previous cut's packets reused up to the first
changed piece of the timeline (the producer's loop: one shot of 20 edited, run again).

Why it works. AAC is a sequence of 1024-sample frames; a decoder's output for frame n overlaps
frames n-1 and n, so a stream whose frames come from two encoders decodes cleanly where both
encoders saw the same signal and chose the same window shapes. Each chunk's encoder is fed the
cut's PCM (the segments' concat list, cut on exact sample indices) from PREROLL + WINDOW frames
before its range to WINDOW + POSTROLL frames after it. Around each nominal splice the two
encoders have then both coded a window of 2 x WINDOW frames; `_choose` decodes both there and
takes each frame from the one that reproduces the source better, switching where the decoded
switch block itself is good (a switch between different window shapes would not be).

Why the pre-roll is long and the splice is chosen. ffmpeg's native encoder (ABR, -b:a) steers
its bits by a bit reservoir and by a running minimum of perceptual entropy that forgets with a
time constant of 512 frames (aacpsy.c, PSY_PE_FORGET_SLOPE = 511). With a few frames of
pre-roll a chunk decodes cleanly at the splice but is coded like the start of a new file for
~10 s (measured: up to 2.3x the single pass's error per block on chirp + noise); with 512
frames (10.9 s) it is close, but the reservoirs still differ, and at a transient one encoder
may spend far fewer bits than the other (4.5x the error in the two blocks before a click at a
nominal splice). At ~30x real time per core the pre-roll costs ~0.4 s of one core per chunk;
the choice costs 2 x 50 frames of decoding per splice. Measured results: bench/README.md.

Reuse. Beside the cut, RECORD_SUFFIX holds the ordered identities of the timeline's audio
pieces (a clip body or a junction: its clip files' resolved path, size and mtime_ns, the trim
frames, the transition) with their sample counts, and the identity of the file it was written
into (size, mtime_ns, inode). When the next cut into the same file starts with the same
pieces, the old file's packets before the first changed sample (less MARGIN frames for the
encoder's look-ahead) are copied; when the track is as long as before, so are those after the
last changed piece (MARGIN frames into the identical part: an edited shot of the same
duration). Only the changed span is encoded, its pre-roll lying in the identical part before
it; the splices with the old packets are chosen as above, in the WINDOW frames before the
first and after the second. An old packet after the change is a valid coding of the same
samples; only its encoder's bit allocation had another history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.media.conform import SAMPLE_RATE, OutputFormat
from flows.media.ffmpeg_exec import SLOTS, run_ffmpeg
from flows.media.mux import VideoTrack
from providers.errors import MediaError

FRAME = 1024  # samples per AAC frame
PREROLL = 512  # frames of the cut fed to a chunk's encoder before its splice window (above)
WINDOW = 24  # frames either side of a nominal splice where the splice may be moved (0.5 s)
POSTROLL = 3  # frames after the window: the encoder's window decision looks one frame ahead
MARGIN = 4  # frames: a packet at t depends on the input up to t + 3 frames (MDCT + look-ahead)
ENCODE_ARGS = ["-c:a", "aac", "-b:a", "192k", "-ar", str(SAMPLE_RATE)]
# a change in any of these: nothing recorded before is reused
SETTINGS = {"v": 1, "encode": ENCODE_ARGS, "preroll": PREROLL, "window": WINDOW}
RECORD_SUFFIX = ".audio.json"


@dataclass(frozen=True)
class Piece:
    """One segment of the cut's timeline, named by what its audio is made of."""

    ident: str
    samples: int


@dataclass
class AudioStats:
    """What making the track did (for logs and the benchmark)."""

    total: int  # samples
    reused: int = 0  # leading samples whose packets came from the previous cut
    chunks: int = 0  # encoder runs
    encoded: int = 0  # samples encoded, pre- and post-roll included
    splices: list[int] = field(default_factory=list)  # where the packets switch source
    ranges: list[tuple[int, int]] = field(default_factory=list)  # what each encoder was fed
    primed: bool = False  # the first range's encoder was fed its pre-roll before (aac_early)


# -- the timeline's pieces -------------------------------------------------------------------

def _file_ident(path: Path) -> list[Any]:
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def pieces(clips: Sequence[Path], frames: Sequence[int], joins: Sequence[int],
           kinds: Sequence[str], fmt: OutputFormat) -> list[Piece]:
    """The audio pieces of the timeline in playback order, as `assemble` lays out its segments:
    per clip its body (frames t_in..frames-t_out) then, at a transition, the junction."""
    ids = [_file_ident(c) for c in clips]
    out = []
    for i in range(len(clips)):
        t_in = joins[i - 1] if i > 0 else 0
        t_out = joins[i] if i < len(joins) else 0
        end = frames[i] - t_out
        if end - t_in > 0:
            out.append(_piece(["body", ids[i], t_in, end, fmt.fps],
                              fmt.samples(end) - fmt.samples(t_in)))
        if t_out:
            out.append(_piece(["join", ids[i], ids[i + 1], frames[i], t_out, kinds[i], fmt.fps],
                              fmt.samples(t_out)))
    return out


def _piece(what: list[Any], samples: int) -> Piece:
    text = json.dumps(what, separators=(",", ":"))
    return Piece(hashlib.sha256(text.encode()).hexdigest()[:32], samples)


# -- the record of the last track ------------------------------------------------------------

def record_path(dest: Path) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.stem + RECORD_SUFFIX)


def remember(dest: Path, parts: Sequence[Piece]) -> None:
    """Record the pieces `dest`'s audio was made of, with `dest`'s identity as written now.
    Renamed into place but not fsynced: the cut was just written, and an fsync here waits for
    its megabytes to reach the disk; a record lost or torn by a crash only costs a full encode
    next time (`recorded` refuses it)."""
    import os
    import tempfile

    st = Path(dest).stat()
    path = record_path(dest)
    text = json.dumps({
        "settings": SETTINGS, "file": Path(dest).name, "size": st.st_size,
        "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
        "pieces": [[p.ident, p.samples] for p in parts]}, separators=(",", ":"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def forget(dest: Path) -> None:
    with contextlib.suppress(OSError):
        record_path(dest).unlink()


@dataclass(frozen=True)
class Reuse:
    """What of the previous track in the same file can be copied: its packets before `head`,
    and, when set, from `tail` on (the pieces after the change, at the same samples)."""

    head: int = 0
    tail: int | None = None


def recorded(dest: Path) -> list[tuple[str, int]] | None:
    """The pieces (identity, samples) of the track `dest` holds, as its record says; None when
    the record is missing, stale (`dest` is another file now) or made with other settings."""
    dest = Path(dest)
    try:
        rec = json.loads(record_path(dest).read_text(encoding="utf-8"))
        st = dest.stat()
        if (rec["settings"] != SETTINGS or rec["file"] != dest.name
                or [rec["size"], rec["mtime_ns"], rec["ino"]]
                != [st.st_size, st.st_mtime_ns, st.st_ino]):
            return None
        return [(str(i), int(n)) for i, n in rec["pieces"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reusable(dest: Path, parts: Sequence[Piece]) -> Reuse:
    """What of the previous track in `dest` can be copied: the packets before the first
    changed piece (less MARGIN frames) and, when the track is as long as before, those after
    the last changed piece (plus MARGIN frames); all of it when nothing changed. Nothing when
    the record is missing, stale or made with other settings."""
    old = recorded(dest)
    if old is None:
        return Reuse()
    new = [(p.ident, p.samples) for p in parts]
    total = sum(n for _, n in new)
    if old == new:
        return Reuse(head=total)
    first = next((k for k, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                 min(len(old), len(new)))
    head = max(0, (sum(n for _, n in new[:first]) // FRAME - MARGIN) * FRAME)
    tail = None
    if sum(n for _, n in old) == total:  # then a common suffix sits at the same samples
        last = 0
        while (last < min(len(old), len(new)) - first
               and old[len(old) - 1 - last] == new[len(new) - 1 - last]):
            last += 1
        start = total - sum(n for _, n in new[len(new) - last:]) if last else total
        tail = (-(-start // FRAME) + MARGIN) * FRAME
        if tail + (WINDOW + POSTROLL + 1) * FRAME > total:
            tail = None
    return Reuse(head, tail)


# -- chunks ----------------------------------------------------------------------------------

def ranges(start: int, total: int, slots: int) -> list[tuple[int, int]]:
    """Split [start, total) into at most `slots` ranges starting on frame boundaries, sized so
    that every encoder has the same work (its range plus its pre-roll). A range shorter than
    a pre-roll would spend more CPU on pre-roll than on the cut (the cores are shared with
    conforms), so audio under ~34 s is one range."""
    pre = (PREROLL + WINDOW) * FRAME

    def roll(a: int) -> int:
        return min(a, pre)

    best, n_best = total - start + roll(start), 1
    for n in range(2, max(1, slots) + 1):
        span = (total - start + roll(start) + (n - 1) * pre) / n
        if span < best * 0.95 and span - pre >= pre:
            best, n_best = span, n
    if n_best == 1:
        return [(start, total)]
    bounds, a = [start], start + best - roll(start)
    for _ in range(n_best - 1):
        bounds.append(int(a // FRAME) * FRAME)
        a += best - pre
    bounds.append(total)
    return list(zip(bounds, bounds[1:], strict=False))


async def _encode_chunk(listfile: Path, lo: int, hi: int, total: int, out: Path,
                        pcm: Sequence[tuple[int, int, Path]] = ()) -> int:
    """Encode the cut's samples [lo, hi) into `out` (.mp4); returns lo. Samples are counted,
    not timed (asetpts=N): the encoder sees exactly the stream a single pass would.
    `pcm`: (a, b, path) each: also write the cut's samples [a, b) there as raw s16le, for the
    choice of a splice."""
    trim = f"atrim=start_sample={lo}" + (f":end_sample={hi}" if hi < total else "")
    # in 1/48000 so that the times are whole samples (the concat list's time base may not be)
    graph = f"[0:a]asettb=1/{SAMPLE_RATE},asetpts=N,{trim},asetpts=PTS-STARTPTS"
    side: list[str] = []
    if pcm:
        graph += f",asplit={len(pcm) + 1}[e]" + "".join(f"[w{k}]" for k in range(len(pcm)))
        for k, (a, b, path) in enumerate(pcm):
            graph += f";[w{k}]atrim=start_sample={a - lo}:end_sample={b - lo}[p{k}]"
            side += ["-map", f"[p{k}]", "-c:a", "pcm_s16le", "-f", "s16le", str(path)]
    else:
        graph += "[e]"
    await run_ffmpeg(["-threads", "1", "-f", "concat", "-safe", "0", "-i", str(listfile),
                      "-filter_complex", graph, "-map", "[e]", *ENCODE_ARGS, "-threads", "1",
                      "-f", "mp4", str(out), *side])
    return lo


@dataclass
class _Source:
    path: Path
    offset: int  # added to the file's packet times to place them on the cut's timeline
    lo: int  # its packets are taken from this time on (the next source's lo ends them),
    # except in the splice windows
    window: tuple[int, int, Path] | None = None  # the splice window with the source before
    # this one, and the source PCM of that span


async def encode(listfile: Path, parts: Sequence[Piece], out: Path, work: Path, *,
                 previous: Path | None = None, reuse: Reuse = Reuse(),
                 slots: int | None = None, video: VideoTrack | None = None) -> AudioStats:
    """Write the cut's audio (the concat list's, `parts` long) as one AAC track into `out`
    (.m4a). With `previous`, that file's packets `reuse` names are copied and only the rest
    is encoded. `slots`: how many encoders may run at once (default: the ffmpeg slot count).
    `video`: `out` is the cut (.mp4), this track beside that video (`_splice`), whose
    packets are read while the track is encoded."""
    total = sum(p.samples for p in parts)
    if total <= 0:
        raise MediaError("the cut has no audio samples")
    head = min(reuse.head, total) if previous is not None else 0
    tail = reuse.tail if previous is not None and reuse.tail is not None else None
    if tail is not None and not head < tail <= total - (WINDOW + POSTROLL + 1) * FRAME:
        tail = None
    end = total if tail is None else tail
    stats = AudioStats(total=total, reused=head + (total - tail if tail else 0))
    sources = [_Source(previous, 0, -FRAME)] if head else []
    todo = ranges(head, end, slots or SLOTS.size) if head < total else []
    primed = None  # an encoder of the first range started before the cut (aac_early.py)
    if previous is not None:
        from flows.media import aac_early

        if todo and head and todo[0][0] == head:
            primed = await aac_early.take(previous, parts, max(0, head - (WINDOW + PREROLL)
                                                               * FRAME), head)
        else:
            aac_early.discard(previous)
    jobs = []
    for i, (a, b) in enumerate(todo):
        pcm, window = [], None
        if a:  # a splice with what comes before: somewhere in [w0, w1]
            w0 = max(FRAME, a - WINDOW * FRAME)
            w1 = a if i == 0 else min(total - FRAME, a + WINDOW * FRAME) // FRAME * FRAME
            window = (w0, w1, work / f"aac{i:02d}.pcm")
            pcm.append((w0, w1 + FRAME, window[2]))  # the blocks w0..w1
        lo = max(0, a - (WINDOW + PREROLL) * FRAME)
        hi = total if b == total else min(total, b + (WINDOW + POSTROLL) * FRAME)
        path = work / f"aac{i:02d}.mp4"
        sources.append(_Source(path, lo, a if a else -FRAME, window))
        if b == tail:  # and back to the previous track's packets, in [tail, tail + WINDOW]
            back = (tail, tail + WINDOW * FRAME, work / "tail.pcm")
            pcm.append((back[0], back[1] + FRAME, back[2]))
            assert previous is not None
            sources.append(_Source(previous, 0, tail, back))
        sub, at = _sublist(listfile, parts, lo, hi, work / f"aac{i:02d}.txt")
        chunk = _encode_chunk(sub, lo - at, hi - at, total - at, path,
                              [(a - at, b - at, p) for a, b, p in pcm])
        if i == 0 and primed is not None:
            chunk = _complete_primed(primed, sources, path, chunk, listfile, parts, hi, pcm[1:])
        jobs.append(chunk)
        stats.encoded += hi - lo
        stats.ranges.append((lo, hi))
    stats.chunks = len(jobs)
    try:
        async with asyncio.TaskGroup() as tg:  # a failure cancels (and kills) the others
            for job in jobs:
                tg.create_task(job)
            if video is not None:  # the cut's video read beside the encoders
                tg.create_task(asyncio.to_thread(video.read_ahead))
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
    try:
        stats.splices = await asyncio.to_thread(_splice, sources, out, total, video)
    except _Unmatched:
        if primed is not None:
            primed.kill()
        if not (head or tail):
            raise MediaError("the AAC chunks were encoded with different settings") from None
        return await encode(listfile, parts, out, work, slots=slots,  # the old track differs
                            video=video)
    finally:
        if primed is not None:
            primed.kill()  # the encoder has exited: its folder
    stats.primed = primed is not None and any(s.path == primed.out for s in sources)
    return stats


async def _complete_primed(primed: Any, sources: list[_Source], path: Path, chunk: Any,
                           listfile: Path, parts: Sequence[Piece], hi: int,
                           side: Sequence[tuple[int, int, Path]]) -> int:
    """The first range (the chunk encoder `chunk` would write `path`) from the primed encoder,
    whose file `sources` then names; when its span cannot be completed, `chunk` after all."""
    from flows.media import aac_early

    k = next(i for i, s in enumerate(sources) if s.path == path)
    chunk_source = sources[k]
    segments = list_paths(listfile)
    if len(segments) == len(parts):
        sources[k] = _Source(primed.out, primed.lo, chunk_source.lo, primed.window)
        try:
            await aac_early.complete(primed, segments, parts, hi, side)
            chunk.close()  # never started
            return primed.lo
        except MediaError:
            sources[k] = chunk_source
    primed.kill()
    return await chunk


def list_paths(listfile: Path) -> list[Path]:
    """The files of a concat list written by `assemble.concat_list`."""
    out = []
    for line in listfile.read_text(encoding="utf-8").splitlines():
        if line.startswith("file '") and line.endswith("'"):
            out.append(Path(line[6:-1].replace("'\\''", "'")))
    return out


def _sublist(listfile: Path, parts: Sequence[Piece], lo: int, hi: int,
             out: Path) -> tuple[Path, int]:
    """A concat list of only the segments that hold the samples [lo, hi), and the sample its
    first one starts at: an encoder then reads no segment it would throw away. The list has
    one segment per piece, in the same order (`assemble`); otherwise the whole list."""
    lines = listfile.read_text(encoding="utf-8").splitlines()
    if len(lines) != len(parts):
        return listfile, 0
    start, first, last, at = 0, None, len(lines), 0
    for k, p in enumerate(parts):
        if first is None and start + p.samples > lo:
            first, at = k, start
        start += p.samples
        if start >= hi:
            last = k + 1
            break
    if first is None:
        return listfile, 0
    out.write_text("\n".join(lines[first:last]) + "\n", encoding="utf-8")
    return out, at


class _Unmatched(Exception):
    """The previous track's codec parameters are not the new chunks'."""


def _splice(sources: Sequence[_Source], out: Path, total: int,
            video: VideoTrack | None = None) -> list[int]:
    """Mux one packet per frame, in order, into one AAC track in `out`: each source's within
    its range, and in each splice window the choice of `_choose`. Checks that the packets
    follow each other exactly (-1024, 0, 1024, ...) and end at `total`. Returns the samples
    where the track switches from one source to another. With `video`, `out` is the cut
    itself: that video and this track (flows/media/mux.py)."""
    import av

    containers = [av.open(str(s.path)) for s in sources]
    try:
        streams = [c.streams.audio[0] for c in containers]
        first = streams[0]
        for s, src in zip(streams, sources, strict=True):
            if s.time_base != first.time_base or s.time_base * SAMPLE_RATE != 1:
                raise MediaError(f"{src.path.name}: audio time base {s.time_base}, expected "
                                 f"1/{SAMPLE_RATE}")
            if (s.codec_context.extradata != first.codec_context.extradata
                    or s.codec_context.channels != first.codec_context.channels):
                raise _Unmatched
        read: dict[tuple[Path, int], dict[int, Any]] = {}  # the previous track: read once
        packets = []
        for c, s, src in zip(containers, streams, sources, strict=True):
            key = (src.path, src.offset)
            if key not in read:
                read[key] = {p.pts + src.offset: p for p in c.demux(s) if p.pts is not None}
            packets.append(read[key])
        owner: dict[int, int] = {}  # frame time -> source, where a window decided
        for i in range(1, len(sources)):
            if sources[i].window is not None:
                owner.update({t: i - 1 + side for t, side in
                              _choose(packets[i - 1], packets[i], sources[i].window, first)})
        switches: list[int] = []
        end: int | None = None

        def chosen() -> Iterator[Any]:
            """One packet per frame, in order, retimed onto the cut's samples."""
            nonlocal end
            t, i, previous = -FRAME, 0, 0
            while t < total:
                while i + 1 < len(sources) and t >= sources[i + 1].lo:
                    i += 1
                src_i = owner.get(t, i)
                pkt = packets[src_i].get(t)
                if pkt is None:
                    raise MediaError(f"{sources[src_i].path.name}: no AAC packet at sample {t}")
                if src_i != previous:
                    switches.append(t)
                    previous = src_i
                pkt.pts = pkt.dts = t
                end = t + (pkt.duration or FRAME)
                yield pkt
                t += FRAME

        if video is None:
            with av.open(str(out), "w", format="mp4") as dst:
                ost = dst.add_stream_from_template(first)
                for pkt in chosen():
                    pkt.stream = ost
                    dst.mux(pkt)
        else:  # the cut itself: its video beside, in one file (flows/media/mux.py)
            from flows.media.mux import write_cut

            write_cut(out, video, chosen(), first, -(-total // FRAME) + 1)
    finally:
        for c in containers:
            c.close()
    if end != total:
        raise MediaError(f"the cut's AAC track ends at sample {end}, expected {total}")
    return switches


def _choose(before: dict[int, Any], after: dict[int, Any], window: tuple[int, int, Path],
            template: Any) -> list[tuple[int, int]]:
    """Which encoder's packet to take for each frame t in [w0, w1] (0: `before`, 1: `after`;
    `after` at w1), so that the decoded result is closest to the source PCM over the window.

    Two encoders given the same signal code it about equally well, but their bit reservoirs
    differ, and around a transient one may spend far fewer bits than the other (measured:
    4.5x the error in the two blocks before a click). Every block is therefore taken from
    the one that codes it better, switching as often as pays: the cost of a switch is the
    decoded error of the block where the two encoders' frames overlap, so a switch where
    their window shapes disagree (which would break the aliasing cancellation) is avoided."""
    import numpy as np

    w0, w1, pcm_path = window
    src = np.fromfile(pcm_path, dtype=np.int16).reshape(-1, 2).astype(np.float32)
    times = list(range(w0, w1 + FRAME, FRAME))
    if len(src) < w1 - w0 + FRAME:
        raise MediaError(f"{pcm_path.name}: {len(src)} samples of source PCM, expected "
                         f"{w1 - w0 + FRAME}")

    def err(t: int, frame: Any) -> float:
        got = frame.to_ndarray().T * 32768.0
        ref = src[t - w0:t - w0 + FRAME]
        return float(((got[: len(ref)] - ref) ** 2).sum())

    def run(seq: list[tuple[int, dict[int, Any]]]) -> list[float]:
        """Decode packets (time, source) in order: the error of every block after the first
        (the first has no frame to overlap with)."""
        ctx, out = _decoder(template), []
        for k, (t, pk) in enumerate(seq):
            frames = ctx.decode(pk[t])
            if k and frames:
                out.append(err(t, frames[0]))
            elif k:
                out.append(float("inf"))
        return out

    span = range(w0 - 2 * FRAME, w1 + FRAME, FRAME)
    try:
        e = [dict(zip(span[2:], run([(t, pk) for t in span])[1:], strict=True))
             for pk in (before, after)]
        mix = [{t: run([(t - 2 * FRAME, a), (t - FRAME, a), (t, b)])[-1] for t in times}
               for a, b in ((after, before), (before, after))]  # mix[s][t]: into s at t
    except KeyError as exc:
        raise MediaError(f"no AAC packet at sample {exc} in a splice window") from None
    e[0][w1] = float("inf")  # `after` owns w1 and what follows
    # dynamic programme over the window: cost of ending block t in state s
    cost, back = [0.0, float("inf")], []
    for t in times:
        step, came = [0.0, 0.0], [0, 0]
        for s in (0, 1):
            stay, switch = cost[s] + e[s].get(t, float("inf")), cost[1 - s] + mix[s][t]
            step[s], came[s] = (stay, s) if stay <= switch else (switch, 1 - s)
        cost = step
        back.append(came)
    state, path = 1, []
    for t, came in zip(reversed(times), reversed(back), strict=True):
        path.append((t, state))
        state = came[state]
    return path[::-1]


def _decoder(template: Any) -> Any:
    import av

    ctx = av.CodecContext.create(template.codec_context.name, "r")
    ctx.extradata = template.codec_context.extradata
    return ctx
