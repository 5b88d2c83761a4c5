"""Title and end cards: text on a plain background, rendered locally (free) straight into the
house intermediate (the same encoder settings and PCM audio as a conformed clip), so that a card
joins the cut like any shot. Cached by content: the same card in the same format is drawn once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows.media.animatic import wrap
from flows.media.conform import (
    PCM_ARGS,
    SAMPLE_RATE,
    OutputFormat,
    as_argv,
    check_intermediate,
    temp_name,
    video_codec_args,
)
from flows.media.conform import _copy_atomic as copy_atomic  # write-then-rename copy
from flows.media.ffmpeg_exec import filter_path, run_ffmpeg
from providers.errors import StoryreelError

CARD_VERSION = 1  # bump when the drawing changes: old cached cards are then not reused


@dataclass(frozen=True)
class Card:
    text: str
    duration: float
    font: Path
    subtitle: str | None = None
    subtitle_font: Path | None = None
    background: str = "000000"
    color: str = "ffffff"


@functools.lru_cache(maxsize=16)
def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def card_key(card: Card, fmt: OutputFormat) -> str:
    material = {"v": CARD_VERSION, "text": card.text, "subtitle": card.subtitle,
                "frames": fmt.frames(card.duration), "bg": card.background, "fg": card.color,
                "fmt": [fmt.width, fmt.height, fmt.fps],
                "font": _sha(card.font),
                "subfont": _sha(card.subtitle_font) if card.subtitle_font else None}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _text(lines: list[str], font: Path, size: int, top: int, colour: str, fade: str,
          work: Path, tag: str) -> list[str]:
    out = []
    for i, line in enumerate(lines):
        f = work / f"{tag}{i}.txt"
        f.write_text(line, encoding="utf-8")
        out.append(f"drawtext=fontfile={filter_path(font)}:textfile={filter_path(f)}"
                   f":expansion=none:fontsize={size}:fontcolor=0x{colour}"
                   f":x=(w-text_w)/2:y={top + i * round(size * 1.25)}:alpha={fade}")
    return out


def card_argv(card: Card, fmt: OutputFormat, out: Path, work: Path) -> list[str]:
    frames = fmt.frames(card.duration)
    seconds = frames / fmt.fps
    w, h = fmt.width, fmt.height
    tsize, ssize = max(10, h // 9), max(8, h // 20)
    title = wrap(card.text, w * 0.86, tsize, 3, str(card.font))
    sub = wrap(card.subtitle, w * 0.86, ssize, 2, str(card.subtitle_font or card.font)) \
        if card.subtitle else []
    gap = round(ssize * 0.8) if sub else 0
    block = round(tsize * 1.25) * len(title) + gap + round(ssize * 1.25) * len(sub)
    top = (h - block) // 2
    ramp = min(0.4, seconds / 4)
    fade = f"min(1\\,min(t\\,{seconds:.4f}-t)/{ramp:.4f})"  # text fades in and out
    filters = [f"color=c=0x{card.background}:s={w}x{h}:r={fmt.fps}", "format=yuv420p", "setsar=1"]
    filters += _text(title, card.font, tsize, top, card.color, fade, work, "t")
    sub_top = top + round(tsize * 1.25) * len(title) + gap
    filters += _text(sub, card.subtitle_font or card.font, ssize, sub_top, card.color, fade,
                     work, "s")
    filters.append(f"trim=end_frame={frames}")
    graph = (",".join(filters) + "[v];"
             f"anullsrc=r={SAMPLE_RATE}:cl=stereo,atrim=end_sample={fmt.samples(frames)}[a]")
    return ["-filter_complex", graph, "-map", "[v]", "-map", "[a]",
            *as_argv(video_codec_args(fmt)), *as_argv(PCM_ARGS), "-frames:v", str(frames),
            "-f", "mov", str(out)]


async def render_card(card: Card, fmt: OutputFormat, dest: Path, cache_dir: Path | None = None) -> Path:
    """Write the card's intermediate to `dest` (.mov), from `cache_dir` when drawn before."""
    dest = Path(dest)
    frames = fmt.frames(card.duration)
    cached = Path(cache_dir) / f"{card_key(card, fmt)}.mov" if cache_dir else None
    if cached is not None and cached.exists():
        try:
            check_intermediate(cached, fmt, frames)
            copy_atomic(cached, dest)
            return dest
        except StoryreelError:
            cached.unlink(missing_ok=True)
    tmp = temp_name(dest)
    try:
        with tempfile.TemporaryDirectory(prefix="storyreel-card-") as work:
            await run_ffmpeg(card_argv(card, fmt, tmp, Path(work)))
        check_intermediate(tmp, fmt, frames)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    if cached is not None:
        try:
            copy_atomic(dest, cached)
        except OSError:
            pass  # an unwritable cache only costs drawing the card again
    return dest

