"""One shot, end to end, with the money rules: cache -> reserve -> journal intent -> submit ->
journal job id -> poll -> download -> verify -> settle -> conform. Plain Python (the Prefect task
in flows/pipeline.py wraps `render_shot`), safe to call again on a half-finished run: whatever
the journal says already happened is resumed, never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.context import RunContext, ShotResult, clip_key
from flows.media.conform import conform
from flows.media.probe import VideoInfo, verify_clip
from flows.money.journal import Attempt, Journal
from flows.money.ledger import Ledger
from flows.storyboard.plan import Option, ShotPlan
from flows.uptodate import conformed_name, option_of, row_is_current
from providers.base import Provider
from providers.errors import (
    BadMediaError,
    BudgetError,
    JobTimeoutError,
    NotFoundError,
    ProviderError,
    UnconfirmedSubmitError,
)
from providers.types import Job, Poll

# A reason that starts so means the same request to the same vendor would fail the same way.
_FINAL = ("content_policy", "invalid_request", "auth", "insufficient_credit", "budget")


async def render_shot(ctx: RunContext, shot: ShotPlan) -> ShotResult:
    """Produce the shot's conformed clip, or say precisely why not."""
    conformed = ctx.run_dir / "clips" / conformed_name(ctx.plan, shot)
    # an early submit (flows/early.py) was this run's first attempt of the first option
    reasons: list[str] = list(ctx.early.get(shot.shot_id, []))
    used = 1 if shot.shot_id in ctx.early else 0
    resumed = await _resume(ctx, shot, conformed, reasons)
    if resumed is not None:
        return resumed
    if ctx.cache is not None and shot.shot_id not in ctx.regenerate:
        for opt in shot.options:
            hit = ctx.cache.get(clip_key(ctx, shot, opt))
            if hit is not None:
                row = ctx.journal.record(shot_id=shot.shot_id, attempt=ctx.journal.next_attempt(
                    shot.shot_id), provider=opt.provider, model=opt.model, status="cached",
                    job_id=hit.job_id, cache_key=clip_key(ctx, shot, opt),
                    estimated_usd=opt.estimate_usd, actual_usd=0.0,
                    cost_source="none", clip_path=str(hit.path))
                ctx.log(f"{shot.shot_id}: reused cached clip from {opt.label} (job {hit.job_id})")
                return await _finish(ctx, shot, opt, row, hit.path, conformed, "cached")
    for i, opt in enumerate(shot.options):
        tries = 1 + shot.retries
        if i == 0 and used:
            tries = 0 if reasons and reasons[-1].startswith(_FINAL) else tries - used
        for _ in range(tries):
            result = await _attempt(ctx, shot, opt, conformed, reasons)
            if result is not None:
                return result
            if reasons and reasons[-1].startswith(_FINAL):
                break
        if ctx.ledger.stopped():
            break
    status = "skipped" if reasons and all(r.startswith("budget") for r in reasons) else "failed"
    return ShotResult(shot.shot_id, status, reason="; ".join(reasons) or "no option could run")


@dataclass
class _Sent:
    """A submit the vendor answered with a job id."""

    provider: Provider
    job: Job
    row: int
    reservation: Any
    started: float


async def _attempt(ctx: RunContext, shot: ShotPlan, opt: Option, conformed: Path,
                   reasons: list[str]) -> ShotResult | None:
    journal, ledger = ctx.journal, ctx.ledger
    base = _base(ctx, shot, opt)
    if ledger.stopped():
        reasons.append("budget: run stopped (budget.on_exhausted: stop)")
        journal.record(**base, status="skipped", estimated_usd=opt.estimate_usd,
                       failure_reason=reasons[-1])
        return None
    try:
        reservation = await _reserve(ctx, shot, opt)
    except BudgetError as exc:
        reasons.append(f"budget: {exc}")
        journal.record(**base, status="skipped", estimated_usd=opt.estimate_usd,
                       failure_reason=reasons[-1])
        ctx.log(f"{shot.shot_id}: skipped {opt.label}: {exc}")
        return None
    async with ctx.slot(opt.provider):
        sent = await _send(ctx, shot, opt, base, reservation, reasons)
        if not isinstance(sent, _Sent):
            return sent
        return await _complete(ctx, shot, opt, sent.provider, sent.job, sent.row,
                               sent.reservation, conformed, reasons, sent.started)


