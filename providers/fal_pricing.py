"""fal's Platform API prices: what this account pays per billing unit of each endpoint.

Protocol (https://docs.fal.ai/platform-apis/v1/models/pricing):
* GET {base}/models/pricing?endpoint_id=a,b,... with `Authorization: Key <FAL_KEY>`; base
  https://api.fal.ai/v1 (STORYREEL_FAL_PLATFORM_URL overrides it); 1-50 endpoint ids a call.
* -> {"prices": [{"endpoint_id", "unit_price", "unit", "currency"}], "next_cursor": str | null,
  "has_more": bool}. A further page is asked for with `cursor=<next_cursor>`, the Platform
  API's pagination parameter (https://docs.fal.ai/platform-apis/v1/models). "Custom pricing or
  discounts may be applied based on account status": the answer is this key's own price.
* A finished request is billed `x-fal-billable-units` of its endpoint's unit (a header of the
  result), so what it cost is units x unit_price
  (https://docs.fal.ai/documentation/model-apis/pricing: per second of video, per video, ...).

Answers are kept for a day in `cache_dir`, one file per (base URL, account): the file name
holds a hash of the key, never the key, so two FAL_KEYs never share prices. Nothing here
raises for a lookup that goes wrong (no key, offline, an HTTP error, a malformed answer, a
price not in USD): that endpoint just has no price, `PriceLookup.problem` says why, and the
caller uses its catalog estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from providers.errors import StoryreelError, redact, register_secret

if TYPE_CHECKING:  # httpx only for a lookup: planning imports this module for UnitPrice
    import httpx

    from providers.hosts import Hosts

DEFAULT_URL = "https://api.fal.ai/v1"
URL_ENV = "STORYREEL_FAL_PLATFORM_URL"
QUEUE_URL_ENV = "STORYREEL_FAL_BASE_URL"  # providers/fal.py's queue override
API_HOSTS = ("api.fal.ai",)
MAX_IDS = 50  # endpoint ids per call (the API's limit)
MAX_PAGES = 20  # per call: a cursor that never ends is not followed forever
MAX_BODY = 1 << 20  # bytes of one answer
CACHE_TTL_S = 24 * 3600.0
TIMEOUT_S = 5.0  # the whole lookup: `storyreel plan` must not hang on a dead network


@dataclass(frozen=True)
class UnitPrice:
    """USD per billing unit of one fal endpoint, as the Platform API states it."""

    endpoint_id: str
    unit_price: float
    unit: str  # "second", "video", "image", ... what x-fal-billable-units counts
    currency: str = "USD"


@dataclass
class PriceLookup:
    """Prices found per endpoint id, and why any asked for is missing (None when none is)."""

    prices: dict[str, UnitPrice] = field(default_factory=dict)
    problem: str | None = None
    fetched: int = 0  # calls made to fal (0: every price came from the cache)


def platform_url() -> str | None:
    """The Platform API base, or None when live prices must not be asked for: a queue base
    URL override (a proxy, a test server) without a Platform URL override means the key is
    not necessarily fal's own, so it is not sent to api.fal.ai."""
    explicit = os.environ.get(URL_ENV)
    if explicit:
        return explicit.rstrip("/")
    queue = os.environ.get(QUEUE_URL_ENV)
    if queue:
        parts = urlsplit(queue)
        if (parts.scheme, (parts.hostname or "").lower(), parts.port or 443) \
                != ("https", "queue.fal.run", 443):
            return None
    return DEFAULT_URL


def _key_tag(key: str) -> str:
    # names the account in a file name without storing (or revealing) the key
    return hashlib.sha256(b"storyreel fal prices\0" + key.encode()).hexdigest()[:16]


def cache_file(cache_dir: Path, base_url: str, key: str) -> Path:
    tag = hashlib.sha256(f"{base_url}\0{_key_tag(key)}".encode()).hexdigest()[:24]
    return cache_dir / f"fal-prices-{tag}.json"


