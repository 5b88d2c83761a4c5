"""Live vendor prices for a plan: fal's Platform API unit prices for the fal endpoints the
plan may use, asked once per run (and per `storyreel plan`), kept a day in the cache
directory (providers/fal_pricing.py). Never on the up-to-date path (flows/run/uptodate.py): that
check makes no network call. Offline, without a key or on any error the plan keeps its
catalog estimates, labelled so, and says why in `Plan.price_note`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flows.money.cache import default_cache_dir
from flows.storyboard.keys import env_key
from flows.storyboard.plan import Plan, catalog_source, with_unit_prices
from providers.catalog import DurationRange, ModelInfo, load_catalog
from providers.fal_pricing import (
    TIMEOUT_S,
    PriceLookup,
    fetch_unit_prices,
    unit_prices,
    units_per_shot,
)


def price_cache_dir() -> Path:
    """Where price answers are kept: beside the clip cache (STORYREEL_CACHE_DIR, ...)."""
    return default_cache_dir() / "prices"


def fal_endpoints(plan: Plan) -> list[str]:
    """Every fal endpoint id the plan's shots may be sent to (primaries and fallbacks)."""
    return sorted({s.endpoint(o) for s in plan.shots for o in s.options if o.provider == "fal"})


def apply(plan: Plan, lookup: PriceLookup) -> Plan:
    note = f"fal live prices: {lookup.problem}" if lookup.problem else None
    return with_unit_prices(plan, lookup.prices, note)


async def lookup_fal(endpoints: Iterable[str], key: str | None = None, *,
                     timeout: float = TIMEOUT_S) -> PriceLookup:
    """fal's unit prices for these endpoint ids (e.g. a journal's `job_data["model"]`, for
    settling jobs outside a plan); `key` defaults to FAL_KEY. Never raises for a failed lookup."""
    return await fetch_unit_prices(endpoints, key=key or env_key("fal"),
                                   cache_dir=price_cache_dir(), timeout=timeout)


async def price_plan(plan: Plan, key: str | None = None, *, timeout: float = TIMEOUT_S) -> Plan:
    """The plan with fal's live unit prices (see with_unit_prices); `key` defaults to FAL_KEY."""
    endpoints = fal_endpoints(plan)
    if not endpoints:
        return plan
    return apply(plan, await lookup_fal(endpoints, key, timeout=timeout))


def price_plan_sync(plan: Plan, key: str | None = None, *, timeout: float = TIMEOUT_S) -> Plan:
    """price_plan for callers without an event loop (the CLI)."""
    endpoints = fal_endpoints(plan)
    if not endpoints:
        return plan
    return apply(plan, unit_prices(endpoints, key=key or env_key("fal"),
                                   cache_dir=price_cache_dir(), timeout=timeout))


def catalog_unit_price(info: ModelInfo, unit: str) -> float | None:
    """The catalog's price of one `unit` of `info`: its estimate for its shortest clip at its
    cheapest resolution over the units that clip bills (None for a unit not counted by
    length)."""
    durations = info.durations
    seconds = durations.min if isinstance(durations, DurationRange) else min(durations)
    units = units_per_shot(unit, seconds)
    if not units:
        return None
    table = info.price.per_second_by_resolution or info.price.per_video_by_resolution
    resolution = min(table, key=table.__getitem__) if table else info.resolutions[0]
    return round(info.estimate(seconds, resolution) / units, 6)  # with the fixed params


def compare_fal(*, refresh: bool = False, key: str | None = None
                ) -> tuple[list[dict[str, Any]], str | None]:
    """One row per fal endpoint of the catalog: its catalog and live price per fal's unit, and
    the difference (live - catalog); with what kept any live price away."""
    catalog = load_catalog().get("fal")
    models: dict[str, ModelInfo] = {}
    for info in catalog.models.values() if catalog else []:
        for endpoint in (info.vendor_model, info.vendor_model_image):
            if endpoint:
                models.setdefault(endpoint, info)
    lookup = unit_prices(list(models), key=key or env_key("fal"), cache_dir=price_cache_dir(),
                         use_cache=not refresh)
    rows = []
    for endpoint, info in sorted(models.items()):
        live = lookup.prices.get(endpoint)
        cat = catalog_unit_price(info, live.unit) if live else None
        diff = round(live.unit_price - cat, 6) if live and cat is not None else None
        rows.append({"endpoint": endpoint, "model": info.key, "unit": live.unit if live else None,
                     "catalog": cat, "live": live.unit_price if live else None,
                     "difference": diff,
                     "difference_pct": round(100 * diff / cat, 1) if diff is not None and cat
                     else None,
                     "catalog_source": catalog_source(info)})
    return rows, lookup.problem
