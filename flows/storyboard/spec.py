"""The storyboard: pydantic models only (no I/O). `storyreel schema` prints their JSON Schema."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from flows.media.checks import DEFAULT_BLACK, DEFAULT_FROZEN, DEFAULT_SILENT

SHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
ASPECT = re.compile(r"^(\d{1,3}):(\d{1,3})$")
PRESETS = {"360p": 360, "480p": 480, "540p": 540, "720p": 720, "1080p": 1080, "1440p": 1440,
           "2160p": 2160, "4k": 2160}
MAX_SHOT_SECONDS = 600.0
COLOR = re.compile(r"^#?([0-9a-fA-F]{6})$")
NAMED_COLORS = {"white": "ffffff", "black": "000000", "yellow": "ffde00", "red": "e02020",
                "green": "20c040", "blue": "2060e0", "gray": "808080", "grey": "808080"}
# integrated loudness targets (LUFS): platforms' ~-14, EBU R128 broadcast -23
LOUDNESS_PRESETS = {"youtube": -14.0, "social": -14.0, "broadcast": -23.0}
MAX_TAKES = 8
# a seed any vendor's JSON can carry (64 bits; -1 is some vendors' "random")
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
CHECK_DEFAULTS = {"black": DEFAULT_BLACK, "frozen": DEFAULT_FROZEN, "silent": DEFAULT_SILENT}


class _Strict(BaseModel):
    # NaN and infinity are never a duration, a price or a cap
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _color(v: str) -> str:
    """'#ff8800', 'ff8800' or a name -> 'ff8800'."""
    v = v.strip().lower()
    if v in NAMED_COLORS:
        return NAMED_COLORS[v]
    m = COLOR.match(v)
    if not m:
        raise ValueError(f"'{v}' is not a colour: use #RRGGBB or one of {', '.join(NAMED_COLORS)}")
    return m[1]


class Logo(_Strict):
    """A picture over the whole cut (PNG with alpha works best)."""

    image: str = Field(description="path relative to the storyboard")
    position: Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"] = "top-right"
    opacity: float = Field(0.8, ge=0, le=1)
    scale: float = Field(0.15, gt=0, le=1, description="logo width as a fraction of the frame width")


class Output(_Strict):
    """The finished cut's format; every clip is conformed to it."""

    size: str = Field("720p", description="'1280x720', or a preset (360p..1080p, 4k) with aspect_ratio")
    aspect_ratio: str = Field("16:9", description="W:H, used with a preset size and sent to vendors")
    fps: int = Field(24, ge=1, le=120)
    fit: Literal["pad", "crop"] = Field("pad", description="pad: letterbox; crop: fill and crop")
    burn_captions: bool = Field(False, description="draw the shots' captions into the picture")
    logo: Logo | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        v = v.strip().lower()
        if v in PRESETS:
            return v
        m = SIZE.match(v)
        if not m:
            raise ValueError(f"'{v}' is not a size: use WIDTHxHEIGHT like 1280x720 or one of "
                             f"{', '.join(PRESETS)}")
        w, h = int(m[1]), int(m[2])
        if w % 2 or h % 2:
            raise ValueError(f"'{v}': width and height must be even (H.264 4:2:0)")
        return v

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, v: str) -> str:
        m = ASPECT.match(v)
        if not m:
            raise ValueError(f"'{v}' is not an aspect ratio like 16:9")
        if not int(m[1]) or not int(m[2]):
            raise ValueError(f"'{v}': both sides of an aspect ratio are at least 1")
        return v


SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_timezone(v: str) -> str:
    """An IANA time zone name that this machine's tz database knows (Europe/Paris, UTC)."""
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"'{v}' is not an IANA time zone (e.g. UTC, Europe/Paris, "
                         "America/New_York)") from None
    return v


class WindowLimits(_Strict):
    """Daily and monthly caps in one calendar time zone; the operators' budgets file has one
    per scope (flows/storyboard/budgets.py)."""

    daily_usd: float | None = Field(None, ge=0, description="cap per calendar day, all runs")
    monthly_usd: float | None = Field(None, ge=0, description="cap per calendar month, all runs")
    timezone: str = Field("UTC", description="IANA time zone in which days and months turn")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        return check_timezone(v)


