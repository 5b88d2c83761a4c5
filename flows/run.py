"""A run's setup and ending, in plain Python: plan and preflight before anything is paid,
the run folder and its journal, then placeholders, assembly and the reports at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import uptodate
from flows.media.assemble import Transition, assemble
from flows.media.conform import OutputFormat, conform
from flows.media.ffmpeg_exec import ffmpeg_exe
from flows.money.atomic import write_text_atomic
from flows.money.cache import ClipCache, default_cache_dir
from flows.money.journal import Journal
from flows.money.ledger import Ledger
from flows.render import ShotResult
from flows.storyboard.keys import require_keys
from flows.storyboard.plan import Plan, plan_file
from providers.errors import BudgetError, MediaError, StoryreelError

_HELD = ("unconfirmed", "intent")  # may have been charged: counts against the cap on resume


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


def make_plan(spec: str | Path, variables: Mapping[str, Any] | None = None,
              budget: float | None = None) -> Plan:
    """Load, apply overrides, and plan (raises SpecError with every problem's place)."""
    return plan_file(spec, dict(variables or {}), budget)


def preflight(plan: Plan) -> None:
    """Everything that must hold before the first paid call."""
    over = plan.over_budget()
    # with on_exhausted: skip the storyboard itself accepts a partial cut (shots that do not
    # fit are skipped and reported); with stop, a plan over the cap never starts
    if over and plan.storyboard.budget.on_exhausted == "stop":
        raise BudgetError("; ".join(over) + " (raise the cap with --budget or budget.max_usd, "
                          "or set budget.on_exhausted: skip to render what fits)")
    require_keys(plan.providers_used(), plan.storyboard.keys)
    try:
        ffmpeg_exe()
    except Exception as exc:  # no binary at all: say how to get one
        raise MediaError(f"ffmpeg not found ({exc}); pip install imageio-ffmpeg or set "
                         "FFMPEG_BINARY") from None


def run_dir_for(plan: Plan, out: Path | None) -> Path:
    if out is not None:
        return out
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / slug(plan.storyboard.title) / stamp


def open_journal(run_dir: Path) -> Journal:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Journal(run_dir / "journal.sqlite")


def ledger_for(plan: Plan, journal: Journal) -> Ledger:
    """A ledger that already counts what earlier sessions of this run folder spent or held;
    jobs at a vendor, not yet settled, are held before anything can reserve."""
    spent = 0.0
    at_vendor = []
    for a in journal.attempts():
        if a.status in _HELD:
            spent += a.reserved_usd or 0.0
        elif a.actual_usd:
            spent += a.actual_usd
        elif a.status in ("submitted", "running") and a.job_id:
            at_vendor.append(a)
    budget = plan.storyboard.budget
    ledger = Ledger(budget.max_usd, budget.max_usd_per_shot, already_spent_usd=spent)
    for a in at_vendor:
        ledger.hold(a.shot_id, a.reserved_usd or 0.0, row=a.id)
    return ledger


def cache_for(opts: RunOptions) -> ClipCache | None:
    return None if opts.no_cache else ClipCache(opts.cache_dir or default_cache_dir())


def output_format(plan: Plan) -> OutputFormat:
    return OutputFormat(plan.width, plan.height, plan.fps, plan.storyboard.output.fit)


async def placeholder(plan: Plan, index: int, reason: str, run_dir: Path) -> Path:
    """A slate for a shot that could not be made, so the cut keeps its timing."""
    from flows.media.animatic import render_animatic

    shot = plan.shots[index]
    raw = run_dir / "raw" / f"{shot.shot_id}-missing.mp4"
    await render_animatic(raw, prompt=f"MISSING SHOT {shot.shot_id}: {reason[:160]}",
                          duration=shot.duration, width=plan.width, height=plan.height,
                          fps=plan.fps, seed=0, title=f"missing: {shot.shot_id}")
    dest = run_dir / "clips" / f"{shot.index:03d}-{shot.shot_id}-missing.mov"
    dest.parent.mkdir(parents=True, exist_ok=True)
    await conform(raw, dest, output_format(plan), shot.duration)
    return dest


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path
    final: Path | None
    cost_csv: Path
    spent_usd: float
    cap_usd: float | None
    results: list[ShotResult]
    table: str  # per-provider spend vs cap, printable
    rows: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return all(r.status in ("done", "cached") for r in self.results)

    def failures(self) -> list[ShotResult]:
        return [r for r in self.results if r.status not in ("done", "cached")]


async def finish(plan: Plan, run_dir: Path, journal: Journal, ledger: Ledger,
                 results: list[ShotResult], contact_sheet: bool = True) -> RunSummary:
    """Placeholders for missing shots, the cut, cost.csv, run.json."""
    clips: list[Path] = []
    for shot, res in zip(plan.shots, results, strict=True):
        if res.conformed is not None:
            clips.append(res.conformed)
        else:
            clips.append(await placeholder(plan, shot.index, f"{res.status}: {res.reason}", run_dir))
    transitions = [Transition(s.transition.kind, s.transition.duration) for s in plan.shots[:-1]]
    final = run_dir / "final.mp4"
    # content-addressed cut (flows/uptodate.py): the same clips and settings are not joined again
    material = _cut_material(plan, run_dir, journal, results)
    key = uptodate.material_key(material) if material is not None else None
    if key is None or uptodate.assembled(run_dir, key) is None:
        uptodate.forget_record(run_dir)
        await assemble(clips, final, output_format(plan), transitions)
        if material is not None and key is not None:
            uptodate.write_record(run_dir, key, material, final)
        sheet = asyncio.create_task(_contact_sheet(final, run_dir)) if contact_sheet else None
    else:
        sheet = None if (run_dir / "contact_sheet.png").exists() or not contact_sheet \
            else asyncio.create_task(_contact_sheet(final, run_dir))
    # the reports (pandas) in a thread, while ffmpeg draws the contact sheet
    rows, cost_csv, table = await asyncio.to_thread(_reports, plan, run_dir, journal)
    summary = RunSummary(journal.run_id, run_dir, final, cost_csv, ledger.spent_usd, plan.cap_usd,
                         results, table, rows)
    if sheet is not None:
        await sheet
    write_run_json(plan, run_dir, journal.run_id, results, ledger)
    return summary


def _cut_material(plan: Plan, run_dir: Path, journal: Journal,
                  results: list[ShotResult]) -> dict[str, Any] | None:
    """The cut key's material, or None when the cut holds a slate (a missing shot is tried
    again next time, and its slate says why, which may change)."""
    clips = []
    for shot, res in zip(plan.shots, results, strict=True):
        row = journal.latest(shot.shot_id)
        if res.conformed is None or row is None or row.status not in uptodate.DONE \
                or Path(row.conformed_path or "").name != res.conformed.name:
            return None
        ident = uptodate.clip_identity(shot, row, res.conformed)
        if ident is None:
            return None
        clips.append(ident)
    return uptodate.cut_material(plan, clips, run_dir)


async def _contact_sheet(final: Path, run_dir: Path) -> None:
    from flows.media.contact_sheet import contact_sheet

    try:
        await contact_sheet(final, run_dir / "contact_sheet.png")
    except StoryreelError:
        pass  # a picture of the cut is nice to have, never worth failing the run


def _reports(plan: Plan, run_dir: Path, journal: Journal) -> tuple[list[dict[str, Any]], Path, str]:
    # imported here, not at the top: flows.money.report imports pandas (~0.5 s), which would delay
    # the first vendor submit of every run for a report written only at the end
    from flows.money.report import rows_from_journal, summarize, write_cost_csv

    rows = rows_from_journal(journal, {s.shot_id: s.duration for s in plan.shots})
    cost_csv = write_cost_csv(rows, run_dir / "cost.csv")
    return rows, cost_csv, summarize(rows, plan.cap_usd).to_string()


def warm_imports() -> None:
    """Import what the end of a run needs (pandas above all) while the run waits on vendors,
    so that it is not on the path from the last clip to the exit. Run it in a thread."""
    import flows.media.contact_sheet  # noqa: F401
    import flows.money.report  # noqa: F401


def write_run_json(plan: Plan, run_dir: Path, run_id: str, results: list[ShotResult],
                   ledger: Ledger) -> Path:
    data = {"run_id": run_id, "plan": plan.to_json(), "spent_usd": ledger.spent_usd,
            "results": [{"shot_id": r.shot_id, "status": r.status, "option": r.option,
                         "reason": r.reason,
                         "clip": str(r.conformed) if r.conformed else None} for r in results]}
    return write_text_atomic(run_dir / "run.json", json.dumps(data, indent=2, default=str))
