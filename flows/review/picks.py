"""review.yaml: the producer's picks and rejections, and which take each shot's cut uses.

One writer per file: people write review.yaml (through `storyreel pick` / `storyreel reject`),
the pipeline only reads it, so no run can overwrite an approval. The file:

    shots:
      intro: {pick: 2}                            # the cut uses take 2
      detail: {rejected: [1, 2], note: too dark}  # a rerun makes new takes of this shot

A rejection names the takes that existed when it was made: the next run of the storyboard on
the same folder finds every take of that shot rejected and makes new ones (new seeds); the run
after that finds the new takes unrejected and keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flows.files.atomic import write_text_atomic
from flows.money.journal import Attempt
from providers.errors import SpecError

FILE = "review.yaml"
GOOD = ("done", "cached")  # an attempt whose conformed clip is ready for the cut
_HEADER = ("# Picks and rejections, written by `storyreel pick` / `storyreel reject` (or by hand).\n"
           "# storyreel run and storyreel cut read this file and never write it.\n")


@dataclass
class ShotReview:
    pick: int | None = None
    rejected: set[int] = field(default_factory=set)
    note: str | None = None

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pick is not None:
            out["pick"] = self.pick
        if self.rejected:
            out["rejected"] = sorted(self.rejected)
        if self.note:
            out["note"] = self.note
        return out


def load_review(run_dir: Path) -> dict[str, ShotReview]:
    """The picks and rejections of a run folder ({} when there is no review.yaml)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SpecError([(FILE, f"not valid YAML: {exc}")], str(path)) from None
    issues: list[tuple[str, str]] = []
    shots = data.get("shots") if isinstance(data, dict) else None
    if not isinstance(shots, dict):
        raise SpecError([(f"{FILE}: shots", "expected a mapping of shot id to "
                          "{pick, rejected, note}")], str(path))
    out: dict[str, ShotReview] = {}
    for shot_id, entry in shots.items():
        where = f"{FILE}: shots.{shot_id}"
        if not isinstance(entry, dict) or set(entry) - {"pick", "rejected", "note"}:
            issues.append((where, "expected a mapping with pick, rejected and/or note"))
            continue
        pick, rejected = entry.get("pick"), entry.get("rejected") or []
        if pick is not None and (type(pick) is not int or pick < 1):
            issues.append((f"{where}.pick", f"{pick!r} is not a take number (1, 2, ...)"))
            continue
        if not isinstance(rejected, list) or any(type(t) is not int or t < 1 for t in rejected):
            issues.append((f"{where}.rejected", "expected a list of take numbers"))
            continue
        note = entry.get("note")
        out[str(shot_id)] = ShotReview(pick, set(rejected), None if note is None else str(note))
    if issues:
        raise SpecError(issues, str(path))
    return out


def save_review(run_dir: Path, reviews: dict[str, ShotReview]) -> Path:
    body = {"shots": {k: v.to_yaml() for k, v in reviews.items() if v.to_yaml()}}
    return write_text_atomic(Path(run_dir) / FILE,
                             _HEADER + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))


def by_take(attempts: Iterable[Attempt]) -> dict[int, list[Attempt]]:
    """A shot's journal rows grouped by take, takes in ascending order."""
    out: dict[int, list[Attempt]] = {}
    for a in sorted(attempts, key=lambda a: (a.take, a.id)):
        out.setdefault(a.take, []).append(a)
    return out


def good_clip(rows: list[Attempt]) -> Path | None:
    """The conformed clip a take ended with, if it ended well and the file is there."""
    for a in reversed(rows):
        if a.status in GOOD and a.conformed_path and Path(a.conformed_path).exists():
            return Path(a.conformed_path)
    return None


def select_take(takes: dict[int, list[Attempt]], review: ShotReview | None) -> int | None:
    """The take the cut uses: the picked one when it has a clip, else the first good take not
    rejected; None when there is none."""
    review = review or ShotReview()
    if review.pick is not None and review.pick in takes and good_clip(takes[review.pick]):
        return review.pick
    for take, rows in takes.items():
        if take not in review.rejected and good_clip(rows):
            return take
    return None


def takes_to_make(existing: Iterable[int], review: ShotReview | None, wanted: int) -> list[int]:
    """The take numbers a run renders for a shot: every take not rejected, topped up with new
    numbers (new seeds) until `wanted` are not rejected. Finished ones resume from the journal
    at no cost."""
    existing = sorted(set(existing))
    rejected = review.rejected if review else set()
    keep = [t for t in existing if t not in rejected]
    if review is not None and review.pick is not None and review.pick in existing \
            and review.pick not in keep:
        keep.append(review.pick)
    nxt = max(existing, default=0) + 1
    while len(keep) < wanted:
        keep.append(nxt)
        nxt += 1
    return sorted(keep)


def pick(run_dir: Path, shot_id: str, take: int, attempts: list[Attempt]) -> ShotReview:
    """Record that the cut should use `take` of `shot_id` (it must exist and have a clip)."""
    takes = by_take(a for a in attempts if a.shot_id == shot_id)
    _known_shot(run_dir, shot_id, attempts)
    if take not in takes:
        raise SpecError([("TAKE", f"shot {shot_id} has no take {take} (takes: "
                          f"{', '.join(map(str, takes)) or 'none'})")])
    if good_clip(takes[take]) is None:
        raise SpecError([("TAKE", f"take {take} of shot {shot_id} has no finished clip "
                          f"(status {takes[take][-1].status})")])
    reviews = load_review(run_dir)
    entry = reviews.setdefault(shot_id, ShotReview())
    entry.pick = take
    entry.rejected.discard(take)
    save_review(run_dir, reviews)
    return entry


def reject(run_dir: Path, shot_id: str, attempts: list[Attempt], note: str | None = None
           ) -> ShotReview:
    """Reject every take the shot has now: the next run makes new takes of it."""
    _known_shot(run_dir, shot_id, attempts)
    takes = by_take(a for a in attempts if a.shot_id == shot_id)
    reviews = load_review(run_dir)
    entry = reviews.setdefault(shot_id, ShotReview())
    entry.rejected |= set(takes)
    entry.pick = None
    if note is not None:
        entry.note = note
    save_review(run_dir, reviews)
    return entry


def _known_shot(run_dir: Path, shot_id: str, attempts: list[Attempt]) -> None:
    known = list(dict.fromkeys(a.shot_id for a in attempts))
    if shot_id not in known:
        raise SpecError([("SHOT", f"'{shot_id}' is not a shot of the run in {run_dir} "
                          f"(shots: {', '.join(known) or 'none'})")])
