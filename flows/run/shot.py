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

A `Take` is one take of a shot in this session: it resumes, asks the cache, then makes a `Try`
per attempt on the options in order. Each step of a `Try` (send, complete, download) returns
the shot's `ShotResult` when that decides it, else a `Failed` whose `Verdict` (from the
error's kind) says whether the same request would fail again. `Held` books a job's money and
journal row; `settle_job` settles jobs outside a take's own tries (and for reconcile).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.media.conform import conform_measured
from flows.media.probe import VideoInfo, verify_clip
from flows.money.cache import ClipCache
from flows.money.journal import Attempt, Journal
from flows.money.ledger import Ledger, Reservation
from flows.money.status import AT_VENDOR, FINAL, NOT_ATTEMPTS, ShotStatus, Status, Verdict
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


@dataclass(frozen=True)
class Failed:
    """A try that ended without a clip while the shot is not decided: the shot tries on.
    `reason` is what the shot's result says about it."""

    reason: str
    verdict: Verdict | None = None  # why, where the same request would fail the same way

    @property
    def final(self) -> bool:
        """The same request to the same vendor would fail the same way: no retry there."""
        return self.verdict in FINAL

    @classmethod
    def of(cls, exc: ProviderError) -> Failed:
        return cls(f"{exc.kind}: {exc}", _verdict(exc.kind))

    @classmethod
    def budget(cls, why: str) -> Failed:
        return cls(f"budget: {why}", Verdict.BUDGET)

    @classmethod
    def check(cls, why: str) -> Failed:
        """The clip came back (and was paid) but failed a clip check: another job may do."""
        return cls(f"check: {why}", Verdict.CHECK)

    @classmethod
    def of_row(cls, a: Attempt) -> Failed:
        """An earlier session's failure, as the journal keeps it: the verdict is the first
        word of its failure_reason (cost.csv's column)."""
        reason = a.failure_reason or ""
        return cls(reason, _verdict(reason.split(":", 1)[0]))


def _verdict(kind: str) -> Verdict | None:
    try:
        return Verdict(kind)
    except ValueError:
        return None


# what a step of a try returns: the shot decided, or a failure after which it tries on
Outcome = ShotResult | Failed


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
    take = Take(ctx, shot)
    history = take.rows()
    for a in history:  # an earlier plan's submit that never got an answer: it stays counted
        if a.status == Status.INTENT and a.cache_key not in take.keys:
            _unanswered(ctx, a)
    last = _to_resume([a for a in history if a.cache_key in take.keys])
    # jobs at a vendor that this session does not continue (an edited shot's, or one
    # abandoned before a later try) are settled beside the shot's own work, never dropped
    others = [a for a in history if a.status in AT_VENDOR and a.job_id
              and (last is None or a.id != last.id)]
    if others:
        fresh, *_ = await asyncio.gather(take.render(last),
                                         *(_settle_other(ctx, a) for a in others))
        return fresh
    return await take.render(last)


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


def _conformed(ctx: RunContext, shot: ShotPlan) -> Path:
    return ctx.run_dir / "clips" / conformed_name(ctx.plan, shot)


