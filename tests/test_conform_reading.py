"""How conform reads a source. Colours survive: an untagged clip is read with the matrix
players assume for it (BT.709 for HD, BT.601 for SD), a tagged clip with its own tag; the
intermediate is BT.709.

The expected colours are the ones the test clips were made from, not anything of the
product's: a clip of RGB (200, 50, 40) must come back as about (200, 50, 40).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flows.media.conform import OutputFormat, conform, conform_argv, reading_of, source_matrix
from flows.media.ffmpeg_exec import ffmpeg_exe, run_ffmpeg_sync
from flows.media.probe import probe

RED = (200, 50, 40)
# A 601/709 mix-up moves this colour by 13-16 levels per channel; rounding through limited-range
# YUV 4:2:0 and x264 moves it by 3-4.
TOLERANCE = 7


def _clip(path: Path, size: str, matrix: str, tag: bool) -> Path:
    """One second of a solid RED, converted to YUV with `matrix`; tagged with it or untagged."""
    tags = (f"setparams=colorspace={matrix}:color_primaries={matrix}:color_trc={matrix}"
            if tag else "setparams=colorspace=unknown:color_primaries=unknown:color_trc=unknown")
    hexa = "0x" + "".join(f"{c:02X}" for c in RED)
    run_ffmpeg_sync(["-f", "lavfi", "-i", f"color=c={hexa}:s={size}:r=24:d=1",
                     "-vf", f"scale=out_color_matrix={matrix}:out_range=tv,format=yuv420p,{tags}",
                     "-c:v", "libx264", "-preset", "ultrafast", str(path)])
    return path


def _centre_rgb(path: Path, matrix: str = "bt709") -> tuple[int, ...]:
    """The middle pixel of the first frame, read as RGB with `matrix` (the intermediate's)."""
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1", "-vf",
         f"crop=2:2,scale=in_color_matrix={matrix}:in_range=tv,format=rgb24",
         "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    return tuple(out[:3])


def _close(got: tuple[int, ...]) -> bool:
    return all(abs(g - w) <= TOLERANCE for g, w in zip(got, RED, strict=True))


@pytest.mark.parametrize("size,matrix,tag", [
    ("1280x720", "bt709", False),   # untagged HD: players read it as BT.709
    ("1920x1080", "bt709", False),
    ("640x480", "smpte170m", False),  # untagged SD: BT.601
    ("1280x720", "smpte170m", True),  # a tag wins over the size
    ("640x360", "bt709", True),
])
async def test_conform_keeps_the_colour(tmp_path: Path, size: str, matrix: str, tag: bool) -> None:
    src = _clip(tmp_path / "src.mp4", size, matrix, tag)
    assert probe(src).color_tagged is tag
    # the source itself, read as its maker meant it, is the colour we asked for
    assert _close(_centre_rgb(src, "bt601" if matrix == "smpte170m" else "bt709"))
    dest = tmp_path / "out.mov"
    await conform(src, dest, OutputFormat(320, 180, 24), 1.0)
    got = _centre_rgb(dest)
    assert _close(got), f"{size} {matrix} tagged={tag}: {got} instead of about {RED}"


def test_source_matrix_rule(tmp_path: Path) -> None:
    hd = probe(_clip(tmp_path / "hd.mp4", "1280x720", "bt709", False))
    sd = probe(_clip(tmp_path / "sd.mp4", "720x576", "smpte170m", False))
    tagged = probe(_clip(tmp_path / "t.mp4", "640x360", "bt709", True))
    assert (source_matrix(hd), source_matrix(sd), source_matrix(tagged)) == \
        ("bt709", "bt601", "auto")



def test_the_same_clip_makes_the_same_intermediate_whatever_the_threads(tmp_path: Path) -> None:
    """A conform that runs alone decodes on every core; its output must not depend on that
    (x264's would: a resumed run must cut the same frames as an uninterrupted one)."""
    src = _clip(tmp_path / "src.mp4", "1280x720", "bt709", False)
    made = []
    for threads in (1, 2, 4):
        out = tmp_path / f"t{threads}.mov"
        run_ffmpeg_sync(conform_argv(src, out, OutputFormat(320, 180, 24), 24,
                                     reading_of(probe(src)), threads))
        made.append(out.read_bytes())
    assert made[0] == made[1] == made[2]
