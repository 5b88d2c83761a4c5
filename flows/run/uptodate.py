"""Is a run folder up to date? The content address of a cut, and the record of the last assembly.

`storyreel run` on a finished folder whose storyboard did not change has nothing to do: it
says so in well under a second, with no vendor, no ffmpeg and no Prefect (`up_to_date`). A run
that does work re-assembles the cut only when the cut's key changed (`flows.run.finish`).

Cheap on purpose: this module imports no Prefect, pandas or PyAV, reads the journal and the
record, and `stat`s files; it never hashes a video.

The rule for the cut key (`cut_key`), so that fields added to the storyboard later are part of
it with no edit here: sha256 of the canonical JSON of
- CUT_KEY_VERSION (bump when assembly's own code changes what it makes);
- the output format the plan resolved (width, height, fps, fit);
- the storyboard as validated (pydantic dump), minus only the fields that steer money and
  retries and never what is on screen: MONEY_FIELDS at the top level (budget, limits, keys,
  pricing, vars: variables act through the text they fill, which is in; tags: who the
  run was for) and RETRY_FIELDS in
  `defaults` and each shot (fallback, retries, checks). Everything else is in it generically: the
  whole `output` section, any other top-level section (`audio`, ...), every shot's other
  fields (duration, transition, caption, title_card, ...). Prompts and models are in it too;
  changing them changes a clip, so the cut is rebuilt anyway;
- each shot's duration and transition as planned (defaults applied);
- each conformed clip's identity: the clip key and job id of the journal row that made it,
  the file's name, size and mtime (a clip conformed again is a new file);
- the sha256 of the run folder's `review.yaml` (review picks) when it exists.

The record, RECORD (`cut.json` in the run folder), holds the key of the last assembly, its
material (to see what changed) and final.mp4's size and mtime then; a final.mp4 changed or
removed since is not up to date.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.money.cache import cache_key
from flows.money.journal import Attempt, Journal
from flows.money.status import AT_RISK, AT_VENDOR
from flows.run.journals import has_journal, open_journal
from flows.storyboard.plan import Option, Plan, ShotPlan

CUT_KEY_VERSION = 1
CONFORM_TAG_VERSION = 1  # bump when conform's output changes for the same format and frames
MONEY_FIELDS = frozenset({"budget", "limits", "keys", "pricing", "vars", "tags"})
RETRY_FIELDS = frozenset({"fallback", "retries", "checks"})  # checks: which take, not its look
RECORD = "cut.json"
REVIEW = "review.yaml"
DONE = ("done", "cached")


def plan_clip_key(plan: Plan, shot: ShotPlan, opt: Option) -> str:
    """The content address of the clip `opt` would make for `shot` (flows.run.context.clip_key)."""
    req = shot.request(opt, plan)
    return cache_key(provider=req.provider, model=req.model, vendor_model=req.vendor_model,
                     prompt=req.prompt, negative_prompt=req.negative_prompt,
                     duration_s=req.duration_s, aspect_ratio=req.aspect_ratio,
                     resolution=req.resolution, width=req.width, height=req.height, fps=req.fps,
                     seed=req.seed, params=req.params, image_sha256=shot.key_image())


def conformed_name(plan: Plan, shot: ShotPlan) -> str:
    """The conformed clip's file name in `clips/`: it names the format and frame count it was
    conformed to, so that a clip conformed for another format (e.g. `fit: pad` -> `crop`,
    which changes no clip key) is never taken for this one."""
    fit = plan.storyboard.output.fit
    frames = max(1, round(shot.duration * plan.fps))
    tag = _sha({"v": CONFORM_TAG_VERSION, "w": plan.width, "h": plan.height, "fps": plan.fps,
                "fit": fit, "frames": frames})[:8]
    take = f"-take{shot.take}" if shot.take > 1 else ""
    return f"{shot.index:03d}-{shot.shot_id}{take}.{tag}.mov"


def option_of(shot: ShotPlan, row: Attempt) -> Option | None:
    return next((o for o in shot.options if (o.provider, o.model) == (row.provider, row.model)),
                None)


def row_is_current(plan: Plan, shot: ShotPlan, row: Attempt) -> bool:
    """Did this journal row render what the storyboard asks of the shot now (same clip key,
    from an option the shot still has)?"""
    opt = option_of(shot, row)
    return opt is not None and row.cache_key == plan_clip_key(plan, shot, opt)


def clip_identity(shot: ShotPlan, row: Attempt, conformed: Path | str | None = None
                  ) -> dict[str, Any] | None:
    """What names a conformed clip in the cut key, without reading it; None when it is gone."""
    path = Path(conformed if conformed is not None else (row.conformed_path or ""))
    try:
        st = path.stat()
    except OSError:
        return None
    return {"shot": shot.shot_id, "clip_key": row.cache_key, "job": row.job_id,
            "file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cut_material(plan: Plan, clips: Sequence[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    """Every input of assembly (see the module docstring for the rule)."""
    board = plan.storyboard.model_dump(mode="json")
    for name in MONEY_FIELDS:
        board.pop(name, None)
    for section in [board.get("defaults") or {}, *(board.get("shots") or [])]:
        for name in RETRY_FIELDS:
            section.pop(name, None)
    review = run_dir / REVIEW
    try:
        review_sha = hashlib.sha256(review.read_bytes()).hexdigest()
    except FileNotFoundError:
        review_sha = None
    return {
        "v": CUT_KEY_VERSION,
        "format": {"width": plan.width, "height": plan.height, "fps": plan.fps,
                   "fit": plan.storyboard.output.fit},
        "storyboard": board,
        "timeline": [{"duration": s.duration, "transition": s.transition.model_dump(mode="json")}
                     for s in plan.shots],
        "clips": list(clips),
        "review_sha256": review_sha,
    }


def cut_key(plan: Plan, clips: Sequence[dict[str, Any]], run_dir: Path) -> str:
    return material_key(cut_material(plan, clips, run_dir))


def material_key(material: dict[str, Any]) -> str:
    return _sha(material)


def _sha(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the record of the last assembly -------------------------------------------------------

def read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(run_dir: Path, key: str, material: dict[str, Any], final: Path,
                 report: dict[str, Any] | None = None) -> None:
    """`report`: what the cut's making measured (captions, loudness), for a run that reuses it."""
    st = final.stat()
    write_text_atomic(run_dir / RECORD, json.dumps(
        {"key": key, "final": final.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
         "material": material, "report": report}, indent=1, sort_keys=True, default=str))