@dataclass
class Take:
    """One take of a shot in this session: what the journal says already happened is picked
    up, then the cache is asked, then the shot's options are tried in order, each with its
    retries as counted in the journal."""

    ctx: RunContext
    shot: ShotPlan
    keys: list[str] = field(init=False)  # each option's clip key: once per take, not per step
    conformed: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conformed = _conformed(self.ctx, self.shot)
        self.keys = [clip_key(self.ctx, self.shot, opt) for opt in self.shot.options]

    def rows(self) -> list[Attempt]:
        return [a for a in self.ctx.journal.attempts(self.shot.shot_id) if a.take == self.shot.take]

    async def render(self, last: Attempt | None) -> ShotResult:
        ctx, shot = self.ctx, self.shot
        failures: list[Failed] = []
        resumed = await self.resume(last) if last else None
        if isinstance(resumed, ShotResult):
            return resumed
        if resumed is not None:
            failures.append(resumed)
        if ctx.cache is not None and shot.shot_id not in ctx.regenerate:
            hit = await self.cached()
            if hit is not None:
                return hit
        for opt, key in zip(shot.options, self.keys, strict=True):
            # tries already made on this option in this folder (earlier sessions, early submit)
            earlier = self.tries_used(key)
            finals = [f for f in map(Failed.of_row, earlier) if f.final]
            if finals:
                failures.extend(finals)
                continue
            for _ in range(max(0, 1 + shot.retries - len(earlier))):
                outcome = await self.new_try(opt, key).run()
                if isinstance(outcome, ShotResult):
                    return outcome
                failures.append(outcome)
                if outcome.final:
                    break
            if ctx.ledger.stopped():
                break
        return self.gave_up(failures)

    def gave_up(self, failures: list[Failed]) -> ShotResult:
        """No clip: skipped when the budget refused every try, else failed."""
        shot = self.shot
        if not failures:
            reasons = [a.failure_reason for a in self.rows() if a.failure_reason] \
                or ["no option could run"]
            reasons.append("every option was tried in this run folder; --regenerate "
                           f"{shot.shot_id} or a new --out tries again")
            return ShotResult(shot.shot_id, ShotStatus.FAILED, reason="; ".join(reasons))
        budget = all(f.verdict == Verdict.BUDGET for f in failures)
        return ShotResult(shot.shot_id, ShotStatus.SKIPPED if budget else ShotStatus.FAILED,
                          reason="; ".join(f.reason for f in failures))

    def tries_used(self, key: str) -> list[Attempt]:
        """The tries already made on an option in this folder that count against its retries.
        `--regenerate SHOT` asks for new tries whatever was made before, and
        `--resubmit-unconfirmed` for a new try in place of each unconfirmed one (the old rows
        stay counted as money): neither is refused for want of retries, `retries: 0` included."""
        ctx = self.ctx
        if self.shot.shot_id in ctx.regenerate:
            return []
        return [a for a in self.rows() if a.cache_key == key
                and a.status not in NOT_ATTEMPTS
                and not (ctx.resubmit_unconfirmed and a.status == Status.UNCONFIRMED)]

    def new_try(self, opt: Option, key: str) -> Try:
        attempt = self.ctx.journal.next_attempt(self.shot.shot_id, self.shot.take)
        return Try(self.ctx, self.shot, opt, key, attempt)

    async def cached(self) -> ShotResult | None:
        """The highest-priority option's cached clip, finished, or None. The local animatic (a
        placeholder) never stands in for a vendor option listed before it: a later run tries
        that option again. A paid fallback's clip is reused (it was paid for)."""
        ctx, shot = self.ctx, self.shot
        vendor_before = False
        for opt, key in zip(shot.options, self.keys, strict=True):
            placeholder = opt.provider == "local"
            if not (placeholder and vendor_before):
                hit = await ctx.cache.aget(key) if ctx.cache is not None else None
                if hit is not None:
                    first = shot.options[0]
                    note = None if opt is first else (
                        f"reused the cached clip of fallback {opt.label} (paid in an earlier "
                        f"run); {first.label} has none")
                    t = self.new_try(opt, key)
                    t.row = ctx.journal.record(
                        **t.fields(), status=Status.CACHED, cache_key=key,
                        job_id=hit.job_id, estimated_usd=opt.estimate_usd, actual_usd=0.0,
                        cost_source="none", clip_path=str(hit.path), failure_reason=note)
                    ctx.log(f"{shot.shot_id}: reused cached clip from {opt.label} (job "
                            f"{hit.job_id})")
                    ctx.event(shot, "cached", opt.label)
                    done = await t.finish(hit.path, ShotStatus.CACHED, sha256=hit.sha256)
                    if isinstance(done, ShotResult):
                        return done
                    # the cached clip fails the checks: the next option's, else new tries
            vendor_before = vendor_before or not placeholder
        return None

    def resumed(self, last: Attempt, reservation: Reservation | None = None) -> Try:
        """The try an earlier session wrote as journal row `last`."""
        i = self.keys.index(last.cache_key)  # type: ignore[arg-type]
        opt = self.shot.options[i]
        job = Job(provider=opt.provider, job_id=last.job_id, data=last.job_data or {}) \
            if last.job_id else None
        return Try(self.ctx, self.shot, opt, self.keys[i], last.attempt,
                   reservation=reservation, row=last.id, job=job)

    async def resume(self, last: Attempt) -> Outcome | None:
        """Pick up what an earlier session of this folder did for the take. Only attempts made
        for the shot as it is planned now count (the journal's cache_key is the plan's clip
        key): an edited shot gets fresh attempts."""
        ctx, shot, conformed = self.ctx, self.shot, self.conformed
        opt = shot.options[self.keys.index(last.cache_key)]  # type: ignore[arg-type]
        again = shot.shot_id in ctx.regenerate
        # a clip conformed for another format (same clip key, e.g. fit: pad -> crop) is
        # conformed again from its download: the conformed file's name carries its format
        if last.status in (Status.DONE, Status.CACHED) and not again and last.conformed_path \
                and Path(last.conformed_path).name == conformed.name \
                and Path(last.conformed_path).exists():
            return ShotResult(shot.shot_id, ShotStatus(last.status),
                              conformed=Path(last.conformed_path), option=opt.label)
        if last.status in (Status.DOWNLOADED, Status.DONE, Status.CACHED) and not again \
                and last.clip_path and Path(last.clip_path).exists():
            ctx.log(f"{shot.shot_id}: resuming from the downloaded clip of job {last.job_id}")
            return await self.resumed(last).finish(
                Path(last.clip_path),
                ShotStatus.CACHED if last.status == Status.CACHED else ShotStatus.DONE)
        if last.status in (Status.DOWNLOADED, Status.DONE) and not again and last.job_id \
                and opt.provider != "local" and not (
                    ctx.cache is not None and ctx.cache.get(last.cache_key or "") is not None):
            # paid, but its clip is not on this disk (another worker's, a fresh container, a
            # cleaned folder): ask the vendor for the result again rather than pay for a new
            # job. Vendors keep results for a while; one that no longer has it fails this take
            # (its cost stays reported) and the shot tries on as after any failed download. A
            # clip in the clip cache is taken from there instead (render asks it next).
            ctx.log(f"{shot.shot_id}: the clip of job {last.job_id} is not here; fetching the "
                    f"vendor's result again (not resubmitted)")
            t = self.resumed(last)
            async with ctx.slot(opt.provider):
                try:
                    done = await t.provider.wait(t.sent)
                except ProviderError as exc:
                    return t.fail(exc.at(job_id=last.job_id))
                return await t.download(done)
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
            async with ctx.slot(opt.provider):
                if last.status == Status.SUCCEEDED:  # already settled before the interruption
                    t = self.resumed(last)
                    return await t.download(await t.provider.wait(t.sent))
                # committed money: held since the ledger was made (run.ledger_for)
                reservation = ctx.ledger.held(last.id) or ctx.ledger.hold(
                    shot.shot_id, last.reserved_usd or 0.0, row=last.id, attempt=last.attempt,
                    take=last.take)
                return await self.resumed(last, reservation).complete()
        return None


