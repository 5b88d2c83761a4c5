"""The storyboard's deliverable settings, resolved and checked before anything is paid: music
and logo files exist and can be read, and every text that will be drawn (burned captions,
title and end cards) has a font with a glyph for each of its characters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.media.audio import Loudness, Music, audio_duration
from flows.media.captions import Caption, CaptionLook
from flows.media.cards import Card
from flows.media.fonts import choose_font, describe_missing
from flows.media.overlay import Logo
from flows.storyboard.files import existing_file, resolve_ref
from flows.storyboard.spec import Storyboard, Transition
from providers.errors import StoryreelError

Issues = list[tuple[str, str]]


@dataclass(frozen=True)
class CardPlan:
    card: Card
    transition: Transition  # between the card and the cut


@dataclass(frozen=True)
class FinishPlan:
    captions: tuple[Caption | None, ...]  # one per shot of the plan, in order
    burn: CaptionLook | None = None
    logo: Logo | None = None
    music: Music | None = None
    loudness: Loudness | None = None
    title: CardPlan | None = None
    end: CardPlan | None = None

    @property
    def draws_text(self) -> bool:
        return self.title is not None or self.end is not None or (
            self.burn is not None and any(c is not None and c.fonts for c in self.captions))

    def to_json(self) -> dict[str, Any]:
        def card(c: CardPlan | None) -> dict[str, Any] | None:
            return None if c is None else {"text": c.card.text, "subtitle": c.card.subtitle,
                                           "duration": c.card.duration,
                                           "transition": c.transition.model_dump()}
        return {"captions": sum(c is not None for c in self.captions),
                "burn_captions": self.burn is not None,
                "logo": str(self.logo.image) if self.logo else None,
                "music": str(self.music.path) if self.music else None,
                "loudness_lufs": self.loudness.target if self.loudness else None,
                "title_card": card(self.title), "end_card": card(self.end)}


def _file(ref: str, source: Path, where: str, issues: Issues) -> Path | None:
    resolved = resolve_ref(ref, source, where, issues)
    if resolved is None or not existing_file(resolved[1], where, issues):
        return None
    return resolved[1]


def _fonts_for(text: str, preferred: Path | None, where: str, issues: Issues) -> tuple[Path, ...]:
    choice = choose_font(text, preferred)
    if choice.missing:
        issues.append((where, f"no font has {describe_missing(choice.missing)}: the bundled fonts "
                              "cover Latin, Greek, Cyrillic, Japanese, symbols and most emoji "
                              "(Unicode 9); set defaults.caption_style.font to a .ttf/.otf that "
                              "has them, or install one fontconfig can find (e.g. fonts-noto-cjk)"))
    return choice.fonts


def _transition(t: Any) -> Transition:
    return t if isinstance(t, Transition) else Transition(kind=t, duration=0.0 if t == "cut" else 0.5)


def plan_finishing(board: Storyboard, source: Path, issues: Issues) -> FinishPlan:
    """Resolve audio, captions, cards and logo; problems go to `issues` with their place."""
    style = board.defaults.caption_style
    font = None
    if style.font:
        font = _file(style.font, source, "defaults.caption_style.font", issues)
        if font is not None:
            try:
                from flows.media.fonts import charset

                charset(font)
            except ValueError as exc:
                issues.append(("defaults.caption_style.font", str(exc)))
                font = None
    burn = board.output.burn_captions
    captions: list[Caption | None] = []
    for i, shot in enumerate(board.shots):
        if not shot.caption or not shot.caption.strip():
            captions.append(None)
            continue
        drawn = _fonts_for(shot.caption, font, f"shots[{i}].caption", issues) if burn else ()
        captions.append(Caption(shot.caption, drawn))
    look = CaptionLook(style.size, style.color, style.box_opacity, style.position,
                       style.max_lines) if burn else None

    cards: dict[str, CardPlan | None] = {}
    for name in ("title_card", "end_card"):
        spec = getattr(board, name)
        if spec is None:
            cards[name] = None
            continue
        tf = _fonts_for(spec.text, font, f"{name}.text", issues)
        sf = _fonts_for(spec.subtitle, font, f"{name}.subtitle", issues) if spec.subtitle else ()
        cards[name] = CardPlan(Card(spec.text, spec.duration, tf, spec.subtitle, sf,
                                    spec.background, spec.color), _transition(spec.transition))

    logo = None
    if board.output.logo is not None:
        lg = board.output.logo
        path = _file(lg.image, source, "output.logo.image", issues)
        if path is not None and _readable_image(path, "output.logo.image", issues):
            logo = Logo(path, lg.position, lg.opacity, lg.scale)

    audio = board.audio
    music = None
    if audio.music:
        path = _file(audio.music, source, "audio.music", issues)
        if path is not None:
            try:
                if audio_duration(path) <= 0:
                    issues.append(("audio.music", f"{path.name} has no audio to play"))
                else:
                    music = Music(path, audio.volume_db, audio.fade_in_s, audio.fade_out_s, audio.duck)
            except StoryreelError as exc:
                issues.append(("audio.music", str(exc)))
    loudness = Loudness(audio.loudness) if audio.loudness is not None else None
    return FinishPlan(tuple(captions), look, logo, music, loudness,
                      cards["title_card"], cards["end_card"])


def _readable_image(path: Path, where: str, issues: Issues) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception as exc:  # Pillow raises many kinds for a file that is not a picture
        issues.append((where, f"{path.name} is not a readable image ({type(exc).__name__})"))
        return False