async def submit_first(ctx: RunContext, shot: ShotPlan) -> list[str] | None:
    """Only the first attempt's submit, for flows/early.py: None when nothing was sent (the
    budget said no: the flow decides and records that), else the reasons it failed (empty:
    the job is at the vendor, journaled as submitted, for the flow to poll)."""
    opt = shot.options[0]
    if ctx.ledger.stopped():
        return None
    try:
        reservation = await _reserve(ctx, shot, opt)  # with `stop`, no later shot goes early
    except BudgetError:
        return None
    if ctx.ledger.stopped():  # stopped while this one waited to reserve
        ctx.ledger.release(reservation)
        return None
    reasons: list[str] = []
    async with ctx.slot(opt.provider):
        await _send(ctx, shot, opt, _base(ctx, shot, opt), reservation, reasons)
    return reasons


def _base(ctx: RunContext, shot: ShotPlan, opt: Option) -> dict[str, Any]:
    """The journal fields every row of a new attempt starts with."""
    return dict(shot_id=shot.shot_id, attempt=ctx.journal.next_attempt(shot.shot_id),
                provider=opt.provider, model=opt.model)


async def _reserve(ctx: RunContext, shot: ShotPlan, opt: Option) -> Any:
    """Reserve the option's estimate; a refusal under `on_exhausted: stop` stops every new
    submission of the run before BudgetError goes on to the caller."""
    try:
        return await ctx.ledger.reserve(shot.shot_id, opt.estimate_usd)
    except BudgetError:
        if ctx.plan.storyboard.budget.on_exhausted == "stop":
            ctx.ledger.stop(f"shot {shot.shot_id} could not reserve ${opt.estimate_usd:.2f}")
        raise


async def _send(ctx: RunContext, shot: ShotPlan, opt: Option, base: dict[str, Any],
                reservation: Any, reasons: list[str]) -> _Sent | ShotResult | None:
    """Journal the intent, submit, journal the job id. Called with the provider's slot held:
    the intent is written once the slot is ours, right before the POST, so a run killed while
    queueing for a slot leaves no false "unconfirmed" behind, and timings exclude the queue."""
    journal, ledger = ctx.journal, ctx.ledger
    provider = ctx.provider(opt.provider)
    req = shot.request(opt, ctx.plan)
    row = journal.intent(**base, cache_key=clip_key(ctx, shot, opt),
                         estimated_usd=opt.estimate_usd, reserved_usd=reservation.amount_usd)
    started = time.monotonic()
    try:
        job = await provider.submit(req)
    except UnconfirmedSubmitError as exc:
        if exc.job_id:  # the vendor let us name the job (Runware): ask it instead of guessing
            job = Job(provider=opt.provider, job_id=exc.job_id, data={"recovered": True})
            journal.submitted(row, job.job_id, job.data)
            ctx.log(f"{shot.shot_id}: submit answer lost; polling job {job.job_id} we named")
            return _Sent(provider, job, row, reservation, started)
        # the money may be gone: keep it reserved so the cap still counts it
        exc.at(shot_id=shot.shot_id)
        # reported at the estimate: it may have been charged, and a report must never
        # show less than was spent
        journal.status(row, "unconfirmed", failure_reason=f"unconfirmed: {exc.message}",
                       actual_usd=reservation.amount_usd, cost_source="estimate")
        ctx.log(f"{shot.shot_id}: {exc} - not resubmitted; check the vendor's dashboard")
        return ShotResult(shot.shot_id, "unconfirmed", reason=str(exc))
    except ProviderError as exc:
        ledger.release(reservation)  # the vendor refused it: nothing was charged
        return _failed(ctx, row, shot, exc, reasons)
    journal.submitted(row, job.job_id, job.data)
    ctx.log(f"{shot.shot_id}: submitted to {opt.label}, job {job.job_id}")
    return _Sent(provider, job, row, reservation, started)


