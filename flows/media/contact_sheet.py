"""A contact sheet: evenly spaced frames of the cut tiled into one PNG (docs/ffmpeg-notes.md).

Drawn in this process with PyAV (FFmpeg's libraries), not by an ffmpeg command: one demuxer,
one decoder, a seek per tile, when the tiles are at least a keyframe interval apart (house
clips have one every 2 s): each tile is then the keyframe at or before its time, one decoded
frame per tile. Closer tiles (a short cut) need their exact frames: one ffmpeg command, an
accurate input seek per tile, draws those. The ffmpeg command
it replaces (one input seek per tile, a tile filter) took 0.5-0.7 s of the edit loop's end
(12 tiles of a 100 s 720p cut), most of it starting 12 demuxers and decoders; this takes a
tenth of that (bench/README.md P9).

Tiles kept. A tile in-process is its keyframe decoded alone, so it is a function of that
packet and the stream's headers: tiles are kept beside the sheet (`tiles_dir`, only the last
sheet's), named by the sha256 of those bytes and the tile width, and the next sheet decodes
only the keyframes it has not seen (an edit of one shot of 20: one or two of 12 tiles). An
exact frame is named by the packets from its keyframe up to its own (all its decoder reads):
when at most MAX_EXACT_HERE of them are new, they are decoded here and no ffmpeg is run; the
tiles of a sheet ffmpeg draws are kept under those names.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from flows.media.conform import temp_name
from flows.media.probe import probe
from providers.errors import MediaError

TILE_WIDTH = 320
KEYFRAME_INTERVAL = 2.0  # seconds: conform's -g 2*fps
PAD = 4  # pixels between tiles and around them
BACKGROUND = (0x20, 0x20, 0x20)


def tiles_dir(dest_png: Path) -> Path:
    """Beside the sheet: its decoded tiles, named by content."""
    return dest_png.parent / f".{dest_png.stem}.tiles"


async def contact_sheet(video: Path, dest_png: Path, *, tiles: int = 12, columns: int = 4) -> Path:
    """Write `tiles` frames of `video` (centre of each equal slice) as a grid PNG."""
    video, dest_png = Path(video), Path(dest_png)
    if tiles < 1 or columns < 1:
        raise ValueError("tiles and columns must be at least 1")
    info = probe(video)
    if info.duration <= 0:
        raise MediaError(f"{video.name}: no duration, cannot pick frames")
    columns = min(columns, tiles)
    width = min(TILE_WIDTH, info.width) // 2 * 2
    # Keep away from the very end, where a seek can land past the last frame.
    last = max(0.0, info.duration - 1.5 / max(info.fps, 1.0))
    times = [min(last, (i + 0.5) * info.duration / tiles) for i in range(tiles)]
    frame_s = 1.0 / info.fps if info.fps > 0 else None
    if frame_s is not None:  # the middle of the frame showing at each time: see _draw_ffmpeg
        times = [(math.floor(t / frame_s + 1e-6) + 0.5) * frame_s for t in times]
    tmp = temp_name(dest_png)
    try:
        keep = tiles_dir(dest_png)
        if info.duration / tiles >= KEYFRAME_INTERVAL:
            await asyncio.to_thread(_draw, video, tmp, times, columns, width, False, keep)
        elif not await asyncio.to_thread(_draw_kept_exact, video, tmp, times, columns, width,
                                         keep):
            # many exact frames to decode: one ffmpeg decoding each input from its keyframe
            # was faster than seeking and decoding here beside the run's other threads
            # (bench P9 demo); its tiles are kept for the next sheet
            await _draw_ffmpeg(video, tmp, times, columns, width, frame_s)
            await asyncio.to_thread(_keep_from_sheet, video, tmp, times, columns, width, keep)
        os.replace(tmp, dest_png)
    finally:
        tmp.unlink(missing_ok=True)
    return dest_png


async def _draw_ffmpeg(video: Path, out: Path, times: list[float], columns: int,
                       width: int, frame_s: float | None = None) -> None:
    """The same sheet by one ffmpeg: an accurate input seek per tile, the tile filter.

    An accurate seek to `-ss T` gives the first frame whose time is at or after T; the tiles
    drawn here are the frames showing at each time (as `_frame_at` decodes them). With
    `frame_s` (a frame's duration; times in the middle of their frames) ffmpeg is asked for a
    time one frame earlier, between the two frames' starts, where neither the argv's
    millisecond rounding nor the demuxer's time base can move the choice by a frame."""
    from flows.media.ffmpeg_exec import run_ffmpeg

    rows = math.ceil(len(times) / columns)
    args: list[str] = []
    chains = []
    for i, t in enumerate(times):  # one decoder thread per input: 12 pools cost more
        seek = max(0.0, t - frame_s) if frame_s else t
        args += ["-threads", "1", "-ss", f"{seek:.3f}", "-i", str(video)]
        chains.append(f"[{i}:v:0]trim=end_frame=1,setpts=PTS-STARTPTS,"
                      f"scale={width}:-2,setsar=1[t{i}]")
    labels = "".join(f"[t{i}]" for i in range(len(times)))
    graph = ";".join([*chains, f"{labels}concat=n={len(times)}:v=1:a=0,tile={columns}x{rows}"
                               f":padding={PAD}:margin={PAD}:color=0x202020[out]"])
    await run_ffmpeg([*args, "-filter_complex", graph, "-map", "[out]", "-frames:v", "1",
                      "-update", "1", "-c:v", "png", "-f", "image2", str(out)])
    if not out.is_file() or out.stat().st_size == 0:
        raise MediaError(f"{out.name}: ffmpeg wrote no contact sheet")


def _draw(video: Path, out: Path, times: list[float], columns: int, width: int,
          exact: bool, keep: Path | None = None) -> None:
    """`keep`: where tiles are kept by content (keyframe tiles only, `exact` False)."""
    import av

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            if keep is not None and not exact:
                pictures = _kept_tiles(container, stream, times, width, keep)
            else:
                pictures = [_rgb(_frame_at(container, stream, t, exact), width) for t in times]
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{video.name}: cannot draw a contact sheet ({exc})") from None
    _compose(pictures, columns, width, out)


def _compose(pictures: list[Any], columns: int, width: int, out: Path) -> None:
    import numpy as np

    h = max(p.shape[0] for p in pictures)
    rows = math.ceil(len(pictures) / columns)
    sheet = np.empty((PAD + rows * (h + PAD), PAD + columns * (width + PAD), 3), np.uint8)
    sheet[:] = BACKGROUND
    for i, p in enumerate(pictures):
        y, x = PAD + (i // columns) * (h + PAD), PAD + (i % columns) * (width + PAD)
        sheet[y:y + p.shape[0], x:x + p.shape[1]] = p
    _write_png(sheet, out)


def _frame_at(container: Any, stream: Any, t: float, exact: bool) -> Any:
    """The keyframe at or before `t` (exact=False), or the frame showing at `t`."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    container.seek(int((t + start) / tb), stream=stream, backward=True, any_frame=False)
    best = None
    for frame in container.decode(stream):
        if not exact or frame.pts is None:
            return frame
        if best is not None and float(frame.pts * tb) - start > t + 1e-6:
            return best
        best = frame
    if best is None:
        raise MediaError(f"no frame at {t:.3f} s")
    return best


def _kept_tiles(container: Any, stream: Any, times: list[float], width: int,
                keep: Path) -> list[Any]:
    """The keyframe at or before each time as a tile, from `keep` when a previous sheet
    decoded the same keyframe (same bytes, same headers, same width); `keep` then holds
    exactly these tiles."""
    import hashlib

    import numpy as np

    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    headers = bytes(stream.codec_context.extradata or b"")
    keep.mkdir(parents=True, exist_ok=True)
    pictures, used = [], set()
    for t in times:
        container.seek(int((t + start) / tb), stream=stream, backward=True, any_frame=False)
        packets = (p for p in container.demux(stream) if p.size)
        first = next(packets, None)
        if first is None:
            raise MediaError(f"no frame at {t:.3f} s")
        digest = hashlib.sha256(headers + bytes(first) + str(width).encode()).hexdigest()[:32]
        path = keep / f"{digest}.npy"
        used.add(path.name)
        try:
            pictures.append(np.load(path, allow_pickle=False))
            continue
        except (OSError, ValueError):
            pass
        frame = None
        for pkt in itertools.chain([first], packets):
            decoded = stream.codec_context.decode(pkt)
            if decoded:
                frame = decoded[0]
                break
        if frame is None:
            decoded = stream.codec_context.decode(None)
            if not decoded:
                raise MediaError(f"no frame at {t:.3f} s")
            frame = decoded[0]
        tile = _rgb(frame, width)
        _save_tile(tile, path)
        pictures.append(tile)
    _forget_others(keep, used)
    return pictures


MAX_EXACT_HERE = 4  # exact tiles decoded in this process; more: one ffmpeg draws the sheet


def _exact_key(container: Any, stream: Any, t: float, width: int) -> str | None:
    """The name of the exact frame showing at `t`: the sha256 of the stream's headers and the
    packets from the keyframe before it up to its own, in decoding order (all a decoder
    uses to make it), and the tile width. None when the keyframe shows after `t`."""
    import hashlib

    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    container.seek(int((t + start) / tb), stream=stream, backward=True, any_frame=False)
    got: list[tuple[int | None, bytes]] = []
    for pkt in container.demux(stream):
        if not pkt.size:
            continue
        if got and pkt.dts is not None and float(pkt.dts * tb) - start > t + 1e-6:
            break  # pts >= dts: no later packet shows at or before t
        got.append((pkt.pts, bytes(pkt)))
    shown = [i for i, (pts, _) in enumerate(got)
             if pts is not None and float(pts * tb) - start <= t + 1e-6]
    if not shown:
        return None
    last = max(shown, key=lambda i: got[i][0] or 0)
    h = hashlib.sha256(b"exact" + bytes(stream.codec_context.extradata or b""))
    for _, data in got[:last + 1]:
        h.update(len(data).to_bytes(4, "big") + data)
    h.update(str(width).encode())
    return h.hexdigest()[:32]


def _exact_keys(video: Path, times: list[float], width: int) -> list[str | None]:
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return [_exact_key(container, stream, t, width) for t in times]


def _draw_kept_exact(video: Path, out: Path, times: list[float], columns: int, width: int,
                     keep: Path) -> bool:
    """The sheet of exact frames from the tiles kept in `keep`, decoding the missing ones
    here when they are few (an edit); False (nothing drawn) when they are not."""
    import av
    import numpy as np

    try:
        keys = _exact_keys(video, times, width)
        if None in keys:
            return False
        paths = [keep / f"{k}.npy" for k in keys]
        if sum(not p.is_file() for p in paths) > MAX_EXACT_HERE:
            return False
        pictures = []
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            for t, path in zip(times, paths, strict=True):
                try:
                    pictures.append(np.load(path, allow_pickle=False))
                    continue
                except (OSError, ValueError):
                    pass
                tile = _rgb(_frame_at(container, stream, t, True), width)
                _save_tile(tile, path)
                pictures.append(tile)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{video.name}: cannot draw a contact sheet ({exc})") from None
    _forget_others(keep, {p.name for p in paths})
    _compose(pictures, columns, width, out)
    return True


def _keep_from_sheet(video: Path, sheet: Path, times: list[float], columns: int, width: int,
                     keep: Path) -> None:
    """Keep the tiles of a sheet ffmpeg drew, under their exact frames' names."""
    import av

    with contextlib.suppress(av.FFmpegError, OSError, StopIteration, ValueError):
        keys = _exact_keys(video, times, width)
        with av.open(str(sheet)) as c:
            px = next(c.decode(video=0)).to_ndarray(format="rgb24")
        with av.open(str(video)) as c:
            s = c.streams.video[0]
            h = max(2, round(s.height * width / s.width / 2) * 2)
        rows = -(-len(times) // columns)
        if px.shape[:2] != (PAD + rows * (h + PAD), PAD + columns * (width + PAD)):
            return
        used = set()
        for i, key in enumerate(keys):
            if key is None:
                continue
            y, x = PAD + (i // columns) * (h + PAD), PAD + (i % columns) * (width + PAD)
            _save_tile(px[y:y + h, x:x + width].copy(), keep / f"{key}.npy")
            used.add(f"{key}.npy")
        _forget_others(keep, used)


def _save_tile(tile: Any, path: Path) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, tile, allow_pickle=False)
    os.replace(tmp, path)


def _forget_others(keep: Path, used: set[str]) -> None:
    """Only the last sheet's tiles are kept."""
    for old in keep.glob("*.npy"):
        if old.name not in used:
            old.unlink(missing_ok=True)


def _rgb(frame: Any, width: int) -> Any:
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    return frame.reformat(width=width, height=height, format="rgb24",
                          interpolation="BICUBIC").to_ndarray()


def _write_png(pixels: Any, out: Path) -> None:
    """RGB rows, filter type 0, zlib level 6 (https://www.w3.org/TR/png-3/): ffmpeg's PNG
    encoder (PyAV's) took ~0.3 s for a 1300x556 sheet, zlib ~0.05 s."""
    import numpy as np

    h, w = pixels.shape[:2]
    rows = np.zeros((h, 1 + 3 * w), np.uint8)
    rows[:, 1:] = pixels.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    out.write_bytes(b"\x89PNG\r\n\x1a\n"
                    + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))
