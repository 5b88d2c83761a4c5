"""A run's setup and ending, in plain Python: plan and preflight before anything is paid,
the run folder and its journal, then placeholders, assembly and the reports at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.files.folder import stored
from flows.media.ffmpeg_exec import ffmpeg_exe
from flows.money.cache import ClipCache, default_cache_dir
from flows.money.journal import Journal, JournalBase
from flows.money.ledger import Ledger
from flows.money.status import AT_VENDOR, GOOD, Status
from flows.money.window import SpendWindow
from flows.run.deliverable import summary_lines
from flows.run.finish import finish_cut, output_format, slate
from flows.run.redaction import redact_data
from flows.run.shot import RunContext, ShotResult
from flows.storyboard.keys import require_keys
from flows.storyboard.plan import Plan
from providers.errors import BudgetError, MediaError, StoryreelError, redact


@dataclass
class RunOptions:
    out: Path | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    budget: float | None = None  # overrides budget.max_usd
    no_cache: bool = False
    cache_dir: Path | None = None
    regenerate: set[str] = field(default_factory=set)
    resubmit_unconfirmed: bool = False


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "storyboard"


def preflight(plan: Plan) -> None:
    """Everything that must hold before the first paid call."""
    over = plan.over_budget()
    # with on_exhausted: skip the storyboard itself accepts a partial cut (shots that do not
    # fit are skipped and reported); with stop, a plan over the cap never starts
    if over and plan.storyboard.budget.on_exhausted == "stop":
        raise BudgetError("; ".join(over) + " (raise the cap with --budget or budget.max_usd, "
                          "or set budget.on_exhausted: skip to render what fits)")
    require_keys(plan.providers_used(), plan.storyboard.keys)
    from flows.storyboard.budgets import window_spec

    window_spec(plan.storyboard)  # a broken operators' budgets file stops the run here
    try:
        ffmpeg_exe()
    except Exception as exc:  # no binary at all: say how to get one
        raise MediaError(f"ffmpeg not found ({exc}); pip install imageio-ffmpeg or set "
                         "FFMPEG_BINARY") from None
    if plan.finishing is not None and plan.finishing.draws_text:
        from flows.media.text import check_drawtext

        check_drawtext()  # captions and cards: refused now, not after the shots are paid for


def run_dir_for(plan: Plan, out: Path | None) -> Path:
    """`out`, or a new folder under runs/<title>/ whose name no other run can take (the
    second's stamp is only for people; the random part and the exclusive mkdir decide)."""
    if out is not None:
        return out
    parent = Path("runs") / slug(plan.storyboard.title)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def open_journal(run_dir: Path) -> JournalBase:
    """The folder's journal.sqlite, or the run's rows in STORYREEL_DB_URL (flows/run/journals.py)."""
    from flows.run.journals import open_journal as _open

    return _open(run_dir)


def ledger_for(plan: Plan, journal: Journal) -> Ledger:
    """A ledger that already counts, shot by shot, what earlier sessions of this run folder
    spent or may have spent (so the run cap and each shot's cap hold across a resume); jobs
    still at a vendor are held before anything can reserve, for the shot that resumes them."""
    budget = plan.storyboard.budget
    window = spend_window_for(plan, journal)
    ledger = Ledger(budget.max_usd, budget.max_usd_per_shot, window=window)
    for a in journal.attempts():
        if a.status in AT_VENDOR and a.job_id:
            ledger.hold(a.shot_id, a.reserved_usd or 0.0, row=a.id, attempt=a.attempt,
                        take=a.take)
        elif a.status in (Status.INTENT, Status.UNCONFIRMED):  # may have been charged
            ledger.book(a.shot_id, a.actual_usd if a.actual_usd is not None
                        else a.reserved_usd or 0.0)
        elif a.actual_usd:
            ledger.book(a.shot_id, a.actual_usd)
    if window is not None:  # after the holds: they adopt what is still at a vendor
        window.recover(journal.attempts())
    return ledger


def new_context(plan: Plan, opts: RunOptions, run_dir: Path, journal: Journal,
                client: Any, keys: dict[str, str | None], *, log: Any = print,
                limiter: Any = None) -> RunContext:
    """The one way to build a run's shared context (early submits and the flow alike)."""
    return RunContext(plan=plan, run_dir=run_dir, journal=journal,
                      ledger=ledger_for(plan, journal), client=client, keys=keys,
                      fmt=output_format(plan), cache=cache_for(opts), regenerate=opts.regenerate,
                      resubmit_unconfirmed=opts.resubmit_unconfirmed,
                      limits=dict(plan.storyboard.limits), limiter=limiter, log=log)


def spend_window_for(plan: Plan, journal: Journal) -> SpendWindow | None:
    """The run's side of its spend window (storyboard `budget.window`, or the operators'
    STORYREEL_BUDGETS file), in the store STORYREEL_LEDGER_URL names; None without one."""
    from flows.storyboard.budgets import window_spec

    spec = window_spec(plan.storyboard)
    if spec is None:
        return None
    from flows.money.window import SpendWindow
    from flows.money.window_sql import open_store

    return SpendWindow(open_store(), spec, journal.run_id)


def close_window(ledger: Ledger, end_run: bool = True) -> list[dict[str, Any]]:
    """End this process's side of the run's spend window (see SpendWindow.close); returns what
    the run used of each window it touched ([] without one, or when already closed)."""
    window = ledger.window
    if window is None or window.closed:
        return []
    try:
        window.close(end_run)
        return window.usage() if end_run else []
    except StoryreelError as exc:  # the ledger is counted safely (leases); the report says so
        return [{"scope": window.spec.scope, "error": str(exc)}]
    finally:
        window.store.close()


def cache_for(opts: RunOptions) -> ClipCache | None:
    return None if opts.no_cache else ClipCache(opts.cache_dir or default_cache_dir())


async def placeholder(plan: Plan, index: int, reason: str, run_dir: Path) -> Path:
    """A slate for a shot that could not be made, so the cut keeps its timing."""
    shot = plan.shots[index]
    return await slate(output_format(plan), run_dir, shot.index, shot.shot_id, shot.duration,
                       reason)


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path
    final: Path | None
    cost_csv: Path
    totals: dict[str, float]  # confirmed/estimated_spend/at_risk/total_usd: in every report
    cap_usd: float | None
    results: list[ShotResult]
    table: str  # per-provider spend vs cap, printable
    rows: list[dict[str, Any]]
    cut: dict[str, Any] | None = None  # the cut: duration, captions, measured loudness
    windows: list[dict[str, Any]] = field(default_factory=list)  # spend windows it used

    @property
    def spent_usd(self) -> float:
        """Confirmed + estimated + at risk: never less than the vendors may have billed."""
        return self.totals["total_usd"]

    @property
    def ok(self) -> bool:
        return all(r.status in GOOD for r in self.results)

    def failures(self) -> list[ShotResult]:
        return [r for r in self.results if r.status not in GOOD]


async def finish(plan: Plan, run_dir: Path, journal: Journal, ledger: Ledger,
                 results: list[ShotResult], contact_sheet: bool = True,
                 reported: Callable[[RunSummary], Awaitable[Any]] | None = None) -> RunSummary:
    """Placeholders for missing shots, the finished cut, cost.csv, run.json, review.html: the
    finish `storyreel cut` shares (flows/run/finish.py). `reported(summary)`: started as soon
    as the reports are written (the flow's artifacts), beside the contact sheet and the page."""
    final = run_dir / "final.mp4"
    after: list[asyncio.Future[Any]] = []

    async def reports(cut_json: dict[str, Any]) -> RunSummary:
        # the reports (pandas) in a thread, while ffmpeg draws the contact sheet
        rows, cost_csv, table, totals = await asyncio.to_thread(_reports, plan, run_dir, journal)
        table = "\n".join([table, *summary_lines(cut_json, run_dir)])
        summary = RunSummary(journal.run_id, run_dir, final, cost_csv, totals, plan.cap_usd,
                             results, table, rows, cut=cut_json)
        summary.windows = await asyncio.to_thread(close_window, ledger)
        write_run_json(plan, run_dir, journal.run_id, results, totals, cut=cut_json,
                       windows=summary.windows)
        if reported is not None:
            after.append(asyncio.ensure_future(reported(summary)))
        return summary

    try:
        _, summary = await finish_cut(
            plan, run_dir, journal, [r.conformed for r in results],
            [f"{r.status}: {r.reason}" for r in results], reports=reports,
            money=lambda: (ledger.spent_usd, ledger.reserved_usd), contact_sheet=contact_sheet)
    except BaseException:
        for task in after:
            task.cancel()
        raise
    for task in after:
        await task
    return summary


async def write_review(plan: Plan, run_dir: Path, journal: Journal, ledger: Ledger,
                       final: Path | None, running: bool = False,
                       in_cut: dict[str, tuple[float, float]] | None = None) -> Path:
    """review.html for the run folder (flows/review/page.py)."""
    from flows.review.page import write_review_page
    from flows.review.picks import load_review

    return await write_review_page(run_dir, plan.to_json(), journal.attempts(),
                                   load_review(run_dir), spent_usd=ledger.spent_usd,
                                   cap_usd=plan.cap_usd, final=final,
                                   reserved_usd=ledger.reserved_usd, running=running,
                                   in_cut=in_cut)


def _reports(plan: Plan, run_dir: Path, journal: Journal
             ) -> tuple[list[dict[str, Any]], Path, str, dict[str, float]]:
    # imported here, not at the top: flows.money.report imports pandas (~0.5 s), which would delay
    # the first vendor submit of every run for a report written only at the end
    from flows.money.report import rows_from_journal, summarize, write_cost_csv
    from flows.money.report_text import table_text
    from flows.money.spend import totals

    rows = redact_data(rows_from_journal(journal, {s.shot_id: s.duration for s in plan.shots},
                                         tags=plan.storyboard.tags))
    cost_csv = write_cost_csv(rows, run_dir / "cost.csv")
    return rows, cost_csv, table_text(summarize(rows, plan.cap_usd)), totals(rows)


def warm_imports() -> None:
    """Import what the end of a run needs (pandas above all) while the run waits on vendors,
    so that it is not on the path from the last clip to the exit. Run it in a thread."""
    import flows.media.contact_sheet  # noqa: F401
    import flows.money.report  # noqa: F401


def write_run_json(plan: Plan, run_dir: Path, run_id: str, results: list[ShotResult],
                   totals: dict[str, float], cut: dict[str, Any] | None = None,
                   windows: list[dict[str, Any]] | None = None) -> Path:
    data = {"run_id": run_id, "plan": plan.to_json(), **totals, "spent_usd": totals["total_usd"],
            "windows": windows or [], "tags": dict(plan.storyboard.tags),
            "results": [{"shot_id": r.shot_id, "status": r.status, "option": r.option,
                         "reason": r.reason,
                         "clip": stored(r.conformed, run_dir) if r.conformed else None}
                        for r in results],
            "cut": cut}
    return write_text_atomic(run_dir / "run.json",
                             redact(json.dumps(data, indent=2, default=str)))