async def _complete(ctx: RunContext, shot: ShotPlan, opt: Option, provider: Provider, job: Job,
                    row: int, reservation: Any, conformed: Path, reasons: list[str],
                    started: float) -> ShotResult | None:
    """Wait for a submitted job, settle its cost, then download it."""
    journal, ledger = ctx.journal, ctx.ledger
    timings: dict[str, float] = {}

    def seen(p: Poll) -> None:
        if p.state == "running" and "queued_s" not in timings:
            timings["queued_s"] = round(time.monotonic() - started, 3)

    try:
        done = await provider.wait(job, on_status=seen)
    except JobTimeoutError as exc:
        with contextlib.suppress(ProviderError):
            await provider.cancel(job)
        _charge_failure(ledger, reservation, opt, journal, row)
        return _failed(ctx, row, shot, exc.at(job_id=job.job_id), reasons, status="canceled")
    except ProviderError as exc:
        if isinstance(exc, NotFoundError) and job.data.get("recovered"):
            # the job we named never reached the vendor: nothing was charged
            ledger.release(reservation)
            journal.status(row, "failed", actual_usd=0.0, cost_source="none")
            return _failed(ctx, row, shot, exc.at(job_id=job.job_id), reasons)
        # we lost track of a job that may still finish and be charged: no new attempt (that
        # could pay twice); the reservation stays held and the journal keeps the job as
        # submitted, so running the same --out again resumes polling it
        exc.at(shot_id=shot.shot_id, job_id=job.job_id)
        journal.status(row, "submitted", failure_reason=f"{exc.kind}: {exc.message}")
        ctx.log(f"{shot.shot_id}: lost track of job {job.job_id}: {exc}; rerun with the same "
                "--out to resume it")
        return ShotResult(shot.shot_id, "failed", reason=f"lost track of job {job.job_id} on "
                          f"{opt.label} ({exc.kind}); rerun the same --out to resume it")
    timings["generation_s"] = round(time.monotonic() - started, 3)
    if done.error is not None or done.state != "succeeded":
        _charge_failure(ledger, reservation, opt, journal, row, done.cost_usd)
        err = done.error or ProviderError(f"job ended {done.state}", provider=opt.provider)
        return _failed(ctx, row, shot, err.at(job_id=job.job_id), reasons,
                       status="canceled" if done.state == "canceled" else "failed")
    # succeeded: the vendor has charged; settle before anything else can go wrong
    actual = done.cost_usd if done.cost_usd is not None else reservation.amount_usd
    source = "none" if opt.provider == "local" else (
        "vendor" if done.cost_usd is not None else "estimate")
    ledger.settle(reservation, actual)
    journal.status(row, "succeeded", actual_usd=actual, cost_source=source, **timings)
    ctx.log(f"{shot.shot_id}: {opt.label} job {job.job_id} finished in "
            f"{timings['generation_s']:.1f} s, ${actual:.4f} ({source})")
    return await _download(ctx, shot, opt, provider, job, done, row, conformed, reasons)


async def _download(ctx: RunContext, shot: ShotPlan, opt: Option, provider: Provider, job: Job,
                    done: Poll, row: int, conformed: Path, reasons: list[str]) -> ShotResult | None:
    raw = ctx.run_dir / "raw" / f"{shot.shot_id}-{job.job_id}.mp4"
    t0 = time.monotonic()
    try:
        info = await _fetch_verified(provider, job, done, raw, shot.duration)
    except ProviderError as exc:
        # paid but unusable: the cost stays reported; the next attempt may pay again
        return _failed(ctx, row, shot, exc.at(job_id=job.job_id), reasons)
    ctx.journal.status(row, "downloaded", clip_path=str(raw),
                       download_s=round(time.monotonic() - t0, 3))
    if ctx.cache is not None:
        ctx.cache.put(clip_key(ctx, shot, opt), raw, provider=opt.provider, model=opt.model,
                      job_id=job.job_id, cost_usd=ctx.journal.get(row).actual_usd)
    return await _finish(ctx, shot, opt, row, raw, conformed, "done", source=info)


async def _fetch_verified(provider: Provider, job: Job, done: Poll, raw: Path,
                          duration: float) -> VideoInfo:
    """Download and check the clip; a bad download is fetched again (the job is paid once)."""
    last: ProviderError | None = None
    for _ in range(3):
        try:
            await provider.fetch(job, done, raw)
            return await asyncio.to_thread(verify_clip, raw, expect_duration=duration)
        except BadMediaError as exc:
            last = exc
            exc.provider = exc.provider or provider.name
    assert last is not None
    raise last


def _charge_failure(ledger: Ledger, reservation: Any, opt: Option, journal: Journal, row: int,
                    vendor_cost: float | None = None) -> None:
    """Failed jobs are charged per the vendor's billing rule in the catalog."""
    if opt.info.charges_failures or vendor_cost:
        cost = vendor_cost if vendor_cost is not None else reservation.amount_usd
        ledger.settle(reservation, cost)
        journal.status(row, "failed", actual_usd=cost,
                       cost_source="vendor" if vendor_cost is not None else "estimate")
    else:
        ledger.release(reservation)
        journal.status(row, "failed", actual_usd=0.0, cost_source="none")