def forget_record(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir / RECORD).unlink()


def assembled(run_dir: Path, key: str) -> Path | None:
    """final.mp4 when the last assembly recorded `key` and the file is still what it wrote."""
    rec = read_record(run_dir)
    if rec is None or rec.get("key") != key:
        return None
    final = run_dir / str(rec.get("final", "final.mp4"))
    try:
        st = final.stat()
    except OSError:
        return None
    if (st.st_size, st.st_mtime_ns) != (rec.get("size"), rec.get("mtime_ns")):
        return None
    return final


# -- the whole check ---------------------------------------------------------------------

@dataclass(frozen=True)
class Freshness:
    """Whether a run folder's cut is up to date with the storyboard (`check`)."""

    final: Path | None  # set when up to date
    why: str  # what is not up to date (for --explain / debugging)
    at_risk: int = 0  # journal rows whose money has no final answer from their vendor
    askable: int = 0  # of those, jobs a vendor can be asked about (`storyreel reconcile`)


def done_clips(plan: Plan, run_dir: Path, journal: Journal) -> tuple[list[dict[str, Any]] | None, str]:
    """The identities of every take the storyboard (and review.yaml) wants of every shot, when
    each one's latest journal row is done for the clip the storyboard asks now and its
    conformed clip (for this format) is on disk; else None and what is missing. The cut key is
    made of these, at assembly (flows.run.finish) and in the check, so the two agree."""
    from flows.review.picks import by_take, load_review, takes_to_make
    from flows.run.chain import bind_keys

    reviews = load_review(run_dir)
    plan = bind_keys(plan, journal, reviews)  # start_from shots' keys hold their parent's clip
    clips = []
    for shot in plan.shots:
        takes = by_take(journal.attempts(shot.shot_id))
        for t in takes_to_make(set(takes), reviews.get(shot.shot_id), shot.takes):
            take = shot.for_take(t)
            rows = takes.get(t) or []
            row = rows[-1] if rows else None
            if row is None or row.status not in DONE:
                return None, f"{shot.shot_id} take {t}: {row.status if row else 'not started'}"
            if not row_is_current(plan, take, row):
                return None, f"{shot.shot_id} take {t}: changed"
            if Path(row.conformed_path or "").name != conformed_name(plan, take):
                return None, f"{shot.shot_id} take {t}: conformed for another format"
            ident = clip_identity(take, row)
            if ident is None:
                return None, f"{shot.shot_id} take {t}: conformed clip missing"
            clips.append({**ident, "take": t})
    return clips, ""


def check(plan: Plan, run_dir: Path) -> Freshness:
    """Up to date when every take the storyboard wants is done (`done_clips`) and the last
    assembly recorded the cut key of exactly these clips and settings. A shot that failed or
    was a slate last time is not done, so the run tries it again."""
    run_dir = Path(run_dir)
    if read_record(run_dir) is None or not has_journal(run_dir):
        return Freshness(None, "no finished cut in this folder")
    journal = open_journal(run_dir)
    try:
        clips, why = done_clips(plan, run_dir, journal)
        risky = [a for a in journal.attempts() if a.status in AT_RISK]
    finally:
        journal.close()
    if clips is None:
        return Freshness(None, why)
    final = assembled(run_dir, cut_key(plan, clips, run_dir))
    askable = sum(1 for a in risky if a.status in AT_VENDOR and a.job_id)
    return Freshness(final, "" if final else "the cut's inputs changed", len(risky), askable)
