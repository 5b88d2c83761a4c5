"""One shot, end to end, with the money rules: cache -> reserve -> journal intent -> submit ->
journal job id -> poll -> download -> verify -> settle -> conform. Plain Python (the Prefect task
in flows/pipeline.py wraps `render_shot`), safe to call again on a half-finished run: whatever
the journal says already happened is resumed, never repeated.

Money that may have been charged is never dropped: a submit whose answer does not rule out a
job (`ProviderError.may_have_charged`, decided in providers/) is `unconfirmed`; a job we stop
waiting for without a confirmed cancel is `abandoned`; a job we lost contact with is `lost`.
Each keeps its reservation and is reported at its estimate until a later run of the folder
(or `storyreel reconcile`) learns what the vendor did. Attempts and per-shot spend are counted
from the journal, so a resumed folder never gets fresh retries or a fresh per-shot cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flows.media.conform import conform
from flows.media.probe import VideoInfo, verify_clip
from flows.money.cache import ClipCache
from flows.money.journal import Attempt, Journal
from flows.money.ledger import Ledger, Reservation
from flows.money.status import AT_VENDOR, FINAL, NOT_ATTEMPTS, ShotStatus, Status
from flows.review.picks import by_take, good_clip, select_take, takes_to_make
from flows.run.context import RunContext, ShotResult, clip_key
from flows.run.uptodate import conformed_name
from flows.storyboard.plan import Option, ShotPlan
from providers.base import Provider
from providers.catalog import find_model
from providers.errors import (
    BadMediaError,
    BudgetError,
    JobTimeoutError,
    NotFoundError,
    ProviderError,
)
from providers.types import Job, Poll


class _Next(enum.Enum):
    TRY_ON = "try on"


# what an attempt step returns when the shot is not decided yet: go on to the next try
TRY_ON = _Next.TRY_ON
Outcome = ShotResult | Literal[_Next.TRY_ON]


def _final(reason: str | None) -> bool:
    """The same request to the same vendor would fail the same way."""
    return bool(reason) and reason.split(":", 1)[0] in FINAL


async def render_shot(ctx: RunContext, shot: ShotPlan) -> ShotResult:
    """Produce the shot's takes and return the one the cut uses (review.yaml's pick, else the
    first good take not rejected), or say precisely why there is none. Takes already made in
    this run folder resume from the journal at no cost; rejected ones are not made again."""
    review = ctx.review().get(shot.shot_id)
    existing = {a.take for a in ctx.journal.attempts(shot.shot_id)}
    takes = takes_to_make(existing, review, shot.takes)
    if takes == [1] and shot.takes == 1:  # the common case: exactly as before takes existed
        result = await render_take(ctx, shot)
    else:
        result = await _render_takes(ctx, shot, review, takes)
    ctx.event(shot, result.status, result.reason or result.option or "", take=0)
    return result


async def _render_takes(ctx: RunContext, shot: ShotPlan, review: Any, takes: list[int]
                        ) -> ShotResult:
    results = dict(zip(takes, await asyncio.gather(
        *(render_take(ctx, shot.for_take(t)) for t in takes)), strict=True))
    chosen = select_take(by_take(ctx.journal.attempts(shot.shot_id)), review)
    if chosen is not None:
        if chosen in results and results[chosen].conformed is not None:
            return results[chosen]
        rows = by_take(ctx.journal.attempts(shot.shot_id))[chosen]
        return ShotResult(shot.shot_id, rows[-1].status, conformed=good_clip(rows),
                          option=f"{rows[-1].provider}:{rows[-1].model}")
    statuses = {r.status for r in results.values()}
    status = statuses.pop() if len(statuses) == 1 else ShotStatus.FAILED
    return ShotResult(shot.shot_id, status, reason="; ".join(
        f"take {t}: {r.reason}" for t, r in results.items()))


async def render_take(ctx: RunContext, shot: ShotPlan) -> ShotResult:
    """Produce one take's conformed clip, or say precisely why not. Every journal read here is
    of this take's rows: takes of a shot run side by side, each with its own tries."""
    conformed = ctx.run_dir / "clips" / conformed_name(ctx.plan, shot)
    keys = [clip_key(ctx, shot, opt) for opt in shot.options]  # once per option, not per step
    history = _take_rows(ctx, shot)
    for a in history:  # an earlier plan's submit that never got an answer: it stays counted
        if a.status == Status.INTENT and a.cache_key not in keys:
            _unanswered(ctx, a)
    last = _to_resume([a for a in history if a.cache_key in keys])
    # jobs at a vendor that this session does not continue (an edited shot's, or one
    # abandoned before a later try) are settled beside the shot's own work, never dropped
    others = [a for a in history if a.status in AT_VENDOR and a.job_id
              and (last is None or a.id != last.id)]
    if others:
        fresh, *_ = await asyncio.gather(_render(ctx, shot, keys, conformed, last),
                                         *(_settle_other(ctx, a) for a in others))
        return fresh
    return await _render(ctx, shot, keys, conformed, last)


