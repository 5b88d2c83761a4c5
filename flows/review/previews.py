"""What the review page plays: a browser-friendly copy of each take and a poster frame.

Conformed clips (.mov, PCM audio) join by stream copy but browsers do not play PCM; the
preview copies the H.264 video as is and encodes the audio to AAC, one ffmpeg per take, made
once (an up-to-date preview is kept).
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
    made_video: Path | None = video if video_copy else src
    made_poster: Path | None = poster
    if video_copy and not _fresh(video, src):
        made_video = await _make(["-i", str(src), "-map", "0:v:0", "-map", "0:a?", "-c:v", "copy",
                                  "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart",
                                  "-f", "mp4"], video)
    if not _fresh(poster, src):
        # a frame a third of the way in: the first frame of a fade or slate says little
        made_poster = await _make(["-ss", "0.4", "-i", str(src), "-frames:v", "1",
                                   "-vf", f"scale='min({POSTER_WIDTH},iw)':-2", "-q:v", "4",
                                   "-update", "1", "-f", "image2"], poster)
        if made_poster is None:  # a clip shorter than the seek: its first frame
            made_poster = await _make(["-i", str(src), "-frames:v", "1", "-vf",
                                       f"scale='min({POSTER_WIDTH},iw)':-2", "-q:v", "4",
                                       "-update", "1", "-f", "image2"], poster)
    return made_video, made_poster


async def _make(args: list[str], dest: Path) -> Path | None:
    tmp = temp_name(dest)
    try:
        await run_ffmpeg([*args, str(tmp)], timeout=120)
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
