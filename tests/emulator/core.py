"""The vendor emulator's core: jobs on a clock, its own prices (prices.py), counters, faults.

Vendor modules (tests/emulator/vendors/*.py) implement each vendor's wire
protocol on top of this; server.py serves it all over real HTTP. The contract
is tests/emulator/INTERFACE.md.

Job state is derived from the emulator's clock rather than advanced by
events, so a job finishes, and is charged, whether or not anyone polls it,
as on a real vendor. The clock is time.monotonic() plus whatever a test has
`advance()`d it by: a test that needs a job still running at some point and
finished later gives it a long latency and advances the clock past it,
instead of sleeping through it (the benchmarks keep real latencies). State is
shared by the server thread (handlers) and the test thread
(inject/stats/reset), hence one lock.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import random
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from providers.catalog import CATALOG_DIR, ModelInfo, load_catalog
from tests.emulator import faults as faultlib
from tests.emulator import hostile, media
from tests.emulator import prices as pricelist


class _FakeKeys(dict):
    """FAKE_KEYS[vendor] -> an obviously fake key, e.g. "test-fal-key"."""

    def __missing__(self, vendor: str) -> str:
        return f"test-{vendor}-key"


FAKE_KEYS: dict[str, str] = _FakeKeys()
COUNTERS = ("submits", "polls", "results", "downloads", "cancels", "uploads",
            "requests", "auth_failures", "errors_injected", "price_lookups")
STAGES = ("submit", "poll", "result", "cancel", "upload", "pricing")
_OUTCOME_STATE = {"success": "succeeded", "fail": "failed", "policy": "policy"}
_DEFAULT_ERRORS = {"fail": "Generation failed (injected fault)",
                   "policy": "The prompt was flagged by the content policy (injected fault)"}
_SHORT_SIDE = {"240p": 240, "360p": 360, "480p": 480, "540p": 540, "580p": 580, "720p": 720,
               "768p": 768, "1080p": 1080, "1440p": 1440, "2160p": 2160, "4k": 2160}

Handler = Callable[[Request, "Emulator"], Awaitable[Response]]


def dimensions(aspect_ratio: str = "16:9", resolution: str = "720p") -> tuple[int, int]:
    """Pixel size for an aspect and a resolution name: ("9:16", "720p") -> (720, 1280)."""
    short = _SHORT_SIDE.get(resolution.lower(), 720)
    a, _, b = aspect_ratio.partition(":")
    w, h = (float(a), float(b)) if b else (16.0, 9.0)
    if w >= h:
        return media.even(short * w / h), short
    return short, media.even(short * h / w)


@dataclass(eq=False)
class EmuJob:
    id: str
    vendor: str
    model: str
    duration: float
    width: int
    height: int
    resolution: str
    request: dict
    created: float  # Emulator.now()
    price_usd: float
    outcome: str  # "success" | "fail" | "policy" | "never"
    canceled: bool = False
    data: dict = field(default_factory=dict)  # free per-vendor storage
    ready_after: float = 0.0  # seconds from created to the terminal state (latency + jitter)
    token: str = ""  # names the job's video under /_media/
    error: str = ""  # the failure message for "fail" / "policy" outcomes
    bills: str = "success"  # when the vendor charges it: "success" | "terminal" | "submit"
    serial: int = 0  # 1, 2, ... in submit order since the last reset (distinct_clips' look)


class UnknownModelError(LookupError):
    """A job for a model the emulator has no price for: the route answers the vendor's 404
    rather than running a job that would be free and hide a missing price."""

    def __init__(self, vendor: str, model: str) -> None:
        self.vendor, self.model = vendor, model
        super().__init__(f"model {model!r} not found")


async def _drain(request: Request) -> None:
    """Read the whole request body first: closing with unread bytes would make the kernel send
    an RST mid-upload (an httpx WriteError) instead of the clean 'no response' we want."""
    try:
        await request.body()
    except RuntimeError:  # the handler already streamed it
        pass


def discover_vendors() -> list[ModuleType]:
    """Every tests/emulator/vendors/*.py not starting with "_" that defines VENDOR."""
    from tests.emulator import vendors

    found = []
    for info in sorted(pkgutil.iter_modules(vendors.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{vendors.__name__}.{info.name}")
        if hasattr(module, "VENDOR"):
            found.append(module)
    return found


class Emulator:
    def __init__(
        self,
        *,
        latency: float = 0.3,
        jitter: float = 0.0,
        media_size: tuple[int, int] | None = (320, 180),
        seed: int = 0,
        vendors: Iterable[ModuleType] | None = None,
        extra_vendors: Iterable[ModuleType] = (),
        catalog_dir: Path | None = None,
        prices: dict[str, dict[str, pricelist.Entry]] | None = None,
    ) -> None:
        modules = list(discover_vendors() if vendors is None else vendors) + list(extra_vendors)
        self.vendors: dict[str, ModuleType] = {m.VENDOR: m for m in modules}
        # the catalog says what a model accepts (durations, resolutions); what a job costs
        # and whether a failure bills come from the emulator's own table (prices.py)
        self.catalog_dir = Path(catalog_dir) if catalog_dir else CATALOG_DIR
        self.prices = pricelist.PRICES if prices is None else prices
        # the default table comes with its vendors' default overcharges; a test's own table
        # bills at its list prices
        self._overcharge = dict(pricelist.OVERCHARGE) if prices is None else {}
        self._defaults = (latency, jitter, media_size, seed)
        self._lock = threading.RLock()
        self.faults = faultlib.FaultBook()
        self._info_cache: dict[tuple[str, str], ModelInfo | None] = {}
        self.url = ""
        self._server: Any = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> Emulator:
        from tests.emulator.server import ServerThread

        self._server = ServerThread(self, port=port)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def base_url(self, vendor: str) -> str:
        return f"{self.url}/{vendor}{getattr(self.vendors[vendor], 'BASE_PATH', '')}"

    def env(self) -> dict[str, str]:
        """Base URL overrides and fake keys for every vendor, ready for os.environ."""
        out: dict[str, str] = {}
        for vendor, module in self.vendors.items():
            out[f"STORYREEL_{vendor.upper()}_BASE_URL"] = self.base_url(vendor)
            key_env = getattr(module, "KEY_ENV", None)
            if key_env:
                out[key_env] = FAKE_KEYS[vendor]
            extra = getattr(module, "extra_env", None)  # optional hook for odd adapters
            if extra is not None:
                out.update(extra(self))
        return out

    # -- configuration and observation -------------------------------------------------------

    def reset(self) -> None:
        """Forget jobs, counters and faults; restore the constructor's latency/jitter/prices."""
        latency, jitter, media_size, seed = self._defaults
        with self._lock:
            self.latency, self.jitter, self.media_size = latency, jitter, media_size
            # "vendor" or "vendor:model" -> factor on the list price (the model's key wins)
            self.price_multiplier: dict[str, float] = dict(self._overcharge)
            # vendor -> model -> USD per billing unit: the account's own price where a vendor
            # states one (fal's Platform API), instead of the vendor's listed price
            self.unit_prices: dict[str, dict[str, float]] = {}
            # off: every job of a size serves the same clip (one ffmpeg per size); on: each
            # job its own look, as two generations of a real vendor never match
            self.distinct_clips = False
            self._rng = random.Random(seed)
            self._skew = 0.0  # seconds advance() added to time.monotonic()
            self._jobs: dict[tuple[str, str], EmuJob] = {}
            self._by_token: dict[str, EmuJob] = {}
            self._active: dict[str, set[EmuJob]] = {v: set() for v in self.vendors}
            self._counters = {v: dict.fromkeys(COUNTERS, 0) for v in self.vendors}
            self._max_in_flight = dict.fromkeys(self.vendors, 0)
            self._max_total = 0
            self._unknown: set[tuple[str, str]] = set()
            self.faults.clear()
            # (host, path, header) of credentials sent to the other host name (hostile.py)
            self.offhost_credentials: list[tuple[str, str, str]] = []

    def configure(self, *, latency: float | None = None, jitter: float | None = None,
                  price_multiplier: dict[str, float] | None = None,
                  distinct_clips: bool | None = None,
                  unit_prices: dict[str, dict[str, float]] | None = None) -> None:
        with self._lock:
            for vendor, table in (unit_prices or {}).items():
                self.unit_prices.setdefault(vendor, {}).update(
                    {m: float(v) for m, v in table.items()})
            if distinct_clips is not None:
                self.distinct_clips = bool(distinct_clips)
            if latency is not None:
                self.latency = float(latency)
            if jitter is not None:
                self.jitter = float(jitter)
            if price_multiplier is not None:
                self.price_multiplier.update({k: float(v) for k, v in price_multiplier.items()})

    def now(self) -> float:
        """The emulator's clock: time.monotonic() plus every advance() since the last reset."""
        return time.monotonic() + self._skew

    def advance(self, seconds: float) -> None:
        """Move the clock on: jobs whose latency ends within `seconds` are finished (and
        billed) at once, as if that much time had passed at the vendor."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._skew += float(seconds)

    def stats(self, vendor: str | None = None) -> dict:
        with self._lock:
            per = {v: self._vendor_stats(v) for v in self.vendors}
            if vendor is not None:
                if vendor not in per:
                    raise KeyError(f"unknown vendor {vendor!r}")
                return per[vendor]
            total: dict[str, Any] = {k: sum(s[k] for s in per.values())
                                     for k in (*COUNTERS, "jobs", "in_flight")}
            total["charged_usd"] = round(sum(s["charged_usd"] for s in per.values()), 6)
            total["max_in_flight"] = self._max_total
            out: dict[str, Any] = dict(per)
            out["total"] = total
            out["unknown_models"] = sorted(f"{v}:{m}" for v, m in self._unknown)
            return out

    def _vendor_stats(self, vendor: str) -> dict:
        jobs = [j for j in self._jobs.values() if j.vendor == vendor]
        return {
            **self._counters[vendor],
            "jobs": len(jobs),
            "charged_usd": round(sum(j.price_usd for j in jobs if self.charged(j)), 6),
            # per job: what the vendor charged so far (its bill, to set beside cost.csv)
            "charges": {j.id: j.price_usd for j in jobs if self.charged(j)},
            "in_flight": self._in_flight(vendor),
            "max_in_flight": self._max_in_flight[vendor],
            "unknown_models": sorted(m for v, m in self._unknown if v == vendor),
        }

    def jobs(self, vendor: str | None = None) -> list[EmuJob]:
        with self._lock:
            return [j for j in self._jobs.values() if vendor is None or j.vendor == vendor]

    def count(self, vendor: str, what: str, n: int = 1) -> None:
        if what not in COUNTERS:
            raise ValueError(f"unknown counter {what!r} (known: {', '.join(COUNTERS)})")
        with self._lock:
            self._counters[vendor][what] += n

    def inject(self, vendor: str, stage: str, kind: str, *, times: int = 1, **params: Any) -> None:
        if vendor not in self.vendors:
            raise ValueError(f"unknown vendor {vendor!r} (known: {', '.join(self.vendors)})")
        self.faults.add(vendor, stage, kind, times, params)

    # -- prices ------------------------------------------------------------------------------

    def model_info(self, vendor: str, model: str) -> ModelInfo | None:
        """The catalog entry whose key, vendor_model or vendor_model_image is `model`."""
        key = (vendor, model)
        if key not in self._info_cache:  # stats() asks once per job: keep it cheap
            provider = getattr(self.vendors.get(vendor), "CATALOG", vendor)
            cat = load_catalog(self.catalog_dir).get(provider)
            found = None
            if cat is not None:
                found = cat.models.get(model) or next(
                    (i for i in cat.models.values()
                     if model in (i.vendor_model, i.vendor_model_image)), None)
            self._info_cache[key] = found
        return self._info_cache[key]

    def price_entry(self, vendor: str, model: str) -> pricelist.Entry | None:
        """The emulator's own price entry for `model` as the vendor's API names it."""
        return pricelist.entry(vendor, model, self.prices)

    def price(self, vendor: str, model: str, duration: float, resolution: str,
              request: dict | None = None) -> float:
        """What a job costs: the list price of prices.py for the request (its audio switch)
        x price_multiplier ("vendor:model", else "vendor"); UnknownModelError without a
        price."""
        found = self.price_entry(vendor, model)
        if found is None:
            with self._lock:
                self._unknown.add((vendor, model))
            raise UnknownModelError(vendor, model)
        return round(found.usd(duration, resolution, request) * self.factor(vendor, model), 6)

    def factor(self, vendor: str, model: str) -> float:
        """What `vendor` bills `model` at, over its list price."""
        with self._lock:
            by = self.price_multiplier
            return float(by.get(f"{vendor}:{model}", by.get(vendor, 1.0)))

    def charges_failures(self, vendor: str, model: str) -> bool:
        """Whether a failed job of `model` is billed (prices.py `bills`)."""
        found = self.price_entry(vendor, model)
        return found is not None and found.bills != "success"

    def charged(self, job: EmuJob) -> bool:
        if job.bills == "submit":  # paid when accepted (NanoGPT): nothing is refunded
            return True
        state = self.state(job)
        if state == "succeeded":
            return True
        return state in ("failed", "policy") and job.bills == "terminal"

    # -- jobs --------------------------------------------------------------------------------

    def new_job(self, vendor: str, *, model: str, duration: float, width: int, height: int,
                resolution: str = "720p", request: dict, price_usd: float | None = None,
                job_id: str | None = None) -> EmuJob:
        if price_usd is None:  # before the fault is consumed: an unknown model makes no job
            price_usd = self.price(vendor, model, duration, resolution, request)
        found = self.price_entry(vendor, model)
        fault = self.faults.take(vendor, "job")
        outcome = fault.kind if fault else "success"
        # takes a cancel request (fal: 202 CANCELLATION_REQUESTED) but runs on and bills
        deaf = fault is not None and fault.kind == "ignore_cancel"
        picture = fault.kind if fault is not None and fault.kind in faultlib.PICTURE_KINDS \
            else None
        if deaf or picture:
            outcome = "success"
        bad = fault if fault is not None and fault.kind in hostile.JOB_KINDS else None
        if bad is not None:  # a hostile answer about a job that itself succeeds
            outcome = "success"
            job_id = bad.params.get("job_id", job_id)
        with self._lock:
            if fault:
                self._counters[vendor]["errors_injected"] += 1
            ready = self.latency + (self._rng.uniform(0, self.jitter) if self.jitter > 0 else 0)
            job = EmuJob(
                id=job_id or str(uuid.uuid4()), vendor=vendor, model=model,
                duration=float(duration), width=int(width), height=int(height),
                resolution=resolution, request=request, created=self.now(),
                price_usd=float(price_usd), outcome=outcome, ready_after=ready,
                token=secrets.token_urlsafe(12),
                error=(fault.params.get("message") if fault else None)
                or _DEFAULT_ERRORS.get(outcome, ""), serial=len(self._jobs) + 1,
                bills=found.bills if found is not None else "success",
            )
            if bad is not None:
                hostile.apply_job_fault(job, bad.kind, bad.params)
            if deaf:
                job.data["ignore_cancel"] = True
            if picture:
                job.data["picture"] = picture
            self._jobs[(vendor, job.id)] = job
            self._by_token[job.token] = job
            self._active[vendor].add(job)
            self._counters[vendor]["submits"] += 1
            self._max_in_flight[vendor] = max(self._max_in_flight[vendor],
                                              self._in_flight(vendor))
            self._max_total = max(self._max_total, sum(map(self._in_flight, self.vendors)))
            return job

    def get_job(self, vendor: str, job_id: str) -> EmuJob | None:
        with self._lock:
            job = self._jobs.get((vendor, job_id))
            if job is None and "%" in job_id:  # an id that arrived escaped in a URL path
                job = self._jobs.get((vendor, unquote(job_id)))
            return job

    def job_by_token(self, token: str) -> EmuJob | None:
        with self._lock:
            return self._by_token.get(token)

    def state(self, job: EmuJob) -> str:
        if job.canceled:
            return "canceled"
        elapsed = self.now() - job.created
        if elapsed < 0.2 * job.ready_after:
            return "queued"
        if job.outcome == "never" or elapsed < job.ready_after:
            return "running"
        return _OUTCOME_STATE[job.outcome]

    def progress(self, job: EmuJob) -> float:
        state = self.state(job)
        if state == "succeeded":
            return 1.0
        if job.ready_after <= 0:
            return 0.0 if job.outcome == "never" else 1.0
        frac = min(1.0, (self.now() - job.created) / job.ready_after)
        return round(min(frac, 0.99) if job.outcome == "never" else frac, 3)

    def cancel(self, job: EmuJob) -> bool:
        """True when a cancel request is taken; a job with the `ignore_cancel` fault takes it
        and runs on (as a fal app may: the request only signals it)."""
        with self._lock:
            if self.state(job) in ("queued", "running"):
                job.canceled = not job.data.get("ignore_cancel")
                return True
            return False

    def _in_flight(self, vendor: str) -> int:
        active = self._active[vendor]
        # terminal is forever (time only grows, cancel is final): prune as we go
        active.difference_update([j for j in active if self.state(j) not in ("queued", "running")])
        return len(active)

    def video_url(self, job: EmuJob) -> str:
        if job.data.get("video_url"):  # a hostile answer (hostile.py)
            return str(job.data["video_url"])
        return f"{self.url}/_media/{job.vendor}/{job.token}.mp4"

    def media_dims(self, job: EmuJob) -> tuple[int, int]:
        """The size actually served: media_size with the job's aspect, else the job's size."""
        if self.media_size:
            return media.fit_size(self.media_size, job.width, job.height)
        return media.even(job.width or 1280), media.even(job.height or 720)

    # -- routes for vendor modules -----------------------------------------------------------

    def error_response(self, vendor: str, status: int, message: str,
                       headers: dict[str, str] | None = None) -> Response:
        return self.vendors[vendor].error_response(status, message, headers)

    def check_key(self, request: Request, vendor: str, header: str = "authorization",
                  scheme: str | None = "Bearer") -> Response | None:
        """None when `header` carries FAKE_KEYS[vendor] (after `scheme`), else the vendor's 401."""
        value = request.headers.get(header, "").strip()
        expected = FAKE_KEYS[vendor]
        if scheme:
            got_scheme, _, key = value.partition(" ")
            ok = got_scheme.lower() == scheme.lower() and key.strip() == expected
        else:
            ok = value == expected
        if ok:
            return None
        self.count(vendor, "auth_failures")
        message = "Missing API key" if not value else "Invalid API key"
        return self.error_response(vendor, 401, message)

    def take_fault(self, vendor: str, stage: str) -> faultlib.Fault | None:
        fault = self.faults.take(vendor, stage)
        if fault is not None:
            self.count(vendor, "errors_injected")
        return fault

    def route(self, vendor: str, path: str, handler: Handler, methods: list[str] | None = None,
              stage: str = "poll") -> Route:
        """A Starlette route (path relative to /<vendor>) whose stage faults fire before `handler`."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")

        async def endpoint(request: Request) -> Any:
            self.count(vendor, "requests")
            fault = self.take_fault(vendor, stage)
            if fault is not None:
                if fault.kind == "slow":
                    # received in full, then slow to answer: a client that gives up meanwhile
                    # leaves a request the vendor still handles (and bills)
                    await _drain(request)
                    await asyncio.sleep(float(fault.params["delay"]))
                elif fault.kind == "http":
                    return self.http_fault(vendor, fault)
                elif fault.kind == "reset":
                    await _drain(request)
                    return faultlib.DropConnection()
                elif fault.kind == "redirect":
                    return hostile.redirect_elsewhere(self, request)
            try:
                response = await handler(request, self)
            except UnknownModelError as exc:
                return self.error_response(vendor, 404, f"Model {exc.model!r} not found")
            if fault is not None and fault.kind == "drop_response":
                await _drain(request)
                return faultlib.DropConnection()
            if fault is not None and fault.kind in faultlib.ACCEPT_KINDS:
                return self.accepted_badly(vendor, fault, response)
            if fault is not None and fault.kind == "patch":
                return faultlib.patched(response, fault.params["fields"])
            return response

        endpoint.__name__ = f"{vendor}_{stage}_{getattr(handler, '__name__', 'handler')}"
        return Route(path, endpoint, methods=methods or ["GET"])

    def accepted_badly(self, vendor: str, fault: faultlib.Fault, response: Response) -> Response:
        """The answer to a submit the handler accepted (its job exists and will bill), spoilt
        as the fault says; a submit the handler refused (no job) is answered as it was."""
        if not 200 <= response.status_code < 300:
            return response
        if fault.kind == "accept_then_http":
            return self.http_fault(vendor, fault)
        if fault.kind == "accept_then_garbage":  # e.g. a proxy's page in front of the app
            page = "<html><body><h1>200 OK</h1><p>upstream answered</p></body></html>"
            return Response(page, status_code=200, media_type="text/html")
        # accept_then_no_id: the vendor-shaped body with the job's id field(s) removed
        body = json.loads(bytes(response.body))
        strip = getattr(self.vendors[vendor], "without_job_id", None)
        body = strip(body) if strip is not None else {
            k: v for k, v in body.items() if k != "id"}
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-type")
                   and "request-id" not in k.lower()}  # fal's x-fal-request-id names it too
        return JSONResponse(body, status_code=response.status_code, headers=headers)

    def http_fault(self, vendor: str | None, fault: faultlib.Fault) -> Response:
        status = int(fault.params["status"])
        message = fault.params.get("message") or faultlib.DEFAULT_MESSAGES.get(status, "Error")
        headers = {}
        if fault.params.get("retry_after") is not None:
            headers["Retry-After"] = str(fault.params["retry_after"])
        headers.update(fault.params.get("headers") or {})  # e.g. fal's x-fal-request-id
        if vendor is None:
            return Response(message, status_code=status, headers=headers, media_type="text/plain")
        return self.error_response(vendor, status, message, headers or None)
