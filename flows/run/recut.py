"""`storyreel cut DIR`: re-make a run folder's finished film from its picks, with no vendor call.

The film is the one `storyreel run` makes with the same picks: the same finish (flows/run/finish.py:
title and end cards, captions, music bed, loudness, logo, cut.json, contact sheet, review.html).
Everything comes from the folder: the storyboard the run recorded (its journal), the takes and
their conformed clips (journal.sqlite), the picks and rejections (review.yaml). A folder made
before storyboards were recorded needs the storyboard given (`--spec`, with its `--var`s).
Nothing is submitted, reserved or paid; only ffmpeg runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.money.journal import Attempt, JournalBase
from flows.review.page import booked
from flows.review.picks import by_take, good_clip, load_review, select_take
from flows.run.finish import finish_cut, recorded_plan
from flows.run.journals import has_journal, open_journal
from flows.run.uptodate import conformed_name
from flows.storyboard.plan import Plan
from providers.errors import SpecError, redact


@dataclass
class CutShot:
    shot_id: str
    take: int | None  # None: a slate stands in
    clip: Path | None  # the take's conformed clip (None: a slate)


def open_run(run_dir: Path) -> tuple[dict[str, Any], JournalBase]:
    """The recorded run.json and the journal of a finished run folder (SpecError when it is
    not one: the user named the wrong folder)."""
    run_dir = Path(run_dir)
    run_json = run_dir / "run.json"
    if not run_json.is_file() or not has_journal(run_dir):
        raise SpecError([("DIR", f"{run_dir} is not a finished run folder (no run.json and "
                          "journal); give the --out folder of a storyreel run")])
    return json.loads(run_json.read_text(encoding="utf-8")), open_journal(run_dir)


def _reason(rows: list[Attempt], rejected: bool) -> str:
    if rejected:
        return "rejected in review.yaml; run the storyboard again to make new takes"
    if not rows:
        return "never attempted"
    last = rows[-1]
    return f"{last.status}: {last.failure_reason or 'no clip'}"


def choose(plan: Plan, run_dir: Path, attempts: list[Attempt]) -> list[tuple[CutShot, str]]:
    """Each shot's clip for the cut, as a run picks it (review.yaml's pick, else the first good
    take not rejected), with why a slate stands in where there is none."""
    reviews = load_review(run_dir)
    out = []
    for shot in plan.shots:
        takes = by_take(a for a in attempts if a.shot_id == shot.shot_id)
        review = reviews.get(shot.shot_id)
        chosen = select_take(takes, review)
        clip = good_clip(takes[chosen]) if chosen is not None else None
        reason = ""
        if chosen is not None and clip is not None \
                and clip.name != conformed_name(plan, shot.for_take(chosen)):
            reason = (f"take {chosen} was conformed for another output format or length; run "
                      "the storyboard again to conform it (no spend)")
            chosen, clip = None, None
        if clip is None and not reason:
            rows = [a for t in takes.values() for a in t]
            rejected = bool(review and takes and set(takes) <= review.rejected)
            reason = _reason(rows, rejected)
            chosen = None
        out.append((CutShot(shot.shot_id, chosen, clip), reason))
    return out


async def recut(run_dir: Path, plan: Plan | None = None) -> list[CutShot]:
    """Write final.mp4 (atomically) from the selected takes through the run's finish. `plan`:
    the storyboard to cut by; default the one the folder recorded."""
    run_dir = Path(run_dir)
    data, journal = open_run(run_dir)
    try:
        if plan is None:
            plan = recorded_plan(journal, run_dir)
        if plan is None:
            raise SpecError([("DIR", f"{run_dir} was made by an older storyreel that did not "
                              "record its storyboard; give it: storyreel cut DIR --spec "
                              "STORYBOARD [--var k=v ...]")])
        attempts = journal.attempts()
        chosen = choose(plan, run_dir, attempts)

        async def reports(cut_json: dict[str, Any]) -> None:
            _update_run_json(run_dir, data, plan, [c for c, _ in chosen], cut_json)

        await finish_cut(plan, run_dir, journal, [c.clip for c, _ in chosen],
                         [r for _, r in chosen], reports=reports,
                         money=lambda: (sum(booked(a) for a in attempts), 0.0))
        return [c for c, _ in chosen]
    finally:
        journal.close()


def _update_run_json(run_dir: Path, data: dict[str, Any], plan: Plan, cut: list[CutShot],
                     cut_json: dict[str, Any]) -> None:
    """run.json describes the cut that is in the folder now; its money figures are the
    journal's, which a cut does not change."""
    from flows.files.folder import stored

    clips = {c.shot_id: c.clip for c in cut}
    for entry in data.get("results") or []:
        if isinstance(entry, dict) and entry.get("shot_id") in clips:
            clip = clips[entry["shot_id"]]
            entry["clip"] = stored(clip, run_dir) if clip is not None else None
    data["plan"] = plan.to_json()
    data["cut"] = cut_json
    write_text_atomic(run_dir / "run.json", redact(json.dumps(data, indent=2, default=str)))
