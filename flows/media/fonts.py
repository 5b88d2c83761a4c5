"""Fonts for drawn text (captions, title and end cards): the ones shipped with the package,
and the choice of one font file per text that has a glyph for every character in it.

A pip-only install has no system fonts: ffmpeg's `subtitles` filter then draws nothing and
exits 0, `drawtext` without `fontfile=` fails (research/ffmpeg.md §7.1). So text is drawn with
`drawtext fontfile=<a file chosen here>`, never by family name. Shipped (licences beside them):
DejaVu Sans (Latin, Greek, Cyrillic, some symbols and emoji) and VL PGothic (Japanese kana and
kanji, some emoji). A text neither covers may use a font fontconfig knows, else it is refused
with the characters named: drawtext would draw boxes for them without a word.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

FONTS_DIR = Path(__file__).resolve().parent / "fonts"
# tried in this order; the first one that has every character of a text draws it
BUNDLED = (FONTS_DIR / "DejaVuSans.ttf", FONTS_DIR / "VL-PGothic-Regular.ttf",
           FONTS_DIR / "Symbola.ttf")


@functools.lru_cache(maxsize=32)
def charset(font: Path) -> frozenset[int]:
    """Code points the font maps to a glyph (its best cmap)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(font, lazy=True, fontNumber=0) as tt:
            return frozenset(tt.getBestCmap() or {})
    except Exception as exc:  # fontTools raises many kinds on a file that is not a font
        raise ValueError(f"{font.name} is not a readable TrueType/OpenType font ({exc})") from None


def _ignorable(ch: str) -> bool:
    """Characters that need no glyph: spaces, controls, joiners, variation selectors."""
    cat = unicodedata.category(ch)
    return cat[0] in "CZ" or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF


def missing(text: str, font: Path) -> list[str]:
    """Characters of `text` (once each, in order) that `font` has no glyph for."""
    have = charset(font)
    out: list[str] = []
    for ch in text:
        if not _ignorable(ch) and ord(ch) not in have and ch not in out:
            out.append(ch)
    return out


def _system_font(chars: list[str]) -> Path | None:
    """A scalable, non-colour font fontconfig knows that has all `chars` (None without
    fontconfig). Colour bitmap fonts (Noto Color Emoji) are skipped: drawtext cannot scale them."""
    fc = shutil.which("fc-list")
    if not fc or not chars:
        return None
    pattern = ":scalable=true:outline=true:charset=" + " ".join(f"{ord(c):x}" for c in chars)
    try:
        out = subprocess.run([fc, pattern, "file", "color"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in sorted(out.stdout.splitlines()):
        path, _, rest = line.partition(":")
        if "color=True" in rest.replace(" ", ""):
            continue
        p = Path(path.strip())
        if p.suffix.lower() in (".ttf", ".otf") and p.is_file():
            return p
    return None


@dataclass(frozen=True)
class FontChoice:
    font: Path | None  # None: nothing has every character
    missing: tuple[str, ...] = ()  # what the best candidate lacks, when font is None


def choose_font(text: str, preferred: Path | None = None, system: bool = True) -> FontChoice:
    """The first of `preferred`, the bundled fonts, then (with `system`) a font fontconfig
    finds, that has a glyph for every character of `text`."""
    candidates = ([preferred] if preferred else []) + list(BUNDLED)
    best: list[str] | None = None
    for font in candidates:
        lacking = missing(text, font)
        if not lacking:
            return FontChoice(font)
        if best is None or len(lacking) < len(best):
            best = lacking
    assert best is not None
    if system:
        found = _system_font(missing(text, candidates[0]))
        if found is not None and not missing(text, found):
            return FontChoice(found)
    return FontChoice(None, tuple(best))


def describe_missing(chars: tuple[str, ...] | list[str]) -> str:
    """'こ' (U+3053), '🎬' (U+1F3AC): for error messages."""
    shown = [f"'{c}' (U+{ord(c):04X})" for c in list(chars)[:6]]
    more = f" and {len(chars) - 6} more" if len(chars) > 6 else ""
    return ", ".join(shown) + more