def _take_rows(ctx: RunContext, shot: ShotPlan) -> list[Attempt]:
    return [a for a in ctx.journal.attempts(shot.shot_id) if a.take == shot.take]


def _to_resume(attempts: list[Attempt]) -> Attempt | None:
    """The attempt a new session of the folder continues: the latest, unless that one ended
    without a clip while an earlier job of the same plan is still at the vendor."""
    if not attempts:
        return None
    last = attempts[-1]
    if last.status in (Status.DONE, Status.CACHED, Status.DOWNLOADED, Status.INTENT,
                       Status.UNCONFIRMED):
        return last
    live = [a for a in attempts if a.status in (*AT_VENDOR, Status.SUCCEEDED) and a.job_id]
    return live[-1] if live else last


async def _render(ctx: RunContext, shot: ShotPlan, keys: list[str], conformed: Path,
                  last: Attempt | None) -> ShotResult:
    reasons: list[str] = []
    resumed = await _resume(ctx, shot, keys, conformed, reasons, last) if last else None
    if isinstance(resumed, ShotResult):
        return resumed
    if ctx.cache is not None and shot.shot_id not in ctx.regenerate:
        hit = _cached(ctx, shot, keys, conformed)
        if hit is not None:
            return await hit
    for opt, key in zip(shot.options, keys, strict=True):
        # tries already made on this option in this folder (earlier sessions, early submit)
        earlier = _tries_used(ctx, shot, key)
        if any(_final(a.failure_reason) for a in earlier):
            reasons.extend(a.failure_reason or "" for a in earlier if _final(a.failure_reason))
            continue
        for _ in range(max(0, 1 + shot.retries - len(earlier))):
            result = await _attempt(ctx, shot, opt, key, conformed, reasons)
            if isinstance(result, ShotResult):
                return result
            if reasons and _final(reasons[-1]):
                break
        if ctx.ledger.stopped():
            break
    if not reasons:
        tried = _take_rows(ctx, shot)
        reasons = [a.failure_reason for a in tried if a.failure_reason] or ["no option could run"]
        reasons.append("every option was tried in this run folder; --regenerate "
                       f"{shot.shot_id} or a new --out tries again")
    status = ShotStatus.SKIPPED if all(r.startswith("budget") for r in reasons) else ShotStatus.FAILED
    return ShotResult(shot.shot_id, status, reason="; ".join(reasons))


def _tries_used(ctx: RunContext, shot: ShotPlan, key: str) -> list[Attempt]:
    """The tries already made on an option in this folder that count against its retries.
    `--regenerate SHOT` asks for new tries whatever was made before, and
    `--resubmit-unconfirmed` for a new try in place of each unconfirmed one (the old rows stay
    counted as money): neither is refused for want of retries, `retries: 0` included."""
    if shot.shot_id in ctx.regenerate:
        return []
    return [a for a in _take_rows(ctx, shot) if a.cache_key == key
            and a.status not in NOT_ATTEMPTS
            and not (ctx.resubmit_unconfirmed and a.status == Status.UNCONFIRMED)]


