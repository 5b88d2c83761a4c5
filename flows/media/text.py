"""Lines of text as drawtext filters, with a fallback font per character: a line is cut into
pieces that one font draws each (flows.media.fonts.runs), measured with that font, placed one
after the other and aligned on a common baseline (`y_align=baseline`, ffmpeg >= 6.1). So a
caption mixing Latin, Japanese and emoji draws every character from a font that has it.

User text never enters the filter graph: each piece is written to its own file and drawn with
`textfile=` and `expansion=none`, so quotes, colons, %, backslashes and any script are inert.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from flows.media.animatic import wrap
from flows.media.ffmpeg_exec import ffmpeg_exe, filter_path
from flows.media.fonts import runs, width
from providers.errors import MediaError

LINE = 1.3  # line height / font size


def wrap_lines(text: str, fonts: tuple[Path, ...], size: int, width_px: float,
               max_lines: int) -> list[str]:
    """The text's own lines, each wrapped to `width_px`, at most `max_lines` (then '…')."""
    paras = [p.strip() for p in text.splitlines() if p.strip()]
    out: list[str] = []
    for para in paras:
        out += wrap(para, width_px, size, max_lines, str(fonts[0]),
                    measure=lambda s: width(s, fonts, size))
    if len(out) > max_lines:
        out = out[: max_lines - 1] + [out[max_lines - 1].rstrip(" …") + "…"]
    return out


def draw_lines(lines: list[str], fonts: tuple[Path, ...], size: int, top: int, frame_w: int,
               work: Path, tag: str, options: str) -> list[str]:
    """drawtext filters for `lines` centred on a frame `frame_w` wide, the first line's box
    starting at `top`. `options`: appended to each (":fontcolor=...:enable=...")."""
    out = []
    for i, line in enumerate(lines):
        pieces = runs(line, fonts)
        x = (frame_w - sum(width(p, (f,), size) for p, f in pieces)) / 2
        baseline = top + round(i * size * LINE + size)
        for k, (piece, font) in enumerate(pieces):
            f = work / f"{tag}-{i}-{k}.txt"
            f.write_text(piece, encoding="utf-8")
            out.append(f"drawtext=fontfile={filter_path(font)}:textfile={filter_path(f)}"
                       f":expansion=none:fontsize={size}:x={round(x)}:y={baseline}"
                       f":y_align=baseline{options}")
            x += width(piece, (font,), size)
    return out


@functools.cache
def check_drawtext() -> None:
    """Refuse, before a run pays for anything, an ffmpeg that cannot draw this text: drawtext
    needs freetype, and `y_align` (the shared baseline of mixed fonts) came in ffmpeg 6.1."""
    exe = ffmpeg_exe()
    try:
        out = subprocess.run([exe, "-hide_banner", "-h", "filter=drawtext"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MediaError(f"cannot run {exe}: {exc}") from None
    if "y_align" not in out:
        raise MediaError(f"{exe} cannot draw captions or cards: its drawtext filter is missing or "
                         "older than ffmpeg 6.1 (no y_align); unset FFMPEG_BINARY / remove the "
                         "old ffmpeg from PATH to use imageio-ffmpeg's, or install ffmpeg >= 6.1")