@dataclass
class Try:
    """One attempt at a take on one option, from its reservation to its conformed clip: its
    journal row, the money held for it and the vendor's job are filled in as it goes."""

    ctx: RunContext
    shot: ShotPlan
    opt: Option
    key: str  # the option's clip key for the shot (the journal's cache_key)
    attempt: int  # its journal attempt number
    reservation: Reservation | None = None  # once reserved
    row: int | None = None  # its journal row, once written
    job: Job | None = None  # once the vendor took it
    started: float = field(default_factory=time.monotonic)  # when its submit left

    @property
    def provider(self) -> Provider:
        return self.ctx.provider(self.opt.provider)

    @property
    def sent(self) -> Job:
        assert self.job is not None, "the try has no job at a vendor"
        return self.job

    @property
    def held(self) -> Held:
        """Its journal row and the money held for it, for settling."""
        assert self.row is not None and self.reservation is not None, "the try holds no money"
        return Held(self.ctx.journal, self.ctx.ledger, self.row, self.reservation)

    def fields(self) -> dict[str, Any]:
        """The journal fields every row of the try starts with."""
        return dict(shot_id=self.shot.shot_id, attempt=self.attempt, provider=self.opt.provider,
                    model=self.opt.model, take=self.shot.take)

    async def run(self) -> Outcome:
        """Reserve, submit and complete, holding the provider's slot from the submit on."""
        ctx, shot, opt = self.ctx, self.shot, self.opt
        if ctx.ledger.stopped():
            return self.skipped(Failed.budget("run stopped (budget.on_exhausted: stop)"))
        try:
            await self.reserve()
        except BudgetError as exc:
            failed = self.skipped(Failed.budget(str(exc)))
            ctx.log(f"{shot.shot_id}: skipped {opt.label}: {exc}")
            ctx.event(shot, "skipped", f"{opt.label}: budget")
            return failed
        async with ctx.slot(opt.provider):
            refused = await self.send()
            return refused if refused is not None else await self.complete()

    def skipped(self, failed: Failed) -> Failed:
        self.ctx.journal.record(**self.fields(), status=Status.SKIPPED,
                                estimated_usd=self.opt.estimate_usd, cache_key=self.key,
                                failure_reason=failed.reason)
        return failed

    async def reserve(self) -> Reservation:
        """Reserve the option's estimate plus the margin (budget.estimate_margin); a refusal
        under `on_exhausted: stop` stops every new submission of the run before BudgetError
        goes on to the caller."""
        ctx, shot, opt = self.ctx, self.shot, self.opt
        try:
            self.reservation = r = await ctx.ledger.reserve(shot.shot_id, opt.reserve_usd)
            return r
        except BudgetError:
            if ctx.plan.storyboard.budget.on_exhausted == "stop":
                ctx.ledger.stop(f"shot {shot.shot_id} could not reserve ${opt.reserve_usd:.2f}")
            raise

    async def send(self) -> Outcome | None:
        """Journal the intent, submit, journal the job id: None when the job is at the vendor,
        for `complete`. Called with the provider's slot held: the intent is written once the
        slot is ours, right before the POST, so a run killed while queueing for a slot leaves
        no false "unconfirmed" behind, and timings exclude the queue."""
        ctx, shot, opt, journal = self.ctx, self.shot, self.opt, self.ctx.journal
        reservation = self.reservation
        assert reservation is not None, "send before reserve"
        provider = self.provider
        req = shot.request(opt, ctx.plan)
        # a spend window counts it from here on
        await ctx.ledger.commit(reservation, self.attempt, take=shot.take)
        self.row = journal.intent(**self.fields(), cache_key=self.key,
                                  estimated_usd=opt.estimate_usd,
                                  reserved_usd=reservation.amount_usd)
        self.started = time.monotonic()
        try:
            job = await provider.submit(req)
        except ProviderError as exc:
            return self.submit_failed(exc.at(shot_id=shot.shot_id))
        self.job = job
        journal.submitted(self.row, job.job_id, job.data)
        ctx.log(f"{shot.shot_id}: submitted to {opt.label}, job {job.job_id}")
        ctx.event(shot, "submitted", opt.label)
        return None

    def submit_failed(self, exc: ProviderError) -> Outcome | None:
        """A submit that raised: refused (nothing charged), a job we named ourselves (None: it
        is polled), or one the vendor may have taken (unconfirmed: the money stays held)."""
        ctx, shot, opt, held = self.ctx, self.shot, self.opt, self.held
        if not exc.may_have_charged:
            ctx.ledger.release(held.reservation)  # refused before acceptance: nothing charged
            return self.fail(exc)
        if exc.job_id and self.provider.names_its_jobs:  # Runware: ask about the job we named
            self.job = Job(provider=opt.provider, job_id=exc.job_id, data={"recovered": True})
            ctx.journal.submitted(held.row, self.job.job_id, self.job.data)
            ctx.log(f"{shot.shot_id}: submit answer lost; polling job {self.job.job_id} we named")
            return None
        # the money may be gone: it stays reserved (the cap counts it) and is reported at
        # the estimate; never resent without --resubmit-unconfirmed
        asked = f" (vendor request id {exc.job_id})" if exc.job_id else ""
        ctx.journal.status(held.row, Status.UNCONFIRMED,
                           failure_reason=f"unconfirmed: {exc.message}{asked}",
                           actual_usd=held.reservation.amount_usd, cost_source="estimate")
        ctx.log(f"{shot.shot_id}: {exc} - not resubmitted; check the vendor's dashboard")
        return ShotResult(shot.shot_id, ShotStatus.UNCONFIRMED, reason=str(exc))

    async def complete(self) -> Outcome:
        """Wait for the submitted job, settle its cost, then download it."""
        ctx, shot, opt, job = self.ctx, self.shot, self.opt, self.sent
        timings: dict[str, float] = {}

        def seen(p: Poll) -> None:
            if p.state == "running" and "queued_s" not in timings:
                timings["queued_s"] = round(time.monotonic() - self.started, 3)
            if p.state in ("queued", "running"):
                ctx.event(shot, "running" if p.state == "running" else "submitted", opt.label,
                          p.progress)

        try:
            done = await self.provider.wait(job, on_status=seen)
        except JobTimeoutError as exc:
            exc.at(shot_id=shot.shot_id, job_id=job.job_id)
            return await self.past_deadline(exc)
        except ProviderError as exc:
            return self.lost(exc.at(shot_id=shot.shot_id, job_id=job.job_id))
        timings["generation_s"] = round(time.monotonic() - self.started, 3)
        if done.error is not None or done.state != "succeeded":
            self.charge(done.cost_usd)
            err = done.error or ProviderError(f"job ended {done.state}", provider=opt.provider)
            return self.fail(err.at(job_id=job.job_id),
                             Status.CANCELED if done.state == "canceled" else Status.FAILED)
        actual = self.settle(done, timings)
        ctx.log(f"{shot.shot_id}: {opt.label} job {job.job_id} finished in "
                f"{timings['generation_s']:.1f} s, ${actual:.4f}")
        return await self.download(done)

    async def past_deadline(self, exc: JobTimeoutError) -> Outcome:
        """The job passed its deadline: ask the vendor to stop it and book its last word."""
        ctx, shot, opt, job, held = self.ctx, self.shot, self.opt, self.sent, self.held
        requested, answer = await _stop(self.provider, job)
        if answer is not None and answer.state == "succeeded":
            # it finished while we asked it to stop: paid, and the clip is as good as any
            actual = self.settle(answer)
            ctx.log(f"{shot.shot_id}: {opt.label} job {job.job_id} finished at its deadline, "
                    f"${actual:.4f}")
            return await self.download(answer)
        if answer is not None:  # the vendor says the job ended unfinished: its billing rule
            self.charge(answer.cost_usd, Status.CANCELED)
            return self.fail(exc, Status.CANCELED)
        # no final answer: the vendor keeps working (a cancel request only signals the app)
        # and may bill, so the money stays held and counted at risk; the same --out (or
        # `storyreel reconcile`) settles it later
        status, what = (Status.CANCEL_REQUESTED, "asked the vendor to cancel it, which it has "
                        "not confirmed") if requested else (
                        Status.ABANDONED, "the vendor could not cancel it")
        ctx.journal.status(held.row, status, actual_usd=held.reservation.amount_usd,
                           cost_source=None,
                           failure_reason=(f"timeout: job {job.job_id} passed its deadline; "
                                           f"{what}, so it may still bill (held at its "
                                           "reservation)"))
        ctx.log(f"{shot.shot_id}: job {job.job_id} on {opt.label} passed its deadline; {what}; "
                "its reservation stays held")
        return Failed(f"timeout: {exc}")

    def lost(self, exc: ProviderError) -> Outcome:
        """Polling the job failed."""
        ctx, shot, opt, job, held = self.ctx, self.shot, self.opt, self.sent, self.held
        if isinstance(exc, NotFoundError) and job.data.get("recovered"):
            # the job we named never reached the vendor: nothing was charged
            ctx.ledger.release(held.reservation)
            ctx.journal.status(held.row, Status.FAILED, actual_usd=0.0, cost_source="none")
            return self.fail(exc)
        # we lost track of a job that may still finish and be charged: no new attempt (that
        # could pay twice); the money stays held, reported at the estimate, and running the
        # same --out again resumes polling it
        ctx.journal.status(held.row, Status.LOST, failure_reason=f"{exc.kind}: {exc.message}",
                           actual_usd=held.reservation.amount_usd, cost_source="estimate")
        ctx.log(f"{shot.shot_id}: lost track of job {job.job_id}: {exc}; rerun with the same "
                "--out to resume it")
        return ShotResult(shot.shot_id, ShotStatus.FAILED, reason=(
            f"lost track of job {job.job_id} on {opt.label} ({exc.kind}); rerun the same --out "
            "to resume it"))

    def settle(self, done: Poll, timings: dict[str, float] | None = None) -> float:
        """The vendor has charged: book it (Held.succeeded); what it cost."""
        return self.held.succeeded(done, self.opt.provider, timings)

    def charge(self, vendor_cost: float | None, status: Status = Status.FAILED) -> None:
        """The job ended without a clip: book it per the option's billing rule."""
        self.held.ended(self.opt.info.charges_failures, vendor_cost, status)

    async def download(self, done: Poll) -> Outcome:
        ctx, shot, opt, job = self.ctx, self.shot, self.opt, self.sent
        assert self.row is not None
        raw = raw_path(ctx.run_dir, shot.shot_id, self.row)
        ctx.event(shot, "downloading", opt.label)
        t0 = time.monotonic()
        try:
            info = await _fetch_verified(self.provider, job, done, raw, shot.duration)
        except ProviderError as exc:
            # paid but unusable: the cost stays reported; the next attempt may pay again
            return self.fail(exc.at(job_id=job.job_id))
        ctx.journal.status(self.row, Status.DOWNLOADED, clip_path=str(raw),
                           download_s=round(time.monotonic() - t0, 3))
        digest = None
        if ctx.cache is not None:  # hashing and copying a 1080p clip: off the event loop
            entry = await asyncio.to_thread(
                ctx.cache.put, self.key, raw, provider=opt.provider, model=opt.model,
                job_id=job.job_id, cost_usd=ctx.journal.get(self.row).actual_usd)
            digest = entry.sha256
        return await self.finish(raw, ShotStatus.DONE, source=info, sha256=digest)

    def fail(self, exc: ProviderError, status: Status = Status.FAILED) -> Failed:
        """Journal why the try failed; the shot tries on."""
        ctx, shot = self.ctx, self.shot
        assert self.row is not None
        exc.at(shot_id=shot.shot_id)
        failed = Failed.of(exc)
        ctx.journal.status(self.row, status, failure_reason=f"{exc.kind}: {exc.message}")
        ctx.log(f"{shot.shot_id}: {exc}")
        ctx.event(shot, "failed", f"{exc.kind}: {exc.message}")
        return failed

    async def finish(self, raw: Path, status: ShotStatus, source: VideoInfo | None = None,
                     sha256: str | None = None) -> Outcome:
        """Conform the clip for the cut, and check it in the same decode (flows/media/checks.py):
        a clip that fails is not cut in."""
        ctx, shot = self.ctx, self.shot
        assert self.row is not None
        conformed = _conformed(ctx, shot)
        conformed.parent.mkdir(parents=True, exist_ok=True)
        # conformed clips are cached next to the raw ones: a re-run re-encodes only what changed
        cache_dir = ctx.cache.root / "conformed" if ctx.cache is not None else None
        _, measures = await conform_measured(raw, conformed, ctx.fmt, shot.duration,
                                             cache_dir=cache_dir, source=source, sha256=sha256)
        problem = shot.checks.failure(measures, audio_asked=self.audio_asked())
        if problem is not None:
            conformed.unlink(missing_ok=True)
            return self.refused(problem, status, sha256)
        ctx.journal.status(self.row, Status.DONE if status == ShotStatus.DONE else Status.CACHED,
                           conformed_path=str(conformed))
        ctx.event(shot, "conformed" if status == ShotStatus.DONE else "cached", self.opt.label)
        return ShotResult(shot.shot_id, status, conformed=conformed, option=self.opt.label)

    def audio_asked(self) -> bool:
        """Whether the request asks the vendor for audio (the price's audio switch is on)."""
        info = self.opt.info
        return info.price.audio_on({**info.params, **self.shot.params})

    def refused(self, problem: str, status: ShotStatus, sha256: str | None) -> Failed:
        """The clip failed a check: the attempt stays booked at what it cost, with the reason;
        a clip reused from the cache (nothing paid) is skipped instead, so it takes none of the
        shot's retries. The clip leaves the cache either way: a new job's clip replaces it."""
        ctx, shot, opt = self.ctx, self.shot, self.opt
        assert self.row is not None
        failed = Failed.check(problem)
        if ctx.cache is not None and sha256:
            ctx.cache.forget(self.key, sha256)
        row_status = Status.SKIPPED if status == ShotStatus.CACHED else Status.FAILED
        ctx.journal.status(self.row, row_status, failure_reason=failed.reason)
        ctx.log(f"{shot.shot_id}: the clip from {opt.label} fails its checks: {problem}")
        ctx.event(shot, "failed", failed.reason)
        return failed


