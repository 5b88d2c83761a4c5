"""The end of a run, one code path for `storyreel run` (flows/run/session.py `finish`) and `storyreel
cut` (flows/run/recut.py), so that a re-cut of picks is the film a run with those picks makes:
slates for missing shots, the finished cut (title and end cards, captions, music bed,
loudness, logo: flows/run/deliverable.py) unless cut.json says the same cut is already there
(flows/run/uptodate.py), the contact sheet, the take previews and review.html. The caller's
reports (cost.csv, run.json) are written while the contact sheet and previews are drawn.

Nothing here calls a vendor or reserves money; only ffmpeg runs.

The storyboard a run folder was made with is recorded in its journal (meta `storyboard`: the
validated storyboard, variables filled and --budget applied, its file and the planning date),
so `storyreel cut DIR` plans exactly what the run planned without the storyboard's file
being given again (`recorded_plan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flows.files.folder import resolved, stored
from flows.files.store import publish_if_remote
from flows.media.conform import OutputFormat, conform
from flows.media.finishing import make_cut
from flows.money.journal import Journal
from flows.run import uptodate
from flows.run.deliverable import cut_for
from flows.run.progress import note
from flows.storyboard.plan import Plan
from providers.errors import SpecError, StoryreelError, redact

T = TypeVar("T")
RECORD_KEY = "storyboard"  # journal meta: what `recorded_plan` plans from


def output_format(plan: Plan) -> OutputFormat:
    return OutputFormat(plan.width, plan.height, plan.fps, plan.storyboard.output.fit)


async def slate(fmt: OutputFormat, run_dir: Path, index: int, shot_id: str, duration: float,
                reason: str) -> Path:
    """The missing-shot slate, so the cut keeps its timing and says why."""
    from flows.media.animatic import render_animatic

    raw = run_dir / "raw" / f"{shot_id}-missing.mp4"
    await render_animatic(raw, prompt=redact(f"MISSING SHOT {shot_id}: {reason[:160]}"),
                          duration=duration, width=fmt.width, height=fmt.height,
                          fps=fmt.fps, seed=0, title=f"missing: {shot_id}")
    dest = run_dir / "clips" / f"{index:03d}-{shot_id}-missing.mov"
    dest.parent.mkdir(parents=True, exist_ok=True)
    await conform(raw, dest, fmt, duration)
    return dest


async def draw_contact_sheet(final: Path, run_dir: Path) -> None:
    from flows.media.contact_sheet import contact_sheet

    with contextlib.suppress(StoryreelError):  # nice to have, never worth failing the run
        await contact_sheet(final, run_dir / "contact_sheet.png")


def placed(cut_json: dict[str, Any], run_dir: Path) -> dict[str, tuple[float, float]]:
    """Where each clip plays in the cut (`CutReport.spans`), by resolved path. A record
    from before paths were stored relative names its clips where the folder was then."""
    from flows.files.folder import migrate

    def path(c: str) -> Path:
        return resolved(migrate(c, run_dir) if Path(c).is_absolute() else c, run_dir).resolve()
    return {str(path(str(c))): (float(a), float(b)) for c, a, b in cut_json.get("spans") or []}


# -- the storyboard a run folder was made with ---------------------------------------------

def record_storyboard(journal: Journal, plan: Plan, run_dir: Path) -> None:
    # a re-cut needs no keys: the Secret block names stay out of the run folder
    board = plan.storyboard.model_dump(mode="json", exclude={"keys"})
    rec = {"source": stored(plan.source, run_dir), "planned_on": dt.date.today().isoformat(),
           "board": board}
    if journal.meta_get(RECORD_KEY) != rec:
        journal.meta_set(RECORD_KEY, rec)


def recorded_plan(journal: Journal, run_dir: Path) -> Plan | None:
    """The plan of the storyboard the folder's last run (or cut) recorded; None when there is
    none (a folder made before storyboards were recorded). SpecError when it cannot be planned
    here (a music, logo or font file it names is gone)."""
    from pydantic import ValidationError

    from flows.storyboard.plan import build_plan
    from flows.storyboard.spec import Storyboard

    rec = journal.meta_get(RECORD_KEY)
    if not isinstance(rec, dict):
        return None
    source = resolved(str(rec.get("source") or "storyboard.yaml"), run_dir)
    try:
        board = Storyboard.model_validate(rec.get("board"))
        today = dt.date.fromisoformat(str(rec.get("planned_on")))
    except (ValidationError, ValueError) as exc:
        raise SpecError([("journal.sqlite", f"the recorded storyboard cannot be read ({exc}); "
                          "give it with --spec")], str(run_dir)) from None
    return build_plan(board, source, today=today)


# -- the finish ----------------------------------------------------------------------------

async def finish_cut(plan: Plan, run_dir: Path, journal: Journal,
                     clips: Sequence[Path | None], reasons: Sequence[str | None], *,
                     reports: Callable[[dict[str, Any]], Awaitable[T]],
                     money: Callable[[], tuple[float, float]],
                     contact_sheet: bool = True) -> tuple[dict[str, Any], T]:
    """`clips[i]`: shot i's conformed clip, or None for a slate saying `reasons[i]`.
    `reports(cut_json)` writes the caller's reports (run while the contact sheet and the take
    previews are drawn); `money()` is (spent, reserved) for the page. Returns the cut's
    report (`CutReport.to_json()`) and what `reports` returned."""
    record_storyboard(journal, plan, run_dir)
    fmt = output_format(plan)
    cut_clips: list[Path] = []
    for shot, clip, reason in zip(plan.shots, clips, reasons, strict=True):
        cut_clips.append(clip if clip is not None else await slate(
            fmt, run_dir, shot.index, shot.shot_id, shot.duration, reason or "no clip"))
    final = run_dir / "final.mp4"
    # the review page's take previews (one ffmpeg each) beside the cut, not after it
    previews = asyncio.create_task(_take_previews(plan, run_dir, journal, cut_clips))
    sheet: asyncio.Task[None] | None = None
    poster: asyncio.Task[None] | None = None
    try:
        # content-addressed cut (flows/run/uptodate.py): the same clips and settings are not cut
        # again; a cut holding a slate has no key (its reason may change)
        material = None
        if all(c is not None for c in clips):
            done, _ = uptodate.done_clips(plan, run_dir, journal)
            material = None if done is None else uptodate.cut_material(plan, done, run_dir)
        key = uptodate.material_key(material) if material is not None else None
        record = uptodate.read_record(run_dir) \
            if key is not None and uptodate.assembled(run_dir, key) is not None else None
        if record is None:
            uptodate.forget_record(run_dir)
            cut = await cut_for(plan, cut_clips, run_dir, fmt)
            cut_json = (await make_cut(cut, final)).to_json()
            if material is not None and key is not None:
                uptodate.write_record(run_dir, key, material, final, report=cut_json)
            redraw = contact_sheet
        else:
            cut_json = dict(record.get("report") or {})
            redraw = contact_sheet and not (run_dir / "contact_sheet.png").exists()
        # what the user waits for first, said as soon as it is true; then the rest at once:
        # the contact sheet (in this process, PyAV), the page's poster of the cut (ffmpeg) and
        # the reports (a thread), each on what it needs and nothing more
        note(f"cut ready: {final}")
        if redraw:
            sheet = asyncio.create_task(draw_contact_sheet(final, run_dir))
        poster = asyncio.create_task(_cut_poster(final, run_dir))
        out = await reports(cut_json)
        if sheet is not None:
            await sheet
        await poster
    except BaseException:  # never leave its ffmpeg running
        previews.cancel()
        if sheet is not None:
            sheet.cancel()
        if poster is not None:
            poster.cancel()
        raise
    await previews
    spent, reserved = money()
    await _write_page(plan, run_dir, journal, final, spent, reserved, placed(cut_json, run_dir))
    await publish_if_remote(run_dir)  # --out s3://...: the deliverables and state to the store
    return cut_json, out


async def _cut_poster(final: Path, run_dir: Path) -> None:
    """The review page's poster of the cut, made beside the contact sheet and the reports
    (the page, written after them, finds it up to date)."""
    from flows.review.previews import preview

    with contextlib.suppress(StoryreelError):
        await preview(final, run_dir, "final", video_copy=False)


async def _take_previews(plan: Plan, run_dir: Path, journal: Journal, cut: list[Path]) -> None:
    from flows.review.page import take_previews
    from flows.review.picks import load_review

    with contextlib.suppress(StoryreelError):  # the page is written (and says so) without them
        await take_previews(run_dir, plan.to_json(), journal.attempts(), load_review(run_dir),
                            in_cut=[str(Path(c).resolve()) for c in cut])


async def _write_page(plan: Plan, run_dir: Path, journal: Journal, final: Path, spent: float,
                      reserved: float, in_cut: dict[str, tuple[float, float]]) -> Path:
    from flows.review.page import write_review_page
    from flows.review.picks import load_review

    return await write_review_page(run_dir, plan.to_json(), journal.attempts(),
                                   load_review(run_dir), spent_usd=spent, cap_usd=plan.cap_usd,
                                   final=final, reserved_usd=reserved, in_cut=in_cut)
