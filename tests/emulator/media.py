"""Real MP4 clips for the emulator to serve, made once per parameter set and cached.

Clips are H.264 + AAC with +faststart, like what vendors deliver, so the code
under test (probe, conform, concat) sees real media. Generation is ffmpeg's
lavfi test pattern, which takes a fraction of a second at the small sizes the
emulator serves by default.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import threading
from pathlib import Path

_MEMORY_LIMIT = 64  # clips kept in memory; each is tens to hundreds of KB at test sizes
_memory: dict[tuple, bytes] = {}
_locks: dict[tuple, threading.Lock] = {}
_guard = threading.Lock()


def ffmpeg_exe() -> str:
    exe = os.environ.get("FFMPEG_BINARY")
    if exe:
        return exe
    import imageio_ffmpeg  # lazy: only needed when a clip is actually made

    return imageio_ffmpeg.get_ffmpeg_exe()


def cache_dir() -> Path:
    configured = os.environ.get("STORYREEL_EMULATOR_CACHE")
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "storyreel-emulator"
    path.mkdir(parents=True, exist_ok=True)
    return path


def even(n: float) -> int:
    """Nearest even integer >= 2 (yuv420p needs even dimensions)."""
    return max(2, int(round(n / 2)) * 2)


def fit_size(media_size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """`media_size`'s pixel area with the aspect of width x height: 320x180 -> 180x320 for 9:16."""
    if width <= 0 or height <= 0:
        width, height = 16, 9
    area = media_size[0] * media_size[1]
    aspect = width / height
    return even(math.sqrt(area * aspect)), even(math.sqrt(area / aspect))


LOOKS = 6  # distinct clips per size when the emulator serves distinct_clips


def look_of(serial: int) -> int:
    """1..LOOKS by the job's submit order: jobs submitted one after another never share one."""
    return 1 + (serial - 1) % LOOKS


PICTURES = ("", "black", "frozen")


def clip_bytes(duration: float, width: int, height: int, fps: int = 24, look: int = 0,
               picture: str = "") -> bytes:
    """A real MP4 of `duration` seconds at width x height (made even); cached on disk and in memory.
    `look` > 0 turns the test pattern's hue by look x 60 degrees: same size, another picture.
    `picture`: "black" (every frame black, the sound kept) or "frozen" (the test pattern's
    first frame held throughout) for the `black`/`frozen` job faults; "" the moving pattern."""
    if picture not in PICTURES:
        raise ValueError(f"unknown picture {picture!r} (known: {PICTURES})")
    duration = max(round(float(duration), 3), 1.0 / fps)
    width, height = even(width), even(height)
    key = (duration, width, height, int(fps), int(look), picture)
    cached = _memory.get(key)
    if cached is not None:
        return cached
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # one ffmpeg per key even when many requests ask at once
        cached = _memory.get(key)
        if cached is not None:
            return cached
        name = f"clip-{duration:g}s-{width}x{height}-{fps}fps" + (f"-look{look}" if look else "") \
            + (f"-{picture}" if picture else "")
        path = cache_dir() / f"{name}.mp4"
        if not path.exists():
            _render(path, duration, width, height, fps, look, picture)
        data = path.read_bytes()
        with _guard:
            if len(_memory) >= _MEMORY_LIMIT:
                _memory.pop(next(iter(_memory)))
            _memory[key] = data
        return data


def _render(path: Path, duration: float, width: int, height: int, fps: int, look: int = 0,
            picture: str = "") -> None:
    # unique temp name + atomic rename: safe across processes (pytest-xdist, a standalone server)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    size = f"size={width}x{height}:rate={fps}:duration={duration}"
    if picture == "black":
        video = f"color=c=black:{size}"
    elif picture == "frozen":  # the first frame, cloned to the end
        video = f"testsrc2={size},trim=end_frame=1,tpad=stop=-1:stop_mode=clone,trim=duration={duration}"
    else:
        video = f"testsrc2={size}" + (f",hue=h={60 * look}:s=2" if look else "")
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", video,
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={duration}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "64k", "-shortest", "-movflags", "+faststart", tmp,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed making a test clip: {proc.stderr.decode()[-500:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
