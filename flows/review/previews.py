"""What the review page plays: a browser-friendly copy of each take and a poster frame.

Conformed clips (.mov, PCM audio) join by stream copy but browsers do not play PCM; the
preview copies the H.264 video as is and encodes the audio to Opus (in MP4: Chrome, Firefox,
Edge, Safari 17+), one ffmpeg per take, made once (an up-to-date preview is kept). Opus, not
AAC: ffmpeg's AAC encoder made a preview cost 0.27 s of CPU, libopus 0.08 s, and a 100-shot
board makes 100 of them (their share of a 100-shot run: bench/README.md, "Large boards").
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from flows.media.conform import temp_name
from flows.media.ffmpeg_exec import run_ffmpeg
from providers.errors import StoryreelError

FOLDER = "review"  # inside the run folder, beside review.html
POSTER_WIDTH = 480


def _fresh(out: Path, src: Path) -> bool:
    return out.exists() and out.stat().st_mtime_ns >= src.stat().st_mtime_ns


async def preview(src: Path, run_dir: Path, name: str, video_copy: bool = True
                  ) -> tuple[Path | None, Path | None]:
    """(preview.mp4, poster.jpg) for `src` under run_dir/review/, either None when ffmpeg
    could not make it: a page with a missing poster beats a failed run. Without
    `video_copy` (a clip browsers already play, like final.mp4) the clip itself is used."""
    folder = run_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    video, poster = folder / f"{name}.mp4", folder / f"{name}.jpg"
    need_video = video_copy and not _fresh(video, src)
    need_poster = not _fresh(poster, src)
    made_video: Path | None = video if video_copy else src
    made_poster: Path | None = poster
    # a frame 0.4 s in: the first frame of a fade or slate says little
    poster_args = ["-frames:v", "1", "-vf", f"scale='min({POSTER_WIDTH},iw)':-2", "-q:v", "4",
                   "-update", "1", "-f", "image2"]
    video_args = ["-map", "0:v:0", "-map", "0:a?", "-c:v", "copy", "-c:a", "libopus", "-b:a", "96k",
                  "-movflags", "+faststart", "-f", "mp4"]
    if need_video and need_poster:  # one ffmpeg for both (each start costs ~0.2 s)
        made = await _make_many(["-i", str(src)], [(video_args, video),
                                                   (["-map", "0:v:0", "-ss", "0.4", *poster_args],
                                                    poster)])
        if made:
            return video, poster
    if need_video:
        made_video = await _make(["-i", str(src), *video_args], video)
    if need_poster:  # in this process first: an ffmpeg start costs more than the frame
        made_poster = await asyncio.to_thread(_poster_here, src, poster)
    if need_poster and made_poster is None:
        made_poster = await _make(["-ss", "0.4", "-i", str(src), *poster_args], poster)
        if made_poster is None:  # a clip shorter than the seek: its first frame
            made_poster = await _make(["-i", str(src), *poster_args], poster)
    return made_video, made_poster


def _poster_here(src: Path, dest: Path, at: float = 0.4) -> Path | None:
    """The poster by PyAV (FFmpeg's libraries): the first frame at or after `at` (the first
    frame of a shorter clip), at most POSTER_WIDTH wide, JPEG at quality 4 as `-q:v 4` makes
    it. ~0.1 s where an ffmpeg took 0.3-0.8 s at the end of an edit loop (bench/README.md
    P9). None when it cannot: the caller asks ffmpeg."""
    from fractions import Fraction

    import av

    tmp = temp_name(dest)
    try:
        with av.open(str(src)) as container:
            stream = container.streams.video[0]
            frame = None
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= at - 1e-6:
                    break
            if frame is None:
                return None
        width = min(POSTER_WIDTH, frame.width)
        height = max(2, round(frame.height * width / frame.width / 2) * 2)
        ctx = av.CodecContext.create("mjpeg", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
        ctx.time_base = Fraction(1, 25)
        ctx.options = {"qmin": "4", "qmax": "4"}
        pic = frame.reformat(width=width, height=height, format="yuvj420p",
                             interpolation="BICUBIC")
        data = b"".join(bytes(p) for p in [*ctx.encode(pic), *ctx.encode(None)])
        if not data:
            return None
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return dest
    except (av.FFmpegError, OSError, ValueError):
        return None
    finally:
        tmp.unlink(missing_ok=True)


async def _make_many(inputs: list[str], outputs: list[tuple[list[str], Path]]) -> bool:
    """One ffmpeg writing several files; all or nothing."""
    tmps = [temp_name(dest) for _, dest in outputs]
    args = list(inputs)
    for (opts, _), tmp in zip(outputs, tmps, strict=True):
        args += [*opts, str(tmp)]
    try:
        await run_ffmpeg(args, timeout=120, background=True)
        if not all(t.is_file() and t.stat().st_size for t in tmps):
            return False
        for (_, dest), tmp in zip(outputs, tmps, strict=True):
            os.replace(tmp, dest)
        return True
    except StoryreelError:
        return False
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)


async def _make(args: list[str], dest: Path) -> Path | None:
    tmp = temp_name(dest)
    try:
        await run_ffmpeg([*args, str(tmp)], timeout=120, background=True)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            return None
        os.replace(tmp, dest)
        return dest
    except StoryreelError:
        return None
    finally:
        tmp.unlink(missing_ok=True)


async def previews(items: dict[str, Path], run_dir: Path, playable: frozenset[str] = frozenset()
                   ) -> dict[str, tuple[Path | None, Path | None]]:
    """Previews for many clips at once (ffmpeg_exec bounds how many run together); the
    names in `playable` get a poster only."""
    names = list(items)
    made = await asyncio.gather(*(preview(items[n], run_dir, n, n not in playable)
                                  for n in names))
    return dict(zip(names, made, strict=True))