class Window(WindowLimits):
    """A spend window shared by every run, on every worker, that names the same scope
    (flows/money/window.py). An operators' budgets file (STORYREEL_BUDGETS) overrides it."""

    scope: str = Field(description="name shared by the runs that spend from one window")

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if not SCOPE.match(v):
            raise ValueError(f"'{v}' is not a scope name: use 1-64 letters, digits, '.', '_', "
                             "':' or '-'")
        return v


class Budget(_Strict):
    max_usd: float | None = Field(None, ge=0, description="hard cap for the whole run")
    max_usd_per_shot: float | None = Field(None, ge=0, description="hard cap for one shot, all attempts")
    on_exhausted: Literal["stop", "skip"] = Field(
        "stop", description="when a shot cannot reserve its cost: stop new submissions, or skip it")
    window: Window | None = Field(None, description="daily/monthly caps shared across runs")
    estimate_margin: float = Field(
        0.10, ge=0, le=2, allow_inf_nan=False,
        description="a fraction added to every reservation whose price is not a live vendor "
        "price, so caps and windows hold while a vendor bills up to this much above the "
        "estimate (0.10: 10%)")


class Transition(_Strict):
    kind: Literal["cut", "crossfade", "fade_black"] = "cut"
    duration: float = Field(0.5, ge=0, le=5)


TransitionSpec = Literal["cut", "crossfade", "fade_black"] | Transition


class CaptionStyle(_Strict):
    """How burned-in captions look (sidecar .srt/.vtt files carry the text only)."""

    font: str | None = Field(None, description="a .ttf/.otf file relative to the storyboard; "
                             "default: the bundled DejaVu Sans, VL PGothic for Japanese")
    size: float = Field(0.06, gt=0, le=0.25, description="text height as a fraction of the frame height")
    color: str = Field("white", validate_default=True)
    box_opacity: float = Field(0.5, ge=0, le=1, description="dark box behind the text (0: none)")
    position: Literal["bottom", "top", "middle"] = "bottom"
    max_lines: int = Field(2, ge=1, le=6, description="longer captions are cut with an ellipsis")

    @field_validator("color")
    @classmethod
    def _colour(cls, v: str) -> str:
        return _color(v)


class Card(_Strict):
    """A title or end card: text on a plain background, rendered locally (free)."""

    text: str = Field(min_length=1, max_length=200)
    duration: float = Field(3.0, gt=0, le=30)
    subtitle: str | None = Field(None, max_length=300)
    background: str = Field("black", validate_default=True)
    color: str = Field("white", validate_default=True)
    transition: TransitionSpec = Field("cut", description="junction between the card and the cut")

    @field_validator("background", "color")
    @classmethod
    def _colours(cls, v: str) -> str:
        return _color(v)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v


class Audio(_Strict):
    """The cut's sound: a music bed under the clips' own audio, and a loudness target."""

    music: str | None = Field(None, description="audio file relative to the storyboard; looped or "
                              "trimmed to the cut")
    volume_db: float = Field(-12.0, ge=-60, le=12, description="music gain before mixing")
    fade_in_s: float = Field(1.0, ge=0, le=60)
    fade_out_s: float = Field(2.0, ge=0, le=60)
    duck: bool = Field(True, description="lower the music under the clips' own audio")
    loudness: float | None = Field(None, description="integrated LUFS (-40..-5), or youtube/social "
                                   "(-14), broadcast (-23); true peak -1 dBTP")

    @field_validator("loudness", mode="before")
    @classmethod
    def _loudness(cls, v: object) -> object:
        if isinstance(v, str):
            key = v.strip().lower()
            if key not in LOUDNESS_PRESETS:
                raise ValueError(f"'{v}' is not a loudness: use a LUFS number like -14 or one of "
                                 f"{', '.join(LOUDNESS_PRESETS)}")
            return LOUDNESS_PRESETS[key]
        if isinstance(v, bool) or (isinstance(v, int | float) and not -40 <= v <= -5):
            raise ValueError(f"{v} LUFS is out of range: use -40..-5 (e.g. -14 for the web, "
                             "-23 for broadcast)")
        return v


