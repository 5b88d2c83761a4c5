"""Shots that start from another shot's last frame (`start_from`), at run time.

A run starts every shot without a parent at once; a shot with one is sent as soon as its
parent's clip is chosen (`start_shots`). Its first frame is the last frame of the parent's chosen
clip as the vendor delivered it (the raw download at its own resolution, not the conformed,
letterboxed one), as a lossless PNG. Its clip key includes the parent clip's sha256, so a new
parent clip (an edit, a re-pick) makes new dependents and an unchanged one reuses them.

A parent with no clip leaves the shot to `on_parent_failed`: `text` renders it from its prompt
alone (on the options that take text; cost.csv's failure_reason column says why), `skip`
leaves a slate and a skipped row in cost.csv.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from flows.files.digest import file_sha256
from flows.media.conform import temp_name
from flows.media.ffmpeg_exec import run_ffmpeg
from flows.money.journal import Attempt, Journal
from flows.money.status import GOOD, ShotStatus, Status
from flows.review.picks import ShotReview, by_take, select_take
from flows.run.context import RunContext, ShotResult
from flows.storyboard.chains import descendants, order
from flows.storyboard.plan import Plan, ShotPlan
from providers.types import ImageInput

Render = Callable[[RunContext, ShotPlan], Awaitable[ShotResult]]

_SHA: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: hash a clip once


def clip_sha256(path: Path) -> str:
    """sha256 of a downloaded clip, remembered per (path, size, mtime) in this process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        _SHA[key] = file_sha256(path)
    return _SHA[key]


async def last_frame_png(clip: Path, dest: Path) -> Path:
    """The clip's last decoded frame as an RGB PNG (lossless) at the clip's own size. Decoding
    starts a few seconds before the end; image2's `-update` keeps overwriting one file, so
    what remains is the last frame."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        await run_ffmpeg(["-sseof", "-3", "-i", str(clip), "-map", "0:v:0", "-an",
                          "-pix_fmt", "rgb24", "-c:v", "png", "-update", "1", "-f", "image2",
                          str(tmp)])
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def made_by(journal: Journal, shot_id: str, conformed: Path) -> Attempt | None:
    """The journal row whose download was conformed into `conformed`, with that download on
    disk."""
    rows = [a for a in journal.attempts(shot_id) if a.status in GOOD and a.conformed_path
            and Path(a.conformed_path) == Path(conformed) and a.clip_path
            and Path(a.clip_path).is_file()]
    return rows[-1] if rows else None


def chosen_row(journal: Journal, shot_id: str, review: ShotReview | None) -> Attempt | None:
    """The row of the take a cut uses for `shot_id` now (review.yaml's pick, else the first
    good take not rejected), when its download is on disk."""
    takes = by_take(journal.attempts(shot_id))
    take = select_take(takes, review)
    if take is None:
        return None
    rows = [a for a in takes[take] if a.status in GOOD and a.clip_path
            and Path(a.clip_path).is_file()]
    return rows[-1] if rows else None


async def bind(ctx: RunContext, shot: ShotPlan, parent: ShotResult) -> ShotPlan | ShotResult:
    """The shot with its parent's last frame as its first (and the parent clip's sha256 in its
    clip key); without a parent clip, what on_parent_failed says."""
    row = None
    if parent.status in GOOD and parent.conformed is not None:
        row = made_by(ctx.journal, parent.shot_id, parent.conformed)
        why = "its downloaded clip is gone"
    else:
        why = f"{parent.status}: {parent.reason or 'no clip'}"
    if row is None:
        return without_parent(ctx, shot, why)
    raw = Path(row.clip_path or "")
    sha = await asyncio.to_thread(clip_sha256, raw)
    png = ctx.run_dir / "frames" / f"{shot.shot_id}.from-{parent.shot_id}.{sha[:16]}.png"
    if not png.is_file():
        await last_frame_png(raw, png)
    data = await asyncio.to_thread(png.read_bytes)
    ctx.log(f"{shot.shot_id}: starts from the last frame of {parent.shot_id} ({png.name})")
    return replace(shot, image=ImageInput(path=png, data=data, mime="image/png"),
                   parent_sha256=sha)


def without_parent(ctx: RunContext, shot: ShotPlan, why: str) -> ShotPlan | ShotResult:
    """on_parent_failed: `text` -> the shot on its text-taking options, from its prompt alone;
    `skip` (or no option takes text) -> a skipped row in the journal, and a slate."""
    note = f"parent {shot.start_from} has no clip ({why})"
    texts = [o for o in shot.options if "text" in o.info.inputs]
    if shot.on_parent_failed == "text" and texts:
        ctx.log(f"{shot.shot_id}: {note}; rendered from its prompt (on_parent_failed: text)")
        return replace(shot, start_from=None, image=None, image_sha256=None, options=texts)
    reason = (f"{note}; on_parent_failed: skip" if shot.on_parent_failed == "skip" else
              f"{note}; on_parent_failed: text, but no option of the shot takes text")
    opt = shot.options[0]
    ctx.journal.record(shot_id=shot.shot_id, attempt=ctx.journal.next_attempt(shot.shot_id, 1),
                       provider=opt.provider, model=opt.model, status=Status.SKIPPED, take=1,
                       estimated_usd=0.0, actual_usd=0.0, cost_source="none",
                       failure_reason=f"parent: {reason}")
    ctx.log(f"{shot.shot_id}: skipped: {reason}")
    return ShotResult(shot.shot_id, ShotStatus.SKIPPED, reason=reason)


def _note_text(journal: Journal, shot_id: str, after: int, note: str) -> None:
    """cost.csv says why a start_from shot was rendered from text: its rows of this session."""
    for a in journal.attempts(shot_id):
        if a.id > after and not a.failure_reason:
            journal.status(a.id, a.status, failure_reason=note, finished_at=a.finished_at)


async def _after(ctx: RunContext, shot: ShotPlan, parent: asyncio.Future[ShotResult],
                 render: Render) -> ShotResult:
    try:
        done = await asyncio.shield(parent)
    except Exception as exc:  # the parent's own task reports its error; here it has no clip
        done = ShotResult(shot.start_from or "", ShotStatus.FAILED,
                          reason=f"{type(exc).__name__}: {exc}")
    bound = await bind(ctx, shot, done)
    if isinstance(bound, ShotResult):
        ctx.event(shot, bound.status, bound.reason or "", take=0)
        return bound
    if bound.start_from is not None:
        return await render(ctx, bound)
    last = max((a.id for a in ctx.journal.attempts(shot.shot_id)), default=0)
    result = await render(ctx, bound)
    _note_text(ctx.journal, shot.shot_id, last,
               f"parent: {shot.start_from} has no clip; rendered from text "
               "(on_parent_failed: text)")
    return result


def start_shots(ctx: RunContext, shots: list[ShotPlan], render: Render
          ) -> dict[str, asyncio.Future[ShotResult]]:
    """Every shot's work, started: shots without a parent at once, the others when their
    parent's clip is chosen."""
    by_id = {s.shot_id: s for s in shots}
    futures: dict[str, asyncio.Future[ShotResult]] = {}
    for shot_id in order((s.shot_id, s.start_from) for s in shots):
        shot = by_id[shot_id]
        up = futures.get(shot.start_from) if shot.start_from else None
        futures[shot_id] = asyncio.ensure_future(
            render(ctx, shot) if up is None else _after(ctx, shot, up, render))
    return futures


