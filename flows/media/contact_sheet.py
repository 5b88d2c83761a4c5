"""A contact sheet: evenly spaced frames of the cut tiled into one PNG (docs/ffmpeg-notes.md).

One input seek per tile in a single ffmpeg process: evenly spaced timestamps, and fast (1.4 s
for 20 tiles of a 100 s 720p cut, against 5.9 s decoding all). When the tiles are at least a
keyframe interval apart (house clips have one every 2 s), each tile is the keyframe at or
before its time: one decoded frame per tile instead of up to 48; with one decoder thread per
input, 12 tiles of a 100 s 720p cut take 0.6 s instead of 0.94 s, at the end of every run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from flows.media.conform import temp_name
from flows.media.ffmpeg_exec import run_ffmpeg
from flows.media.probe import probe
from providers.errors import MediaError

TILE_WIDTH = 320
KEYFRAME_INTERVAL = 2.0  # seconds: conform's -g 2*fps


async def contact_sheet(video: Path, dest_png: Path, *, tiles: int = 12, columns: int = 4) -> Path:
    """Write `tiles` frames of `video` (centre of each equal slice) as a grid PNG."""
    video, dest_png = Path(video), Path(dest_png)
    if tiles < 1 or columns < 1:
        raise ValueError("tiles and columns must be at least 1")
    info = probe(video)
    if info.duration <= 0:
        raise MediaError(f"{video.name}: no duration, cannot pick frames")
    columns = min(columns, tiles)
    rows = math.ceil(tiles / columns)
    width = min(TILE_WIDTH, info.width) // 2 * 2
    # Keep away from the very end, where a seek can land past the last frame.
    last = max(0.0, info.duration - 1.5 / max(info.fps, 1.0))
    times = [min(last, (i + 0.5) * info.duration / tiles) for i in range(tiles)]

    # one decoder thread per input: 12 thread pools cost more than the frames they decode
    seek = ["-threads", "1"] + (
        ["-noaccurate_seek"] if info.duration / tiles >= KEYFRAME_INTERVAL else [])
    args: list[str] = []
    chains = []
    for i, t in enumerate(times):
        args += [*seek, "-ss", f"{t:.3f}", "-i", str(video)]
        chains.append(f"[{i}:v:0]trim=end_frame=1,setpts=PTS-STARTPTS,"
                      f"scale={width}:-2,setsar=1[t{i}]")
    labels = "".join(f"[t{i}]" for i in range(tiles))
    graph = ";".join([*chains, f"{labels}concat=n={tiles}:v=1:a=0,"
                               f"tile={columns}x{rows}:padding=4:margin=4:color=0x202020[out]"])
    tmp = temp_name(dest_png)
    try:
        await run_ffmpeg([*args, "-filter_complex", graph, "-map", "[out]", "-frames:v", "1",
                          "-update", "1", "-c:v", "png", "-f", "image2", str(tmp)])
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise MediaError(f"{dest_png.name}: ffmpeg wrote no contact sheet")
        os.replace(tmp, dest_png)
    finally:
        tmp.unlink(missing_ok=True)
    return dest_png
