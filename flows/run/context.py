"""What every shot of one run shares: the plan, the run folder, the money books, one HTTP
client, adapters built once per provider, and the per-provider concurrency gates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flows.media.conform import OutputFormat
from flows.money.cache import ClipCache
from flows.money.journal import Journal
from flows.money.ledger import Ledger
from flows.run.uptodate import plan_clip_key
from flows.storyboard.keys import env_key
from flows.storyboard.plan import Option, Plan, ShotPlan
from providers import upload_store
from providers.base import Provider
from providers.registry import get_provider_class
from providers.upload_store import UploadStore

Limiter = Callable[[str], contextlib.AbstractAsyncContextManager[Any]]


@dataclass
class ShotResult:
    shot_id: str
    status: str  # a flows.money.status.ShotStatus
    conformed: Path | None = None
    option: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ShotEvent:
    """What just happened to one take of a shot, for a live display (flows/run/progress.py).
    take 0 is the shot's own ending: state is then its ShotResult status."""

    shot_id: str
    take: int
    state: str  # queued submitted running downloading conformed cached failed skipped ...
    detail: str = ""
    progress: float | None = None  # 0..1 where the vendor reports it


@dataclass
class RunContext:
    """What every shot of one run shares."""

    plan: Plan
    run_dir: Path
    journal: Journal
    ledger: Ledger
    client: httpx.AsyncClient
    keys: dict[str, str | None]
    fmt: OutputFormat
    cache: ClipCache | None = None
    regenerate: set[str] = field(default_factory=set)
    resubmit_unconfirmed: bool = False
    limits: dict[str, int] = field(default_factory=dict)
    limiter: Limiter | None = None  # cross-run limit (Prefect GCL), entered around each job
    log: Callable[[str], None] = print
    events: Callable[[ShotEvent], None] | None = None  # a live display, when one is shown
    _review: dict[str, Any] | None = None  # review.yaml, read once (people write it, never we)
    _providers: dict[str, Provider] = field(default_factory=dict)
    _sems: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _store: dict[str, UploadStore | None] = field(default_factory=dict)

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            cls = get_provider_class(name)
            extra: dict[str, Any] = {}
            if name == "local":  # the free animatic draws with the pipeline's media layer
                from flows.media.animatic import render_animatic  # ffmpeg work: only when used

                extra["renderer"] = render_animatic
            elif name == "fal":  # the account's unit prices turn billed units into money
                extra["prices"] = self.plan.unit_prices
            # a job of a provider the edited storyboard no longer names is still asked about
            # with its own provider's key (from the environment), never without one
            key = self.keys[name] if name in self.keys else env_key(name)
            if name != "local" and (store := self.upload_store()) is not None:
                extra["uploads"] = store
            self._providers[name] = cls(client=self.client, key=key, **extra)
        return self._providers[name]

    def upload_store(self) -> UploadStore | None:
        """The run's S3-compatible upload store (one for all vendors, so an image is put
        once), or None when neither the storyboard nor STORYREEL_UPLOAD_URL names one."""
        if "store" not in self._store:
            own = self.plan.storyboard.uploads
            self._store["store"] = upload_store.from_settings(
                own.url if own else None, own.providers if own else ())
        return self._store["store"]

    def event(self, shot: ShotPlan, state: str, detail: str = "", progress: float | None = None,
              take: int | None = None) -> None:
        """Tell the live display, if any; a display's trouble never reaches the shot."""
        if self.events is not None:
            with contextlib.suppress(Exception):
                self.events(ShotEvent(shot.shot_id, shot.take if take is None else take, state,
                                      detail, progress))

    def review(self) -> dict[str, Any]:
        """The run folder's picks and rejections (flows/review/picks.py), by shot id."""
        if self._review is None:
            from flows.review.picks import load_review

            self._review = load_review(self.run_dir)
        return self._review

    @contextlib.asynccontextmanager
    async def slot(self, name: str) -> Any:
        """Per-provider concurrency inside this run, then the cross-run limit if any."""
        sem = self._sems.setdefault(name, asyncio.Semaphore(self.limits.get(name, 1_000_000)))
        async with sem:
            if self.limiter is None:
                yield
            else:
                async with self.limiter(name):
                    yield


def clip_key(ctx: RunContext, shot: ShotPlan, opt: Option) -> str:
    """The content address of the clip this option would make for this shot."""

    return plan_clip_key(ctx.plan, shot, opt)