# -- what a new parent clip costs (pick, cut, plan) --------------------------------------

@dataclass(frozen=True)
class Stale:
    shot_id: str
    parent: str
    estimate_usd: float  # regenerating it on its primary option, all its takes


def stale(plan: Plan, journal: Journal, reviews: dict[str, ShotReview]) -> list[Stale]:
    """The start_from shots whose chosen clip was not made from the clip their parent has now
    (a parent re-picked or regenerated), and those below them: the next run regenerates them."""
    from flows.run.uptodate import plan_clip_key

    shots = {s.shot_id: s for s in plan.shots}
    out: list[Stale] = []
    gone: set[str] = set()
    for shot_id in order((s.shot_id, s.start_from) for s in plan.shots):
        shot = shots[shot_id]
        if shot.start_from is None:
            continue
        mine = chosen_row(journal, shot_id, reviews.get(shot_id))
        parent = chosen_row(journal, shot.start_from, reviews.get(shot.start_from))
        if mine is None or parent is None:
            continue  # nothing to be stale (a missing clip is not stale, it is missing)
        fresh = shot.start_from not in gone
        if fresh:
            bound = replace(shot.for_take(mine.take),
                            parent_sha256=clip_sha256(Path(parent.clip_path or "")))
            fresh = mine.cache_key in {plan_clip_key(plan, bound, o) for o in shot.options}
        if not fresh:
            gone.add(shot_id)
            out.append(Stale(shot_id, shot.start_from, shot.estimate_usd))
    return out


def regenerated_below(plan: Plan, shot_id: str) -> list[ShotPlan]:
    """The shots a new clip of `shot_id` regenerates (everything chained below it)."""
    below = descendants(((s.shot_id, s.start_from) for s in plan.shots), shot_id)
    shots = {s.shot_id: s for s in plan.shots}
    return [shots[s] for s in below]


def bind_keys(plan: Plan, journal: Journal, reviews: dict[str, ShotReview]) -> Plan:
    """The plan with every start_from shot's parent clip sha256 filled in from the run
    folder's journal (its parent's chosen clip), for clip keys that match the rows a run
    wrote; shots whose parent has no clip there stay unbound."""
    if not any(s.start_from for s in plan.shots):
        return plan
    shots = []
    for s in plan.shots:
        if s.start_from is not None:
            row = chosen_row(journal, s.start_from, reviews.get(s.start_from))
            if row is not None:
                s = replace(s, parent_sha256=clip_sha256(Path(row.clip_path or "")))
        shots.append(s)
    return replace(plan, shots=shots)


def stale_report(run_dir: Path, journal: Journal, plan: Plan | None = None) -> list[str]:
    """Lines for `storyreel pick` and `storyreel cut`: the start_from shots whose parent's
    chosen clip changed, what regenerating them costs, and that the next run does it.
    `plan`: the storyboard to judge by (default the one the folder recorded)."""
    from flows.review.picks import load_review
    from flows.run.finish import recorded_plan

    plan = plan or recorded_plan(journal, Path(run_dir))
    if plan is None or not any(s.start_from for s in plan.shots):
        return []
    found = stale(plan, journal, load_review(Path(run_dir)))
    if not found:
        return []
    cost = sum(s.estimate_usd for s in found)
    return [f"stale: {s.shot_id} starts from {s.parent}, whose chosen clip changed "
            f"(regenerating it: ${s.estimate_usd:.4f})" for s in found] + [
        f"the next `storyreel run` with --out {run_dir} regenerates "
        f"{', '.join(s.shot_id for s in found)} for about ${cost:.4f}; `storyreel cut` keeps "
        "their current clips (no spend)"]