def _threshold(v: object, default: float) -> float | None:
    if v is False or v is None:
        return None
    if v is True:
        return default
    if isinstance(v, int | float) and 0 < v <= 1:
        return float(v)
    raise ValueError(f"{v!r} is not accepted: use the share of the clip that fails it, above 0 "
                     f"and up to 1 (e.g. {default:g}), true for {default:g}, or false to turn "
                     "this check off")


class ClipChecks(_Strict):
    """Checks every clip passes before the cut (flows/media/checks.py): the share of the clip
    that fails it, or false to turn a check off. `checks: false` turns them all off."""

    black: float | None = Field(CHECK_DEFAULTS["black"], description="share of the clip's "
                                "frames that are black (0.98: 98%)")
    frozen: float | None = Field(CHECK_DEFAULTS["frozen"], description="share of the clip "
                                 "during which the picture does not move (1: all of it)")
    silent: float | None = Field(CHECK_DEFAULTS["silent"], description="share of the clip "
                                 "that is silent, where audio was asked of the vendor")

    @field_validator("black", "frozen", "silent", mode="before")
    @classmethod
    def _threshold(cls, v: object, info: ValidationInfo) -> float | None:
        return _threshold(v, CHECK_DEFAULTS[str(info.field_name)])


def _checks(v: object) -> object:
    """`checks: false` -> every check off; `checks: true` -> every check at its default."""
    if v is False:
        return {name: False for name in CHECK_DEFAULTS}
    if v is True:
        return dict(CHECK_DEFAULTS)
    return v


class Defaults(_Strict):
    provider: str = "local"
    model: str | None = Field(None, description="catalog model key; the provider's default if unset")
    duration: float = Field(4.0, gt=0, le=MAX_SHOT_SECONDS)
    style: str | None = Field(None, description="appended to every prompt")
    negative_prompt: str | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    fallback: list[str] = Field(default_factory=list, description="'provider:model' options to try next")
    retries: int = Field(1, ge=0, le=5, description="extra attempts on the same option after a failure")
    takes: int = Field(1, ge=1, le=MAX_TAKES, description="independent jobs per shot, each with "
                       "its own seed; the cut uses the picked (else the first good) one")
    transition: TransitionSpec = "cut"
    params: dict[str, Any] = Field(default_factory=dict)
    caption_style: CaptionStyle = Field(default_factory=CaptionStyle)
    on_parent_failed: Literal["text", "skip"] = Field(
        "text", description="a start_from shot whose parent has no clip: render it from its "
        "prompt alone (text), or leave a slate (skip)")
    checks: ClipChecks = Field(default_factory=ClipChecks, description="clip checks before "
                               "the cut; false turns them off")

    @field_validator("checks", mode="before")
    @classmethod
    def _checks(cls, v: object) -> object:
        return _checks(v)


class Shot(_Strict):
    id: str = Field(description="unique, file-name safe: letters, digits, . _ -")
    prompt: str = Field(min_length=1)
    duration: float | None = Field(None, gt=0, le=MAX_SHOT_SECONDS)
    provider: str | None = None
    model: str | None = None
    image: str | None = Field(None, description="reference image: path relative to the spec, or URL")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    negative_prompt: str | None = None
    fallback: list[str] | None = None
    retries: int | None = Field(None, ge=0, le=5)
    takes: int | None = Field(None, ge=1, le=MAX_TAKES, description="independent jobs (seeds) for this shot")
    transition: TransitionSpec | None = Field(None, description="junction into the next shot")
    params: dict[str, Any] = Field(default_factory=dict, description="vendor-specific extras")
    caption: str | None = Field(None, max_length=500, description="text shown while the shot plays "
                                "(final.srt/final.vtt; burned in with output.burn_captions)")
    start_from: str | None = Field(None, description="id of the shot whose chosen clip's last "
                                   "frame is this shot's first frame (image-to-video)")
    on_parent_failed: Literal["text", "skip"] | None = Field(
        None, description="when the start_from shot has no clip (default: defaults.on_parent_failed)")
    characters: list[str] = Field(default_factory=list, max_length=8,
                                  description="names from the top-level characters: in this shot")
    checks: ClipChecks | None = Field(None, description="the checks set here override "
                                      "defaults.checks; false turns them off for this shot")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not SHOT_ID.match(v):
            raise ValueError(f"'{v}' is not a safe file name: use 1-64 letters, digits, '.', '_' "
                             "or '-', starting with a letter or digit")
        return v

    @field_validator("checks", mode="before")
    @classmethod
    def _checks(cls, v: object) -> object:
        return _checks(v)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is empty")
        return v


