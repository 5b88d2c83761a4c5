"""The model catalog: what each provider's models accept and cost, loaded from data.

One YAML file per provider in providers/catalog/ (see local.yaml for the
shape). Planning checks shots against it before any money is spent.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: less start-up CPU

CATALOG_DIR = Path(__file__).parent / "catalog"


class DurationRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float = Field(gt=0)
    max: float = Field(gt=0)
    step: float | None = None  # e.g. 1 for whole seconds only


_SHAPES = ("per_second", "per_video", "base", "per_second_by_resolution",
           "per_video_by_resolution")


class Price(BaseModel):
    """A price rule: one shape, plus how the vendor counts what it bills.

    Shapes (exactly one): per_second; per_video; base + base_seconds + per_extra_second;
    per_second_by_resolution {720p: .., 1080p: ..}; per_video_by_resolution.
    Billing units, applied to the requested seconds before the shape: min_seconds (billed at
    least), fps + extra_frames (billed as frames at the model's native rate, e.g. Wan 2.2's
    num_frames: ceil(seconds x fps) + 1 frames), step_seconds (rounded up to whole steps).
    audio_surcharge_per_second is added per billed second while native audio is on: unless
    the request's `audio_param` is false (audio is the vendor's default where we use it).
    An estimate is an upper bound of what the vendor bills, never a best guess."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    per_second: float | None = None
    per_video: float | None = None
    base: float | None = None
    base_seconds: float | None = None
    per_extra_second: float | None = None
    per_second_by_resolution: dict[str, float] | None = None
    per_video_by_resolution: dict[str, float] | None = None
    min_seconds: float | None = None
    step_seconds: float | None = None
    fps: int | None = None
    extra_frames: int = 0
    audio_surcharge_per_second: float | None = None
    audio_param: str | None = None
    currency: Literal["USD"] = "USD"

    @model_validator(mode="after")
    def _one_shape_no_negatives(self) -> Price:
        values = self.model_dump(exclude={"currency", "audio_param"}, exclude_none=True)
        shapes = [name for name in _SHAPES if getattr(self, name) is not None]
        if not shapes:
            raise ValueError("no price given (use per_second, per_video, "
                             "base/base_seconds/per_extra_second, or per_*_by_resolution)")
        if len(shapes) > 1:
            raise ValueError(f"one price shape only, got {' and '.join(shapes)}")
        if shapes[0] != "base" and (self.base_seconds is not None
                                    or self.per_extra_second is not None):
            raise ValueError("base_seconds/per_extra_second belong to the base shape")
        for name, v in values.items():
            for x in (v.values() if isinstance(v, dict) else [v]):
                if not math.isfinite(x) or x < 0:
                    raise ValueError(f"{name}: {x} is not a price (a finite amount >= 0)")
        for name in ("per_second_by_resolution", "per_video_by_resolution"):
            if values.get(name) == {}:
                raise ValueError(f"{name}: no resolution given")
        if self.step_seconds is not None and self.step_seconds <= 0:
            raise ValueError(f"step_seconds: {self.step_seconds} is not a step (> 0)")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps: {self.fps} is not a frame rate (> 0)")
        if self.extra_frames and self.fps is None:
            raise ValueError("extra_frames needs fps (frames are counted at the model's rate)")
        if self.audio_param is not None and self.audio_surcharge_per_second is None:
            raise ValueError("audio_param needs audio_surcharge_per_second")
        return self

    def billed_seconds(self, seconds: float) -> float:
        """The seconds the vendor counts for a `seconds`-long request."""
        s = max(float(seconds), self.min_seconds or 0.0)
        if self.fps is not None:  # whole frames at the native rate (1e-9: float noise)
            s = (math.ceil(s * self.fps - 1e-9) + self.extra_frames) / self.fps
        if self.step_seconds is not None:
            s = math.ceil(s / self.step_seconds - 1e-9) * self.step_seconds
        return s

    def audio_on(self, params: Mapping[str, Any] | None = None) -> bool:
        """Whether the audio surcharge applies: on unless the request turns it off."""
        if self.audio_surcharge_per_second is None:
            return False
        if self.audio_param is None:  # audio cannot be turned off
            return True
        return (params or {}).get(self.audio_param, True) is not False

    def estimate(self, seconds: float, resolution: str,
                 params: Mapping[str, Any] | None = None) -> float:
        """USD for one job: the billed units at this rule's rates (`params`: what the request
        sends, for the audio switch)."""
        s = self.billed_seconds(seconds)
        if self.per_second_by_resolution is not None:
            rate = self.per_second_by_resolution.get(resolution)
            if rate is None:  # an unlisted resolution is priced at the dearest listed one
                rate = max(self.per_second_by_resolution.values())
            usd = rate * s
        elif self.per_video_by_resolution is not None:
            v = self.per_video_by_resolution.get(resolution)
            usd = v if v is not None else max(self.per_video_by_resolution.values())
        elif self.base is not None:
            extra = max(0.0, s - (self.base_seconds or 0.0))
            usd = self.base + extra * (self.per_extra_second or 0.0)
        elif self.per_video is not None:
            usd = self.per_video
        else:
            usd = (self.per_second or 0.0) * s
        if self.audio_on(params):
            usd += (self.audio_surcharge_per_second or 0.0) * s
        return round(usd, 6)


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = ""
    provider: str = ""
    vendor_model: str
    vendor_model_image: str | None = None  # a separate image-to-video endpoint, where the vendor has one
    description: str = ""
    # "reference": the model has a dedicated field for reference images (characters), apart
    # from the first frame; adapters send ShotRequest.references there.
    inputs: list[Literal["text", "image", "reference"]] = ["text"]
    durations: list[float] | DurationRange
    aspect_ratios: list[str] = ["16:9"]
    resolutions: list[str] = ["720p"]
    price: Price
    price_source: str = ""
    # the day price_source was last checked against the vendor's public price (the catalog
    # holds at or above it): required for every paid model; `storyreel providers --stale`
    price_as_of: dt.date | None = None
    charges_failures: bool = False
    # the model costs nothing (the local animatic, a vendor's free tier): a price of 0 is then
    # not a mistake; any other model priced at 0 is refused by planning
    free: bool = False
    # what a take's seed does: exact (same seed, same clip), best_effort (sent; vendors promise
    # "similar" at most), none (not sent: the vendor or its API takes none)
    seed: Literal["exact", "best_effort", "none"] = "best_effort"
    retired: dt.date | None = None
    replacement: str | None = None
    params: dict[str, Any] = {}  # fixed extras sent with every request

    @field_validator("price_as_of", mode="before")
    @classmethod
    def _a_day(cls, v: Any) -> Any:
        # a calendar day only: YAML's 2026-12-07 or the same text; not a timestamp or datetime
        if v is None or (isinstance(v, dt.date) and not isinstance(v, dt.datetime)):
            return v
        if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            return v
        raise ValueError(f"price_as_of: {v!r} is not a date (YYYY-MM-DD)")

    @model_validator(mode="after")
    def _dated_price(self) -> ModelInfo:
        if self.price_as_of is None and not self.free:
            raise ValueError("price_as_of (YYYY-MM-DD) is required for a paid model: the day "
                             "its price was checked against the vendor's public price")
        return self

    def estimate(self, seconds: float, resolution: str,
                 params: Mapping[str, Any] | None = None) -> float:
        """Upper bound of one job's cost; `params` are the request's extras (over the
        model's fixed ones)."""
        return self.price.estimate(seconds, resolution, {**self.params, **(params or {})})

    def is_retired(self, today: dt.date | None = None) -> bool:
        return self.retired is not None and (today or dt.date.today()) >= self.retired

    def duration_choices(self) -> str:
        d = self.durations
        if isinstance(d, DurationRange):
            return f"{d.min:g}-{d.max:g} s" + (f" in steps of {d.step:g}" if d.step else "")
        return ", ".join(f"{x:g}" for x in d) + " s"

    def accepts_duration(self, seconds: float) -> bool:
        d = self.durations
        if isinstance(d, DurationRange):
            if not d.min <= seconds <= d.max:
                return False
            steps = (seconds - d.min) / d.step if d.step else 0.0
            return abs(steps - round(steps)) < 1e-6
        return any(abs(seconds - x) < 1e-6 for x in d)

    def max_duration(self) -> float:
        d = self.durations
        return d.max if isinstance(d, DurationRange) else max(d)


class ProviderCatalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    vendor: str
    docs: str = ""
    default_model: str
    models: dict[str, ModelInfo]


@functools.cache
def load_catalog(directory: Path = CATALOG_DIR) -> dict[str, ProviderCatalog]:
    out: dict[str, ProviderCatalog] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)  # noqa: S506 - safe
        cat = ProviderCatalog.model_validate(data)
        for key, info in cat.models.items():
            info.key, info.provider = key, cat.provider
        out[cat.provider] = cat
    return out


def find_model(provider: str, model: str) -> ModelInfo | None:
    cat = load_catalog().get(provider)
    return cat.models.get(model) if cat else None