def parse_price(item: Any) -> UnitPrice | str:
    """One `prices` item as a UnitPrice, or why it is not usable."""
    if not isinstance(item, dict) or not isinstance(item.get("endpoint_id"), str):
        return "an item without endpoint_id"
    eid = item["endpoint_id"]
    value, unit, currency = item.get("unit_price"), item.get("unit"), item.get("currency")
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        # a price of 0 would make every cap moot: not an answer to trust
        return f"{eid}: unit_price {str(value)[:20]!r} is not a positive amount"
    if not isinstance(unit, str) or not unit.strip():
        return f"{eid}: no unit"
    if currency != "USD":
        return f"{eid}: priced in {str(currency)[:8]!r}, not USD"
    return UnitPrice(eid, float(value), unit.strip(), "USD")


class _Refused(Exception):
    """A lookup answer we cannot use (message safe to show: no key, no body echo)."""


def _read_cache(path: Path, now: float, ttl: float) -> dict[str, Any]:
    """endpoint id -> cached entry still fresh ({"price": {...}} or {"price": None})."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    fresh = {}
    for eid, entry in entries.items():
        at = entry.get("at") if isinstance(entry, dict) else None
        if isinstance(at, int | float) and 0 <= now - at < ttl:
            fresh[eid] = entry
    return fresh


def _write_cache(path: Path, base_url: str, entries: dict[str, Any], now: float,
                 ttl: float) -> None:
    """Merge `entries` into the file (atomically); a cache that cannot be written is no
    reason to fail a lookup."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = _read_cache(path, now, ttl)
        merged.update(entries)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fal-prices-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"base_url": base_url, "entries": merged}, fh, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


async def _get(client: httpx.AsyncClient, url: str, params: list[tuple[str, str]],
               key: str, hosts: Hosts) -> Any:
    """One GET, its body read to at most MAX_BODY bytes, as JSON."""
    import httpx

    from providers import hosts as hostlib

    request_url = str(httpx.URL(url, params=params))
    resp = await hostlib.open_request(client, "GET", request_url, hosts, stream=True,
                                      headers={"Authorization": f"Key {key}",
                                               "Accept": "application/json"})
    try:
        if not resp.is_success:
            raise _Refused(f"fal's pricing API answered HTTP {resp.status_code}")
        body = bytearray()
        async for chunk in resp.aiter_bytes(1 << 16):
            body += chunk
            if len(body) > MAX_BODY:
                raise _Refused(f"fal's pricing answer is over {MAX_BODY} bytes")
    finally:
        await resp.aclose()
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise _Refused("fal's pricing answer is not JSON") from None


async def _fetch_chunk(client: httpx.AsyncClient, base_url: str, ids: list[str], key: str,
                       hosts: Hosts, problems: list[str]) -> dict[str, UnitPrice]:
    """Prices of up to MAX_IDS endpoints, every page of the answer."""
    found: dict[str, UnitPrice] = {}
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        params = [("endpoint_id", ",".join(ids))] + ([("cursor", cursor)] if cursor else [])
        answer = await _get(client, f"{base_url}/models/pricing", params, key, hosts)
        if not isinstance(answer, dict) or not isinstance(answer.get("prices"), list):
            raise _Refused("fal's pricing answer has no `prices` list")
        for item in answer["prices"]:
            parsed = parse_price(item)
            if isinstance(parsed, str):
                problems.append(parsed)
            elif parsed.endpoint_id in ids:  # only what was asked for
                found[parsed.endpoint_id] = parsed
        cursor = answer.get("next_cursor")
        if not answer.get("has_more") or not isinstance(cursor, str) or not cursor:
            return found
        if cursor in seen:
            raise _Refused("fal's pricing answer repeats its next_cursor")
        seen.add(cursor)
    raise _Refused(f"fal's pricing answer has more than {MAX_PAGES} pages")


