"""The model catalog: what each provider's models accept and cost, loaded from data.

One YAML file per provider in providers/catalog/ (see local.yaml for the
shape). Planning checks shots against it before any money is spent.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: less start-up CPU

CATALOG_DIR = Path(__file__).parent / "catalog"


class DurationRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float = Field(gt=0)
    max: float = Field(gt=0)
    step: float | None = None  # e.g. 1 for whole seconds only


class Price(BaseModel):
    """A price rule. Exactly one shape is used:
    per_second; per_video; base + base_seconds + per_extra_second;
    per_second_by_resolution {720p: .., 1080p: ..}; per_video_by_resolution."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    per_second: float | None = None
    per_video: float | None = None
    base: float | None = None
    base_seconds: float | None = None
    per_extra_second: float | None = None
    per_second_by_resolution: dict[str, float] | None = None
    per_video_by_resolution: dict[str, float] | None = None
    currency: Literal["USD"] = "USD"

    @model_validator(mode="after")
    def _one_shape_no_negatives(self) -> Price:
        values = self.model_dump(exclude={"currency"}, exclude_none=True)
        if not values:
            raise ValueError("no price given (use per_second, per_video, "
                             "base/base_seconds/per_extra_second, or per_*_by_resolution)")
        for name, v in values.items():
            for x in (v.values() if isinstance(v, dict) else [v]):
                if not math.isfinite(x) or x < 0:
                    raise ValueError(f"{name}: {x} is not a price (a finite amount >= 0)")
        return self

    def estimate(self, seconds: float, resolution: str) -> float:
        if self.per_second_by_resolution is not None:
            rate = self.per_second_by_resolution.get(resolution)
            if rate is None:
                rate = max(self.per_second_by_resolution.values())
            return round(rate * seconds, 6)
        if self.per_video_by_resolution is not None:
            v = self.per_video_by_resolution.get(resolution)
            return v if v is not None else max(self.per_video_by_resolution.values())
        if self.base is not None:
            extra = max(0.0, seconds - (self.base_seconds or 0.0))
            return round(self.base + extra * (self.per_extra_second or 0.0), 6)
        if self.per_video is not None:
            return self.per_video
        return round((self.per_second or 0.0) * seconds, 6)


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = ""
    provider: str = ""
    vendor_model: str
    vendor_model_image: str | None = None  # a separate image-to-video endpoint, where the vendor has one
    description: str = ""
    inputs: list[Literal["text", "image"]] = ["text"]
    durations: list[float] | DurationRange
    aspect_ratios: list[str] = ["16:9"]
    resolutions: list[str] = ["720p"]
    price: Price
    price_source: str = ""
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