def _cached(ctx: RunContext, shot: ShotPlan, keys: list[str], conformed: Path) -> Any:
    """The highest-priority option's cached clip, as an awaitable finish, or None. The local
    animatic (a placeholder) never stands in for a vendor option listed before it: a later run
    tries that option again. A paid fallback's clip is reused (it was paid for)."""
    vendor_before = False
    for opt, key in zip(shot.options, keys, strict=True):
        placeholder = opt.provider == "local"
        if not (placeholder and vendor_before):
            hit = ctx.cache.get(key) if ctx.cache is not None else None
            if hit is not None:
                first = shot.options[0]
                note = None if opt is first else (
                    f"reused the cached clip of fallback {opt.label} (paid in an earlier run); "
                    f"{first.label} has none")
                row = ctx.journal.record(
                    shot_id=shot.shot_id, attempt=ctx.journal.next_attempt(shot.shot_id, shot.take),
                    take=shot.take, provider=opt.provider, model=opt.model, status=Status.CACHED,
                    cache_key=key,
                    job_id=hit.job_id, estimated_usd=opt.estimate_usd, actual_usd=0.0,
                    cost_source="none", clip_path=str(hit.path), failure_reason=note)
                ctx.log(f"{shot.shot_id}: reused cached clip from {opt.label} (job {hit.job_id})")
                ctx.event(shot, "cached", opt.label)
                return _finish(ctx, shot, opt, row, hit.path, conformed, ShotStatus.CACHED)
        vendor_before = vendor_before or not placeholder
    return None


@dataclass
class _Sent:
    """A submit the vendor answered with a job id."""

    provider: Provider
    job: Job
    row: int
    reservation: Reservation
    started: float


async def _attempt(ctx: RunContext, shot: ShotPlan, opt: Option, key: str, conformed: Path,
                   reasons: list[str]) -> Outcome:
    journal, ledger = ctx.journal, ctx.ledger
    base = _base(ctx, shot, opt)
    if ledger.stopped():
        reasons.append("budget: run stopped (budget.on_exhausted: stop)")
        journal.record(**base, status=Status.SKIPPED, estimated_usd=opt.estimate_usd,
                       cache_key=key, failure_reason=reasons[-1])
        return TRY_ON
    try:
        reservation = await _reserve(ctx, shot, opt)
    except BudgetError as exc:
        reasons.append(f"budget: {exc}")
        journal.record(**base, status=Status.SKIPPED, estimated_usd=opt.estimate_usd,
                       cache_key=key, failure_reason=reasons[-1])
        ctx.log(f"{shot.shot_id}: skipped {opt.label}: {exc}")
        ctx.event(shot, "skipped", f"{opt.label}: budget")
        return TRY_ON
    async with ctx.slot(opt.provider):
        sent = await _send(ctx, shot, opt, key, base, reservation, reasons)
        if not isinstance(sent, _Sent):
            return sent
        return await _complete(ctx, shot, opt, key, sent.provider, sent.job, sent.row,
                               sent.reservation, conformed, reasons, sent.started)


async def submit_first(ctx: RunContext, shot: ShotPlan) -> list[str] | None:
    """Only the first attempt's submit, for flows/run/early.py: None when nothing was sent (the
    budget said no: the flow decides and records that), else the reasons it failed (empty:
    the job is at the vendor, journaled as submitted, for the flow to poll). The journal
    rows it writes are what the flow counts as this option's first try."""
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
        await _send(ctx, shot, opt, clip_key(ctx, shot, opt), _base(ctx, shot, opt),
                    reservation, reasons)
    return reasons


def _base(ctx: RunContext, shot: ShotPlan, opt: Option) -> dict[str, Any]:
    """The journal fields every row of a new attempt starts with."""
    return dict(shot_id=shot.shot_id, attempt=ctx.journal.next_attempt(shot.shot_id, shot.take),
                provider=opt.provider, model=opt.model, take=shot.take)