async def fetch_unit_prices(
    endpoints: Iterable[str], *, key: str | None, base_url: str | None = None,
    cache_dir: Path | None = None, client: httpx.AsyncClient | None = None,
    timeout: float = TIMEOUT_S, use_cache: bool = True, now: float | None = None,
    ttl: float = CACHE_TTL_S,
) -> PriceLookup:
    """The account's unit price of each endpoint that has one; never raises for a lookup
    that fails (see the module doc). At most `timeout` seconds in all."""
    wanted = sorted({e for e in endpoints if e})
    if not wanted:
        return PriceLookup()
    if not key:
        return PriceLookup(problem="no FAL_KEY")
    register_secret(key)
    base = (base_url or platform_url() or "").rstrip("/")
    if not base:
        return PriceLookup(problem=f"{QUEUE_URL_ENV} is not fal's queue; set {URL_ENV} to ask "
                                   "that service for live prices")
    now = time.time() if now is None else now
    path = cache_file(cache_dir, base, key) if cache_dir is not None else None
    cached = _read_cache(path, now, ttl) if path is not None and use_cache else {}
    out = PriceLookup()
    for eid in wanted:
        got = cached.get(eid, {}).get("price") if eid in cached else None
        if isinstance(got, dict):
            parsed = parse_price({"endpoint_id": eid, **got})
            if isinstance(parsed, UnitPrice):
                out.prices[eid] = parsed
    missing = [e for e in wanted if e not in cached]
    if not missing:
        return _finish(out, wanted)
    import httpx

    from providers.hosts import Hosts

    problems: list[str] = []
    hosts = Hosts.for_vendor(API_HOSTS, base)
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)
    fresh: dict[str, UnitPrice] = {}
    try:
        async with asyncio.timeout(timeout):
            for i in range(0, len(missing), MAX_IDS):
                chunk = missing[i:i + MAX_IDS]
                out.fetched += 1
                fresh.update(await _fetch_chunk(http, base, chunk, key, hosts, problems))
    except _Refused as exc:
        out.problem = str(exc)
    except TimeoutError:
        out.problem = f"fal's pricing API did not answer within {timeout:g} s"
    except (httpx.HTTPError, StoryreelError, OSError) as exc:
        out.problem = f"fal's pricing API could not be reached ({type(exc).__name__})"
    finally:
        if own:
            await http.aclose()
    out.prices.update(fresh)
    if out.problem is None and path is not None:
        # also what fal named no price for, so that a plan does not ask again all day
        entries = {e: {"at": now, "price": ({"unit_price": fresh[e].unit_price,
                                             "unit": fresh[e].unit,
                                             "currency": fresh[e].currency}
                                            if e in fresh else None)}
                   for e in missing}
        _write_cache(path, base, entries, now, ttl)
    if problems and out.problem is None:
        out.problem = "; ".join(problems[:3])
    out.problem = redact(out.problem) if out.problem else None
    return _finish(out, wanted)


def _finish(out: PriceLookup, wanted: list[str]) -> PriceLookup:
    absent = [e for e in wanted if e not in out.prices]
    if absent and out.problem is None:
        out.problem = f"fal names no price for {', '.join(absent[:3])}" + \
            (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
    return out


def unit_prices(endpoints: Iterable[str], **kw: Any) -> PriceLookup:
    """fetch_unit_prices for callers without an event loop (`storyreel plan`, `prices`)."""
    return asyncio.run(fetch_unit_prices(endpoints, **kw))


# -- what a unit counts ----------------------------------------------------------------------

_PER_SECOND = {"second", "seconds", "sec", "s", "video_second", "video_seconds",
               "output_second", "generated_second"}
_PER_MINUTE = {"minute", "minutes", "video_minute", "video_minutes"}
_PER_VIDEO = {"video", "videos", "request", "requests", "generation", "generations", "output",
              "outputs", "clip", "clips", "call", "calls"}


def units_per_shot(unit: str, seconds: float) -> float | None:
    """How many of `unit` one clip of `seconds` is billed (before any resolution factor), or
    None for a unit that does not follow from a clip's length (megapixels, tokens, GPU time)."""
    norm = unit.strip().lower().replace("-", "_").replace(" ", "_")
    for prefix in ("per_", "1_"):
        norm = norm.removeprefix(prefix)
    if norm in _PER_SECOND:
        return float(seconds)
    if norm in _PER_MINUTE:
        return seconds / 60.0
    if norm in _PER_VIDEO:
        return 1.0
    return None
