"""The storyboard: pydantic models only (no I/O). `storyreel schema` prints their JSON Schema."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
ASPECT = re.compile(r"^(\d{1,3}):(\d{1,3})$")
PRESETS = {"360p": 360, "480p": 480, "540p": 540, "720p": 720, "1080p": 1080, "1440p": 1440,
           "2160p": 2160, "4k": 2160}
MAX_SHOT_SECONDS = 600.0
MAX_TAKES = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Output(_Strict):
    """The finished cut's format; every clip is conformed to it."""

    size: str = Field("720p", description="'1280x720', or a preset (360p..1080p, 4k) with aspect_ratio")
    aspect_ratio: str = Field("16:9", description="W:H, used with a preset size and sent to vendors")
    fps: int = Field(24, ge=1, le=120)
    fit: Literal["pad", "crop"] = Field("pad", description="pad: letterbox; crop: fill and crop")

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
        if not ASPECT.match(v):
            raise ValueError(f"'{v}' is not an aspect ratio like 16:9")
        return v


class Budget(_Strict):
    max_usd: float | None = Field(None, ge=0, description="hard cap for the whole run")
    max_usd_per_shot: float | None = Field(None, ge=0, description="hard cap for one shot, all attempts")
    on_exhausted: Literal["stop", "skip"] = Field(
        "stop", description="when a shot cannot reserve its cost: stop new submissions, or skip it")


class Transition(_Strict):
    kind: Literal["cut", "crossfade", "fade_black"] = "cut"
    duration: float = Field(0.5, ge=0, le=5)


TransitionSpec = Literal["cut", "crossfade", "fade_black"] | Transition


class Defaults(_Strict):
    provider: str = "local"
    model: str | None = Field(None, description="catalog model key; the provider's default if unset")
    duration: float = Field(4.0, gt=0, le=MAX_SHOT_SECONDS)
    style: str | None = Field(None, description="appended to every prompt")
    negative_prompt: str | None = None
    seed: int | None = None
    fallback: list[str] = Field(default_factory=list, description="'provider:model' options to try next")
    retries: int = Field(1, ge=0, le=5, description="extra attempts on the same option after a failure")
    takes: int = Field(1, ge=1, le=MAX_TAKES, description="independent jobs per shot, each with "
                       "its own seed; the cut uses the picked (else the first good) one")
    transition: TransitionSpec = "cut"
    params: dict[str, Any] = Field(default_factory=dict)


class Shot(_Strict):
    id: str = Field(description="unique, file-name safe: letters, digits, . _ -")
    prompt: str = Field(min_length=1)
    duration: float | None = Field(None, gt=0, le=MAX_SHOT_SECONDS)
    provider: str | None = None
    model: str | None = None
    image: str | None = Field(None, description="reference image: path relative to the spec, or URL")
    seed: int | None = None
    negative_prompt: str | None = None
    fallback: list[str] | None = None
    retries: int | None = Field(None, ge=0, le=5)
    takes: int | None = Field(None, ge=1, le=MAX_TAKES, description="independent jobs (seeds) for this shot")
    transition: TransitionSpec | None = Field(None, description="junction into the next shot")
    params: dict[str, Any] = Field(default_factory=dict, description="vendor-specific extras")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not SHOT_ID.match(v):
            raise ValueError(f"'{v}' is not a safe file name: use 1-64 letters, digits, '.', '_' "
                             "or '-', starting with a letter or digit")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is empty")
        return v


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

    @model_validator(mode="after")
    def _unique_ids(self) -> Storyboard:
        seen: dict[str, int] = {}
        for i, shot in enumerate(self.shots):
            if shot.id in seen:
                raise ValueError(f"shots[{i}].id: duplicate id '{shot.id}' (also shots[{seen[shot.id]}])")
            seen[shot.id] = i
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
