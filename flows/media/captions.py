"""Captions timed to the cut: cues, the final.srt / final.vtt sidecars, and the drawtext
filters that burn them into the picture.

Timing, in whole frames of the cut: shot i starts at start[i] = sum(frames[:i]) - sum(joins[:i])
(a transition of J frames overlaps the end of a shot with the start of the next, so every
junction shortens the cut by J). A caption runs from the middle of its shot's incoming junction
to the middle of its outgoing one: with hard cuts that is exactly the shot, with transitions
consecutive cues meet halfway through the dissolve and never overlap.

Text is drawn by flows.media.text (a font file per character, never a family name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.media.conform import OutputFormat
from flows.media.text import LINE, draw_lines, wrap_lines


@dataclass(frozen=True)
class Caption:
    text: str
    fonts: tuple[Path, ...] = ()  # what draws it (chosen when planning); empty: not burned


@dataclass(frozen=True)
class CaptionLook:
    size: float = 0.06  # text height / frame height
    color: str = "ffffff"
    box_opacity: float = 0.5
    position: str = "bottom"  # bottom | top | middle
    max_lines: int = 2


@dataclass(frozen=True)
class Cue:
    start: int  # first frame shown
    end: int  # first frame no longer shown
    caption: Caption


def starts(frames: list[int], joins: list[int]) -> list[int]:
    """First frame of each clip in the cut."""
    out, t = [], 0
    for i, n in enumerate(frames):
        out.append(t)
        t += n - (joins[i] if i < len(joins) else 0)
    return out


def spans(frames: list[int], joins: list[int]) -> list[tuple[int, int]]:
    """The frames [start, end) of the cut each clip owns: its own, and half of each junction
    it shares with a neighbour (where a caption changes, where a review plays the take)."""
    begin = starts(frames, joins)
    out = []
    for i in range(len(frames)):
        j_in = joins[i - 1] if i > 0 else 0
        j_out = joins[i] if i < len(joins) else 0
        out.append((begin[i] + j_in // 2, begin[i] + frames[i] - j_out + j_out // 2))
    return out


def cues(frames: list[int], joins: list[int], captions: list[Caption | None]) -> list[Cue]:
    out = []
    for (start, end), cap in zip(spans(frames, joins), captions, strict=False):
        if cap is not None and cap.text.strip() and end > start:
            out.append(Cue(start, end, cap))
    return out


def _stamp(frame: int, fps: int, sep: str) -> str:
    ms = round(frame * 1000 / fps)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _lines(text: str) -> list[str]:
    # a blank line ends a cue in both formats: keep the text's own breaks, drop empty ones
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def srt(cue_list: list[Cue], fps: int) -> str:
    blocks = []
    for n, c in enumerate(cue_list, 1):
        blocks.append(f"{n}\n{_stamp(c.start, fps, ',')} --> {_stamp(c.end, fps, ',')}\n"
                      + "\n".join(_lines(c.caption.text)))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _vtt_text(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("-->", "--&gt;")


def vtt(cue_list: list[Cue], fps: int) -> str:
    blocks = ["WEBVTT"]
    for n, c in enumerate(cue_list, 1):
        blocks.append(f"{n}\n{_stamp(c.start, fps, '.')} --> {_stamp(c.end, fps, '.')}\n"
                      + "\n".join(_vtt_text(ln) for ln in _lines(c.caption.text)))
    return "\n\n".join(blocks) + "\n"


def burn_filters(cue_list: list[Cue], fmt: OutputFormat, look: CaptionLook, work: Path) -> list[str]:
    """drawbox + drawtext filters (to chain with ',') that show each cue on its frames only."""
    size = max(8, round(look.size * fmt.height))
    line_h = round(size * LINE)
    pad = max(4, size // 3)
    margin = round(fmt.height * 0.06)
    out: list[str] = []
    for n, cue in enumerate(cue_list):
        fonts = cue.caption.fonts
        if not fonts:
            continue
        lines = wrap_lines(cue.caption.text, fonts, size, fmt.width * 0.9, look.max_lines)
        block = line_h * len(lines)
        if look.position == "top":
            top = margin
        elif look.position == "middle":
            top = (fmt.height - block) // 2
        else:
            top = fmt.height - margin - block
        # frames start..end-1 have t = k/fps: compare against half-frame bounds
        on = (f"between(t\\,{(cue.start - 0.5) / fmt.fps:.6f}\\,"
              f"{(cue.end - 0.5) / fmt.fps:.6f})")
        if look.box_opacity > 0:
            out.append(f"drawbox=x=0:y={top - pad}:w=iw:h={block + 2 * pad}"
                       f":color=black@{look.box_opacity:.2f}:t=fill:enable={on}")
        out += draw_lines(lines, fonts, size, top, fmt.width, work, f"cap{n:04d}",
                          f":fontcolor=0x{look.color}:borderw={max(1, size // 14)}"
                          f":bordercolor=black@0.7:enable={on}")
    return out