async def _reserve(ctx: RunContext, shot: ShotPlan, opt: Option) -> Reservation:
    """Reserve the option's estimate plus the margin (budget.estimate_margin); a refusal
    under `on_exhausted: stop` stops every new submission of the run before BudgetError goes
    on to the caller."""
    try:
        return await ctx.ledger.reserve(shot.shot_id, opt.reserve_usd)
    except BudgetError:
        if ctx.plan.storyboard.budget.on_exhausted == "stop":
            ctx.ledger.stop(f"shot {shot.shot_id} could not reserve ${opt.reserve_usd:.2f}")
        raise


async def _send(ctx: RunContext, shot: ShotPlan, opt: Option, key: str, base: dict[str, Any],
                reservation: Reservation, reasons: list[str]) -> _Sent | Outcome:
    """Journal the intent, submit, journal the job id. Called with the provider's slot held:
    the intent is written once the slot is ours, right before the POST, so a run killed while
    queueing for a slot leaves no false "unconfirmed" behind, and timings exclude the queue."""
    journal, ledger = ctx.journal, ctx.ledger
    provider = ctx.provider(opt.provider)
    req = shot.request(opt, ctx.plan)
    await ledger.commit(reservation, base["attempt"], take=base["take"])  # counted from here on
    row = journal.intent(**base, cache_key=key, estimated_usd=opt.estimate_usd,
                         reserved_usd=reservation.amount_usd)
    started = time.monotonic()
    try:
        job = await provider.submit(req)
    except ProviderError as exc:
        exc.at(shot_id=shot.shot_id)
        if not exc.may_have_charged:
            ledger.release(reservation)  # refused before acceptance: nothing was charged
            return _failed(ctx, row, shot, exc, reasons)
        if exc.job_id and provider.names_its_jobs:  # Runware: ask about the job we named
            job = Job(provider=opt.provider, job_id=exc.job_id, data={"recovered": True})
            journal.submitted(row, job.job_id, job.data)
            ctx.log(f"{shot.shot_id}: submit answer lost; polling job {job.job_id} we named")
            return _Sent(provider, job, row, reservation, started)
        # the money may be gone: it stays reserved (the cap counts it) and is reported at
        # the estimate; never resent without --resubmit-unconfirmed
        asked = f" (vendor request id {exc.job_id})" if exc.job_id else ""
        journal.status(row, Status.UNCONFIRMED, failure_reason=f"unconfirmed: {exc.message}{asked}",
                       actual_usd=reservation.amount_usd, cost_source="estimate")
        ctx.log(f"{shot.shot_id}: {exc} - not resubmitted; check the vendor's dashboard")
        return ShotResult(shot.shot_id, ShotStatus.UNCONFIRMED, reason=str(exc))
    journal.submitted(row, job.job_id, job.data)
    ctx.log(f"{shot.shot_id}: submitted to {opt.label}, job {job.job_id}")
    ctx.event(shot, "submitted", opt.label)
    return _Sent(provider, job, row, reservation, started)


