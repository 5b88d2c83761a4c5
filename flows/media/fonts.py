"""Fonts for drawn text (captions, title and end cards): the ones shipped with the package,
and the choice of one font file per text that has a glyph for every character in it.

A pip-only install has no system fonts: ffmpeg's `subtitles` filter then draws nothing and
exits 0, `drawtext` without `fontfile=` fails (docs/ffmpeg-notes.md, Fonts). So text is drawn with
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

FONTS_DIR = Path(__file__).resolve().parent / "fontfiles"
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
        if p.suffix.lower() in (".ttf", ".otf", ".ttc", ".otc") and p.is_file():  # first face
            return p
    return None


@dataclass(frozen=True)
class FontChoice:
    fonts: tuple[Path, ...]  # every character has a glyph in one of these (first one wins)
    missing: tuple[str, ...] = ()  # characters none of them has

    @property
    def font(self) -> Path | None:
        """The font of the text's first character (None when some character has no font)."""
        return None if self.missing else self.fonts[0]


def choose_font(text: str, preferred: Path | None = None, system: bool = True) -> FontChoice:
    """The fonts that draw `text`: for each character the first of `preferred`, the bundled
    fonts, then (with `system`) a font fontconfig finds, that has a glyph for it."""
    candidates = ([preferred] if preferred else []) + list(BUNDLED)
    chars = [ch for ch in dict.fromkeys(text) if not _ignorable(ch)]
    if system:  # one font for everything the shipped ones lack, if fontconfig has one
        rest = [ch for ch in chars if not any(ord(ch) in charset(f) for f in candidates)]
        found = _system_font(rest) if rest else None
        if found is not None:
            candidates.append(found)
    used: list[Path] = []
    lacking: list[str] = []
    for ch in chars:
        font = next((f for f in candidates if ord(ch) in charset(f)), None)
        if font is None and system:  # else one per character
            font = _system_font([ch])
            if font is not None:
                candidates.append(font)
        if font is None:
            lacking.append(ch)
        elif font not in used:
            used.append(font)
    order = [f for f in candidates if f in used] or candidates[:1]
    return FontChoice(tuple(order), tuple(lacking))


def runs(text: str, fonts: tuple[Path, ...]) -> list[tuple[str, Path]]:
    """`text` cut into pieces that one font draws each: every character goes to the first of
    `fonts` that has it; spaces and joiners stay with the piece they are in."""
    out: list[tuple[str, Path]] = []
    for ch in text:
        font = None if _ignorable(ch) and out else next(
            (f for f in fonts if ord(ch) in charset(f)), fonts[0])
        if out and (font is None or font == out[-1][1]):
            out[-1] = (out[-1][0] + ch, out[-1][1])
        else:
            out.append((ch, font or fonts[0]))
    return out


@functools.lru_cache(maxsize=64)
def _pil_font(font: Path, size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    return ImageFont.truetype(str(font), size)


def width(text: str, fonts: tuple[Path, ...], size: int) -> float:
    """Pixels `text` takes at `size`, each piece measured with the font that draws it."""
    return sum(_pil_font(f, size).getlength(piece) for piece, f in runs(text, fonts))


def describe_missing(chars: tuple[str, ...] | list[str]) -> str:
    """'こ' (U+3053), '🎬' (U+1F3AC): for error messages."""
    shown = [f"'{c}' (U+{ord(c):04X})" for c in list(chars)[:6]]
    more = f" and {len(chars) - 6} more" if len(chars) > 6 else ""
    return ", ".join(shown) + more