async def submit_first(ctx: RunContext, shot: ShotPlan) -> list[str] | None:
    """Only the first attempt's submit, for flows/run/early.py: None when nothing was sent (the
    budget said no: the flow decides and records that), else the reasons it failed (empty:
    the job is at the vendor, journaled as submitted, for the flow to poll). The journal
    rows it writes are what the flow counts as this option's first try."""
    opt = shot.options[0]
    if ctx.ledger.stopped():
        return None
    t = Try(ctx, shot, opt, clip_key(ctx, shot, opt),
            ctx.journal.next_attempt(shot.shot_id, shot.take))
    try:
        reservation = await t.reserve()  # with `stop`, no later shot goes early
    except BudgetError:
        return None
    if ctx.ledger.stopped():  # stopped while this one waited to reserve
        ctx.ledger.release(reservation)
        return None
    async with ctx.slot(opt.provider):
        refused = await t.send()
    return [refused.reason] if isinstance(refused, Failed) else []


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


@dataclass(frozen=True)
class Held:
    """A job's journal row and the money held for it: settling books both."""

    journal: Journal
    ledger: Ledger
    row: int
    reservation: Reservation

    def estimate(self) -> float:
        """The row's point estimate (its reservation holds the margin on top), never above
        what was held for it."""
        estimate = self.journal.get(self.row).estimated_usd
        held = self.reservation.amount_usd
        return held if estimate is None else min(estimate, held)

    def succeeded(self, done: Poll, provider: str, timings: dict[str, float] | None = None
                  ) -> float:
        """The vendor has charged: settle before anything else can go wrong, at the vendor's
        own figure where it gives one, else at the estimate (the margin was only held, not
        spent)."""
        if done.cost_usd is not None:
            actual, source = done.cost_usd, done.cost_source or "vendor"
        else:
            actual, source = self.estimate(), "estimate"
        if provider == "local":
            source = "none"
        self.ledger.settle(self.reservation, actual)
        self.journal.status(self.row, Status.SUCCEEDED, actual_usd=actual, cost_source=source,
                            **(timings or {}))
        return actual

    def ended(self, charges_failures: bool, vendor_cost: float | None,
              status: Status = Status.FAILED) -> None:
        """A job that ended without a clip is charged per the vendor's billing rule in the
        catalog."""
        if charges_failures or vendor_cost:
            cost = vendor_cost if vendor_cost is not None else self.estimate()
            self.ledger.settle(self.reservation, cost)
            self.journal.status(self.row, status, actual_usd=cost,
                                cost_source="vendor" if vendor_cost is not None else "estimate")
        else:
            self.ledger.release(self.reservation)
            self.journal.status(self.row, status, actual_usd=0.0, cost_source="none")