async def _complete(ctx: RunContext, shot: ShotPlan, opt: Option, key: str, provider: Provider,
                    job: Job, row: int, reservation: Reservation, conformed: Path,
                    reasons: list[str], started: float) -> Outcome:
    """Wait for a submitted job, settle its cost, then download it."""
    journal = ctx.journal
    timings: dict[str, float] = {}

    def seen(p: Poll) -> None:
        if p.state == "running" and "queued_s" not in timings:
            timings["queued_s"] = round(time.monotonic() - started, 3)
        if p.state in ("queued", "running"):
            ctx.event(shot, "running" if p.state == "running" else "submitted", opt.label,
                      p.progress)

    try:
        done = await provider.wait(job, on_status=seen)
    except JobTimeoutError as exc:
        exc.at(shot_id=shot.shot_id, job_id=job.job_id)
        requested, answer = await _stop(provider, job)
        if answer is not None and answer.state == "succeeded":
            # it finished while we asked it to stop: paid, and the clip is as good as any
            actual = _settle_success(ctx.ledger, reservation, opt.provider, answer, journal, row)
            ctx.log(f"{shot.shot_id}: {opt.label} job {job.job_id} finished at its deadline, "
                    f"${actual:.4f}")
            return await _download(ctx, shot, opt, key, provider, job, answer, row, conformed,
                                   reasons)
        if answer is not None:  # the vendor says the job ended unfinished: its billing rule
            _charge_failure(ctx.ledger, reservation, opt.info.charges_failures, journal, row,
                            answer.cost_usd, status=Status.CANCELED)
            return _failed(ctx, row, shot, exc, reasons, status=Status.CANCELED)
        # no final answer: the vendor keeps working (a cancel request only signals the app)
        # and may bill, so the money stays held and counted at risk; the same --out (or
        # `storyreel reconcile`) settles it later
        status, what = (Status.CANCEL_REQUESTED, "asked the vendor to cancel it, which it has "
                        "not confirmed") if requested else (
                        Status.ABANDONED, "the vendor could not cancel it")
        journal.status(row, status, actual_usd=reservation.amount_usd, cost_source=None,
                       failure_reason=(f"timeout: job {job.job_id} passed its deadline; {what}, "
                                       "so it may still bill (held at its reservation)"))
        reasons.append(f"timeout: {exc}")
        ctx.log(f"{shot.shot_id}: job {job.job_id} on {opt.label} passed its deadline; {what}; "
                "its reservation stays held")
        return TRY_ON
    except ProviderError as exc:
        exc.at(shot_id=shot.shot_id, job_id=job.job_id)
        if isinstance(exc, NotFoundError) and job.data.get("recovered"):
            # the job we named never reached the vendor: nothing was charged
            ctx.ledger.release(reservation)
            journal.status(row, Status.FAILED, actual_usd=0.0, cost_source="none")
            return _failed(ctx, row, shot, exc, reasons)
        # we lost track of a job that may still finish and be charged: no new attempt (that
        # could pay twice); the money stays held, reported at the estimate, and running the
        # same --out again resumes polling it
        journal.status(row, Status.LOST, failure_reason=f"{exc.kind}: {exc.message}",
                       actual_usd=reservation.amount_usd, cost_source="estimate")
        ctx.log(f"{shot.shot_id}: lost track of job {job.job_id}: {exc}; rerun with the same "
                "--out to resume it")
        return ShotResult(shot.shot_id, ShotStatus.FAILED, reason=(
            f"lost track of job {job.job_id} on {opt.label} ({exc.kind}); rerun the same --out "
            "to resume it"))
    timings["generation_s"] = round(time.monotonic() - started, 3)
    if done.error is not None or done.state != "succeeded":
        _charge_failure(ctx.ledger, reservation, opt.info.charges_failures, journal, row,
                        done.cost_usd)
        err = done.error or ProviderError(f"job ended {done.state}", provider=opt.provider)
        return _failed(ctx, row, shot, err.at(job_id=job.job_id), reasons,
                       status=Status.CANCELED if done.state == "canceled" else Status.FAILED)
    actual = _settle_success(ctx.ledger, reservation, opt.provider, done, journal, row, timings)
    ctx.log(f"{shot.shot_id}: {opt.label} job {job.job_id} finished in "
            f"{timings['generation_s']:.1f} s, ${actual:.4f}")
    return await _download(ctx, shot, opt, key, provider, job, done, row, conformed, reasons)


def cancel_grace_s() -> float:
    """How long a job past its deadline is watched after a cancel request for the vendor's
    word that it stopped (STORYREEL_CANCEL_GRACE_S)."""
    return max(0.01, float(os.environ.get("STORYREEL_CANCEL_GRACE_S", "30")))