def _failed(ctx: RunContext, row: int, shot: ShotPlan, exc: ProviderError, reasons: list[str],
            status: str = "failed") -> None:
    """Journal and remember why an attempt failed; None tells the caller to try on."""
    exc.at(shot_id=shot.shot_id)
    reasons.append(f"{exc.kind}: {exc}")
    ctx.journal.status(row, status, failure_reason=f"{exc.kind}: {exc.message}")
    ctx.log(f"{shot.shot_id}: {exc}")
    return None


async def _finish(ctx: RunContext, shot: ShotPlan, opt: Option, row: int, raw: Path,
                  conformed: Path, status: str, source: VideoInfo | None = None) -> ShotResult:
    conformed.parent.mkdir(parents=True, exist_ok=True)
    # conformed clips are cached next to the raw ones: a re-run re-encodes only what changed
    cache_dir = ctx.cache.root / "conformed" if ctx.cache is not None else None
    await conform(raw, conformed, ctx.fmt, shot.duration, cache_dir=cache_dir, source=source)
    ctx.journal.status(row, "done" if status == "done" else "cached", conformed_path=str(conformed))
    return ShotResult(shot.shot_id, status, conformed=conformed, option=opt.label)


async def _resume(ctx: RunContext, shot: ShotPlan, conformed: Path,
                  reasons: list[str]) -> ShotResult | None:
    """Pick up what an interrupted run of this folder already did for the shot."""
    attempts = ctx.journal.attempts(shot.shot_id)
    if not attempts:
        return None
    last: Attempt = attempts[-1]
    opt = option_of(shot, last)
    # a clip made for what the shot asked before an edit is not this shot's clip any more
    # (the key of what it asks now differs); the same clip conformed for another format is
    # conformed again from its download
    current = opt is not None and row_is_current(ctx.plan, shot, last)
    if (last.status in ("done", "cached") and current and last.conformed_path
            and Path(last.conformed_path).name == conformed.name
            and Path(last.conformed_path).exists()):
        return ShotResult(shot.shot_id, last.status, conformed=Path(last.conformed_path),
                          option=f"{last.provider}:{last.model}")
    if opt is None:
        return None
    if last.status in ("done", "cached") and not current:
        return None  # a new attempt (from the cache when the edit was undone)
    if last.status in ("downloaded", "done", "cached") and last.clip_path and Path(last.clip_path).exists():
        ctx.log(f"{shot.shot_id}: resuming from the downloaded clip of job {last.job_id}")
        return await _finish(ctx, shot, opt, last.id, Path(last.clip_path), conformed,
                             "cached" if last.status == "cached" else "done")
    if last.status in ("intent", "unconfirmed") and not ctx.resubmit_unconfirmed:
        if last.status == "intent":
            ctx.journal.status(last.id, "unconfirmed", failure_reason=(
                "unconfirmed: the run stopped between intent and the vendor's answer"),
                actual_usd=last.reserved_usd or 0.0, cost_source="estimate")
        ctx.log(f"{shot.shot_id}: attempt {last.attempt} on {opt.label} is unconfirmed (the "
                "submit may have reached the vendor); not resubmitted without "
                "--resubmit-unconfirmed")
        return ShotResult(shot.shot_id, "unconfirmed",
                          reason=f"unconfirmed submit to {opt.label} (attempt {last.attempt})")
    if last.status in ("submitted", "running", "succeeded") and last.job_id:
        ctx.log(f"{shot.shot_id}: resuming job {last.job_id} on {opt.label} (not resubmitted)")
        provider = ctx.provider(opt.provider)
        job = Job(provider=opt.provider, job_id=last.job_id, data=last.job_data or {})
        async with ctx.slot(opt.provider):
            if last.status == "succeeded":  # already settled before the interruption
                done = await provider.wait(job)
                result = await _download(ctx, shot, opt, provider, job, done, last.id,
                                         conformed, reasons)
            else:  # committed money: held since the ledger was made (run.ledger_for)
                reservation = ctx.ledger.held(last.id) or ctx.ledger.hold(
                    shot.shot_id, last.reserved_usd or 0.0)
                result = await _complete(ctx, shot, opt, provider, job, last.id, reservation,
                                         conformed, reasons, time.monotonic())
        return result  # None: that job failed, fresh attempts follow
    return None


__all__ = ["RunContext", "ShotResult", "render_shot"]
