"""Title and end cards: text on a plain background, rendered locally (free) straight into the
house intermediate (the same encoder settings and PCM audio as a conformed clip), so that a card
joins the cut like any shot. Cached by content: the same card in the same format is drawn once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows.media.conform import (
    PCM_ARGS,
    SAMPLE_RATE,
    OutputFormat,
    as_argv,
    make_intermediate,
    video_codec_args,
)
from flows.media.ffmpeg_exec import run_ffmpeg
from flows.media.text import LINE, draw_lines, wrap_lines

CARD_VERSION = 1  # bump when the drawing changes: old cached cards are then not reused


@dataclass(frozen=True)
class Card:
    text: str
    duration: float
    fonts: tuple[Path, ...]  # what draws the text (flows.media.fonts.choose_font)
    subtitle: str | None = None
    subtitle_fonts: tuple[Path, ...] = ()
    background: str = "000000"
    color: str = "ffffff"


@functools.lru_cache(maxsize=16)
def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def card_key(card: Card, fmt: OutputFormat) -> str:
    material = {"v": CARD_VERSION, "text": card.text, "subtitle": card.subtitle,
                "frames": fmt.frames(card.duration), "bg": card.background, "fg": card.color,
                "fmt": [fmt.width, fmt.height, fmt.fps],
                "fonts": [_sha(f) for f in card.fonts],
                "subfonts": [_sha(f) for f in card.subtitle_fonts]}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def card_argv(card: Card, fmt: OutputFormat, out: Path, work: Path) -> list[str]:
    frames = fmt.frames(card.duration)
    seconds = frames / fmt.fps
    w, h = fmt.width, fmt.height
    tsize, ssize = max(10, h // 9), max(8, h // 20)
    sub_fonts = card.subtitle_fonts or card.fonts
    title = wrap_lines(card.text, card.fonts, tsize, w * 0.86, 3)
    sub = wrap_lines(card.subtitle, sub_fonts, ssize, w * 0.86, 2) if card.subtitle else []
    gap = round(ssize * 0.8) if sub else 0
    block = round(tsize * LINE) * len(title) + gap + round(ssize * LINE) * len(sub)
    top = (h - block) // 2
    ramp = min(0.4, seconds / 4)
    fade = f":fontcolor=0x{card.color}:alpha=min(1\\,min(t\\,{seconds:.4f}-t)/{ramp:.4f})"
    filters = [f"color=c=0x{card.background}:s={w}x{h}:r={fmt.fps}", "format=yuv420p", "setsar=1"]
    filters += draw_lines(title, card.fonts, tsize, top, w, work, "t", fade)
    sub_top = top + round(tsize * LINE) * len(title) + gap
    filters += draw_lines(sub, sub_fonts, ssize, sub_top, w, work, "s", fade)
    filters.append(f"trim=end_frame={frames}")
    graph = (",".join(filters) + "[v];"
             f"anullsrc=r={SAMPLE_RATE}:cl=stereo,atrim=end_sample={fmt.samples(frames)}[a]")
    return ["-filter_complex", graph, "-map", "[v]", "-map", "[a]",
            *as_argv(video_codec_args(fmt)), *as_argv(PCM_ARGS), "-frames:v", str(frames),
            "-f", "mov", str(out)]


async def render_card(card: Card, fmt: OutputFormat, dest: Path, cache_dir: Path | None = None) -> Path:
    """Write the card's intermediate to `dest` (.mov), from `cache_dir` when drawn before."""
    dest = Path(dest)
    cached = Path(cache_dir) / f"{card_key(card, fmt)}.mov" if cache_dir else None

    async def draw(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="storyreel-card-") as work:
            await run_ffmpeg(card_argv(card, fmt, tmp, Path(work)))

    await make_intermediate(dest, fmt, fmt.frames(card.duration), draw, cached)
    return dest