async def _stop(provider: Provider, job: Job) -> tuple[bool, Poll | None]:
    """Ask the vendor to stop a job past its deadline, then wait briefly for its final word:
    (whether it took the request, the job's final state or None). A request is not a cancel:
    fal answers a running request with CANCELLATION_REQUESTED, which only signals the app,
    and the app may finish and bill."""
    if not provider.supports_cancel:
        return False, None
    try:
        requested = bool(await provider.cancel(job))
    except ProviderError:
        requested = False
    try:  # also when nothing was left to stop (fal's ALREADY_COMPLETED): how did it end?
        return requested, await provider.wait(job, deadline=cancel_grace_s())
    except ProviderError:
        return requested, None


def _settle_success(ledger: Ledger, reservation: Reservation, provider: str, done: Poll,
                    journal: Journal, row: int, timings: dict[str, float] | None = None) -> float:
    """The vendor has charged: settle before anything else can go wrong, at the vendor's own
    figure where it gives one, else at the estimate (the margin was only held, not spent)."""
    if done.cost_usd is not None:
        actual, source = done.cost_usd, done.cost_source or "vendor"
    else:
        actual, source = _estimate_of(journal, row, reservation), "estimate"
    if provider == "local":
        source = "none"
    ledger.settle(reservation, actual)
    journal.status(row, Status.SUCCEEDED, actual_usd=actual, cost_source=source, **(timings or {}))
    return actual


def _estimate_of(journal: Journal, row: int, reservation: Reservation) -> float:
    """A row's point estimate (its reservation holds the margin on top), never above what
    was held for it."""
    estimate = journal.get(row).estimated_usd
    return reservation.amount_usd if estimate is None else min(estimate, reservation.amount_usd)


def _raw_path(ctx: RunContext, shot_id: str, row: int) -> Path:
    """Local names come from what we control (shot id, journal row), never a vendor's id."""
    return raw_path(ctx.run_dir, shot_id, row)


def raw_path(run_dir: Path, shot_id: str, row: int) -> Path:
    return run_dir / "raw" / f"{shot_id}-r{row}.mp4"


async def _download(ctx: RunContext, shot: ShotPlan, opt: Option, key: str, provider: Provider,
                    job: Job, done: Poll, row: int, conformed: Path, reasons: list[str]) -> Outcome:
    raw = _raw_path(ctx, shot.shot_id, row)
    ctx.event(shot, "downloading", opt.label)
    t0 = time.monotonic()
    try:
        info = await _fetch_verified(provider, job, done, raw, shot.duration)
    except ProviderError as exc:
        # paid but unusable: the cost stays reported; the next attempt may pay again
        return _failed(ctx, row, shot, exc.at(job_id=job.job_id), reasons)
    ctx.journal.status(row, Status.DOWNLOADED, clip_path=str(raw),
                       download_s=round(time.monotonic() - t0, 3))
    digest = None
    if ctx.cache is not None:  # hashing and copying a 1080p clip: off the event loop
        entry = await asyncio.to_thread(
            ctx.cache.put, key, raw, provider=opt.provider, model=opt.model,
            job_id=job.job_id, cost_usd=ctx.journal.get(row).actual_usd)
        digest = entry.sha256
    return await _finish(ctx, shot, opt, row, raw, conformed, ShotStatus.DONE, source=info,
                         sha256=digest)


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


def _charge_failure(ledger: Ledger, reservation: Reservation, charges_failures: bool,
                    journal: Journal, row: int, vendor_cost: float | None = None,
                    status: Status = Status.FAILED) -> None:
    """Failed jobs are charged per the vendor's billing rule in the catalog."""
    if charges_failures or vendor_cost:
        cost = vendor_cost if vendor_cost is not None else _estimate_of(journal, row, reservation)
        ledger.settle(reservation, cost)
        journal.status(row, status, actual_usd=cost,
                       cost_source="vendor" if vendor_cost is not None else "estimate")
    else:
        ledger.release(reservation)
        journal.status(row, status, actual_usd=0.0, cost_source="none")