def raw_path(run_dir: Path, shot_id: str, row: int) -> Path:
    """Local names come from what we control (shot id, journal row), never a vendor's id."""
    return run_dir / "raw" / f"{shot_id}-r{row}.mp4"


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


def _unanswered(ctx: RunContext, a: Attempt) -> None:
    """An intent row from a session that was killed between intent and the vendor's answer."""
    ctx.journal.status(a.id, Status.UNCONFIRMED, failure_reason=(
        "unconfirmed: the run stopped between intent and the vendor's answer"),
        actual_usd=a.reserved_usd or 0.0, cost_source="estimate")


@dataclass(frozen=True)
class Books:
    """Where a job settled outside a shot's own tries is booked (also by flows/run/reconcile.py):
    the run's journal and ledger, the clip cache, the run folder and a log."""

    journal: Journal
    ledger: Ledger
    cache: ClipCache | None
    run_dir: Path
    log: Callable[[str], None] = print

    @classmethod
    def of(cls, ctx: RunContext) -> Books:
        return cls(ctx.journal, ctx.ledger, ctx.cache, ctx.run_dir, ctx.log)


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
        await settle_job(a, reservation, provider=provider, books=Books.of(ctx))


async def settle_job(a: Attempt, reservation: Reservation, *, provider: Provider, books: Books,
                     deadline: float | None = None) -> Status:
    """Learn what the vendor did with a job we hold money for, and book it: succeeded ->
    settled (and its clip downloaded into the cache under the attempt's key), failed -> per
    the billing rule, still working or unreachable -> unchanged (held and at risk)."""
    assert a.job_id is not None
    info = find_model(a.provider, a.model)
    job = Job(provider=a.provider, job_id=a.job_id, data=a.job_data or {})
    try:
        done = await provider.wait(job, deadline=deadline)
    except ProviderError as exc:
        books.log(f"{a.shot_id}: job {a.job_id} on {a.provider} not settled ({exc.kind}); its "
                  "estimate stays counted")
        return Status(a.status)
    held = Held(books.journal, books.ledger, a.id, reservation)
    if done.error is not None or done.state != "succeeded":
        held.ended(bool(info and info.charges_failures), done.cost_usd,
                   status=Status.CANCELED if done.state == "canceled" else Status.FAILED)
        return Status.FAILED
    held.succeeded(done, a.provider)
    if books.cache is not None and a.cache_key:
        raw = raw_path(books.run_dir, a.shot_id, a.id)
        with contextlib.suppress(ProviderError):
            await _fetch_verified(provider, job, done, raw, 0.0)
            books.journal.status(a.id, Status.DOWNLOADED, clip_path=str(raw))
            books.cache.put(a.cache_key, raw, provider=a.provider, model=a.model, job_id=a.job_id,
                            cost_usd=books.journal.get(a.id).actual_usd)
    return Status.SUCCEEDED


__all__ = ["Books", "Failed", "RunContext", "ShotResult", "render_shot", "render_take",
           "settle_job", "settle_orphans", "submit_first"]
