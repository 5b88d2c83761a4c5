"""`storyreel cut DIR`: re-assemble a run folder's cut from its picks, with no vendor call.

Everything comes from the folder: the plan as the run recorded it (run.json), the takes and
their conformed clips (journal.sqlite), the picks and rejections (review.yaml). Nothing is
submitted, reserved or paid; only ffmpeg runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.media.assemble import Transition, assemble
from flows.media.conform import OutputFormat
from flows.money.journal import Journal
from flows.review.page import booked, write_review_page
from flows.review.picks import by_take, good_clip, load_review, select_take
from providers.errors import SpecError


@dataclass
class CutShot:
    shot_id: str
    take: int | None  # None: a slate stands in
    clip: Path


def open_run(run_dir: Path) -> tuple[dict[str, Any], Journal]:
    """The recorded plan and the journal of a finished run folder (SpecError when it is not
    one: the user named the wrong folder)."""
    run_dir = Path(run_dir)
    run_json, journal = run_dir / "run.json", run_dir / "journal.sqlite"
    if not run_json.is_file() or not journal.is_file():
        raise SpecError([("DIR", f"{run_dir} is not a finished run folder (no run.json and "
                          "journal.sqlite); give the --out folder of a storyreel run")])
    return json.loads(run_json.read_text(encoding="utf-8")), Journal(journal)


def _reason(rows: list[Any], rejected: bool) -> str:
    if rejected:
        return "rejected in review.yaml; run the storyboard again to make new takes"
    if not rows:
        return "never attempted"
    last = rows[-1]
    return f"{last.status}: {last.failure_reason or 'no clip'}"


async def recut(run_dir: Path) -> list[CutShot]:
    """Write final.mp4 (atomically) from the selected takes, then review.html."""
    from flows.run import _contact_sheet, slate  # the run's own slate and contact sheet

    run_dir = Path(run_dir)
    data, journal = open_run(run_dir)
    try:
        plan = data["plan"]
        out = plan["output"]
        fmt = OutputFormat(out["width"], out["height"], out["fps"], out.get("fit", "pad"))
        reviews = load_review(run_dir)
        attempts = journal.attempts()
        cut: list[CutShot] = []
        for index, shot in enumerate(plan["shots"]):
            takes = by_take(a for a in attempts if a.shot_id == shot["id"])
            review = reviews.get(shot["id"])
            chosen = select_take(takes, review)
            clip = good_clip(takes[chosen]) if chosen is not None else None
            if clip is None:
                rows = [a for t in takes.values() for a in t]
                rejected = bool(review and takes and set(takes) <= review.rejected)
                clip = await slate(fmt, run_dir, index, shot["id"], shot["duration"],
                                   _reason(rows, rejected))
                chosen = None
            cut.append(CutShot(shot["id"], chosen, clip))
        transitions = [Transition(s["transition"]["kind"], s["transition"]["duration"])
                       for s in plan["shots"][:-1]]
        final = run_dir / "final.mp4"
        await assemble([c.clip for c in cut], final, fmt, transitions)
        await _contact_sheet(final, run_dir)
        await write_review_page(run_dir, plan, attempts, reviews,
                                spent_usd=sum(booked(a) for a in attempts),
                                cap_usd=plan.get("budget", {}).get("max_usd"), final=final)
        return cut
    finally:
        journal.close()