def _failed(ctx: RunContext, row: int, shot: ShotPlan, exc: ProviderError, reasons: list[str],
            status: Status = Status.FAILED) -> Outcome:
    """Journal and remember why an attempt failed, then try on."""
    exc.at(shot_id=shot.shot_id)
    reasons.append(f"{exc.kind}: {exc}")
    ctx.journal.status(row, status, failure_reason=f"{exc.kind}: {exc.message}")
    ctx.log(f"{shot.shot_id}: {exc}")
    ctx.event(shot, "failed", f"{exc.kind}: {exc.message}")
    return TRY_ON


async def _finish(ctx: RunContext, shot: ShotPlan, opt: Option, row: int, raw: Path,
                  conformed: Path, status: ShotStatus, source: VideoInfo | None = None,
                  sha256: str | None = None) -> ShotResult:
    conformed.parent.mkdir(parents=True, exist_ok=True)
    # conformed clips are cached next to the raw ones: a re-run re-encodes only what changed
    cache_dir = ctx.cache.root / "conformed" if ctx.cache is not None else None
    await conform(raw, conformed, ctx.fmt, shot.duration, cache_dir=cache_dir, source=source,
                  sha256=sha256)
    ctx.journal.status(row, Status.DONE if status == ShotStatus.DONE else Status.CACHED,
                       conformed_path=str(conformed))
    ctx.event(shot, "conformed" if status == ShotStatus.DONE else "cached", opt.label)
    return ShotResult(shot.shot_id, status, conformed=conformed, option=opt.label)


async def _resume(ctx: RunContext, shot: ShotPlan, keys: list[str], conformed: Path,
                  reasons: list[str], last: Attempt) -> Outcome | None:
    """Pick up what an earlier session of this folder did for the shot. Only attempts made
    for the shot as it is planned now count (the journal's cache_key is the plan's clip key):
    an edited shot gets fresh attempts."""
    opt = shot.options[keys.index(last.cache_key)]  # type: ignore[arg-type]
    again = shot.shot_id in ctx.regenerate
    # a clip conformed for another format (same clip key, e.g. fit: pad -> crop) is conformed
    # again from its download: the conformed file's name carries its format
    if last.status in (Status.DONE, Status.CACHED) and not again and last.conformed_path \
            and Path(last.conformed_path).name == conformed.name \
            and Path(last.conformed_path).exists():
        return ShotResult(shot.shot_id, ShotStatus(last.status), conformed=Path(last.conformed_path),
                          option=opt.label)
    if last.status in (Status.DOWNLOADED, Status.DONE, Status.CACHED) and not again \
            and last.clip_path and Path(last.clip_path).exists():
        ctx.log(f"{shot.shot_id}: resuming from the downloaded clip of job {last.job_id}")
        return await _finish(ctx, shot, opt, last.id, Path(last.clip_path), conformed,
                             ShotStatus.CACHED if last.status == Status.CACHED else ShotStatus.DONE)
    if last.status in (Status.INTENT, Status.UNCONFIRMED):
        if last.status == Status.INTENT:
            _unanswered(ctx, last)
        if ctx.resubmit_unconfirmed:
            return None  # the person checked the dashboard; the old row stays counted
        ctx.log(f"{shot.shot_id}: attempt {last.attempt} on {opt.label} is unconfirmed (the "
                "submit may have reached the vendor); not resubmitted without "
                "--resubmit-unconfirmed")
        return ShotResult(shot.shot_id, ShotStatus.UNCONFIRMED,
                          reason=f"unconfirmed submit to {opt.label} (attempt {last.attempt})")
    if last.status in (*AT_VENDOR, Status.SUCCEEDED) and last.job_id:
        ctx.log(f"{shot.shot_id}: resuming job {last.job_id} on {opt.label} (not resubmitted)")
        ctx.event(shot, "submitted", f"{opt.label} (resumed)")
        provider = ctx.provider(opt.provider)
        job = Job(provider=opt.provider, job_id=last.job_id, data=last.job_data or {})
        async with ctx.slot(opt.provider):
            if last.status == Status.SUCCEEDED:  # already settled before the interruption
                done = await provider.wait(job)
                return await _download(ctx, shot, opt, last.cache_key or keys[0], provider, job,
                                       done, last.id, conformed, reasons)
            # committed money: held since the ledger was made (run.ledger_for)
            reservation = ctx.ledger.held(last.id) or ctx.ledger.hold(
                shot.shot_id, last.reserved_usd or 0.0, row=last.id, attempt=last.attempt,
                take=last.take)
            return await _complete(ctx, shot, opt, last.cache_key or keys[0], provider, job,
                                   last.id, reservation, conformed, reasons, time.monotonic())
    return None