class Uploads(_Strict):
    """Where local images go for vendors that take URLs (providers/upload_store.py)."""

    url: str = Field(description="s3://bucket/prefix, inside STORYREEL_ALLOWED_STORES")
    providers: list[str] = Field(default_factory=list,
                                 description="vendors that also get store URLs (Luma always)")


class Character(_Strict):
    """Someone (or something) who appears in several shots and should stay the same: the
    description joins each such shot's prompt, the image is sent as the model's reference."""

    image: str | None = Field(None, description="reference image: path relative to the spec, or URL")
    description: str | None = Field(None, max_length=2000, description="joined to the prompt")

    @model_validator(mode="after")
    def _something(self) -> Character:
        if not self.image and not (self.description or "").strip():
            raise ValueError("a character needs an image, a description, or both")
        return self


class Storyboard(_Strict):
    """A storyboard: shots plus the defaults, output format and budget they share."""

    version: Literal[1] = 1
    title: str = Field(min_length=1)
    output: Output = Field(default_factory=Output)
    budget: Budget = Field(default_factory=Budget)
    defaults: Defaults = Field(default_factory=Defaults)
    vars: dict[str, str | int | float] = Field(default_factory=dict,
                                               description="${name} substitutions")
    limits: dict[str, int] = Field(default_factory=dict,
                                   description="max jobs in flight per provider")
    keys: dict[str, str] = Field(default_factory=dict,
                                 description="provider -> Prefect Secret block name holding its key")
    pricing: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="'provider:model' -> price rule overriding the catalog")
    shots: list[Shot] = Field(min_length=1)
    audio: Audio = Field(default_factory=Audio)
    title_card: Card | None = None
    end_card: Card | None = None
    uploads: Uploads | None = None
    characters: dict[str, Character] = Field(
        default_factory=dict, description="name -> {image, description}, for shots' characters:")
    tags: dict[str, str | int | float] = Field(
        default_factory=dict, description="cost tags for chargeback, e.g. {client: acme}: "
        "recorded on every cost.csv row and in run.json; never part of a cache key or the cut")

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        from flows.storyboard.tags import clean

        return dict(clean(v)) if isinstance(v, dict) else v  # raw: `yes` is no tag

    @model_validator(mode="after")
    def _unique_ids(self) -> Storyboard:
        seen: dict[str, int] = {}
        for i, shot in enumerate(self.shots):
            if shot.id in seen:
                raise ValueError(f"shots[{i}].id: duplicate id '{shot.id}' (also shots[{seen[shot.id]}])")
            seen[shot.id] = i
        return self

    @model_validator(mode="after")
    def _continuity(self) -> Storyboard:
        from flows.storyboard.chains import continuity_problems

        problems = continuity_problems(self)
        if problems:  # the first one, with its place (loading.py renders "place: message")
            where, message = problems[0]
            raise ValueError(f"{where}: {message}")
        return self

    def dimensions(self) -> tuple[int, int]:
        """Output width and height in pixels."""
        size = self.output.size
        m = SIZE.match(size)
        if m:
            return int(m[1]), int(m[2])
        short = PRESETS[size]
        a = ASPECT.match(self.output.aspect_ratio)
        assert a
        aw, ah = int(a[1]), int(a[2])
        if aw >= ah:
            return _even(short * aw / ah), short
        return short, _even(short * ah / aw)

    def resolution_label(self) -> str:
        """'720p'-style label vendors take, from the output's short side."""
        if self.output.size in PRESETS:
            return "2160p" if self.output.size == "4k" else self.output.size
        return f"{min(self.dimensions())}p"


def _even(x: float) -> int:
    return int(round(x / 2) * 2)