def _unanswered(ctx: RunContext, a: Attempt) -> None:
    """An intent row from a session that was killed between intent and the vendor's answer."""
    ctx.journal.status(a.id, Status.UNCONFIRMED, failure_reason=(
        "unconfirmed: the run stopped between intent and the vendor's answer"),
        actual_usd=a.reserved_usd or 0.0, cost_source="estimate")


async def settle_orphans(ctx: RunContext) -> None:
    """Jobs at a vendor for shots the storyboard no longer has (one deleted after a kill):
    settled like any other job we hold money for, never left behind at $0."""
    planned = {s.shot_id for s in ctx.plan.shots}
    await asyncio.gather(*(_settle_other(ctx, a) for a in ctx.journal.attempts()
                           if a.shot_id not in planned and a.status in AT_VENDOR and a.job_id))


async def _settle_other(ctx: RunContext, a: Attempt) -> None:
    """A job this session does not continue (an earlier plan of the shot, or one abandoned
    before a later try): wait for it, settle its money at the real outcome, and cache its
    clip under its own key."""
    reservation = ctx.ledger.held(a.id) or ctx.ledger.hold(
        a.shot_id, a.reserved_usd or 0.0, row=a.id, attempt=a.attempt, take=a.take)
    try:
        provider = ctx.provider(a.provider)
    except KeyError:  # no adapter any more: the money stays held and reported
        return
    async with ctx.slot(a.provider):
        await settle_job(a, reservation, provider=provider, journal=ctx.journal,
                         ledger=ctx.ledger, cache=ctx.cache, run_dir=ctx.run_dir, log=ctx.log)


async def settle_job(a: Attempt, reservation: Reservation, *, provider: Provider,
                     journal: Journal, ledger: Ledger, cache: ClipCache | None, run_dir: Path,
                     log: Callable[[str], None], deadline: float | None = None) -> Status:
    """Learn what the vendor did with a job we hold money for, and book it: succeeded ->
    settled (and its clip downloaded into the cache under the attempt's key), failed -> per
    the billing rule, still working or unreachable -> unchanged (held and at risk)."""
    assert a.job_id is not None
    info = find_model(a.provider, a.model)
    job = Job(provider=a.provider, job_id=a.job_id, data=a.job_data or {})
    try:
        done = await provider.wait(job, deadline=deadline)
    except ProviderError as exc:
        log(f"{a.shot_id}: job {a.job_id} on {a.provider} not settled ({exc.kind}); its "
            "estimate stays counted")
        return Status(a.status)
    if done.error is not None or done.state != "succeeded":
        _charge_failure(ledger, reservation, bool(info and info.charges_failures), journal, a.id,
                        done.cost_usd,
                        status=Status.CANCELED if done.state == "canceled" else Status.FAILED)
        return Status.FAILED
    _settle_success(ledger, reservation, a.provider, done, journal, a.id)
    if cache is not None and a.cache_key:
        raw = raw_path(run_dir, a.shot_id, a.id)
        with contextlib.suppress(ProviderError):
            await _fetch_verified(provider, job, done, raw, 0.0)
            journal.status(a.id, Status.DOWNLOADED, clip_path=str(raw))
            cache.put(a.cache_key, raw, provider=a.provider, model=a.model, job_id=a.job_id,
                      cost_usd=journal.get(a.id).actual_usd)
    return Status.SUCCEEDED


__all__ = ["RunContext", "ShotResult", "TRY_ON", "render_shot", "settle_job", "settle_orphans"]
