"""Continuity in a storyboard: shots that start from another shot's last frame (`start_from`)
and characters shared by several shots. Pure functions over the validated storyboard or the
plan: the checks, the order a run can make shots in, and who depends on whom.

`start_from` makes the storyboard a DAG: a shot's parent is rendered (and its clip chosen)
before the shot is sent. A cycle or a name that is not a shot is a spec error at its place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from flows.storyboard.files import shown

if TYPE_CHECKING:
    from flows.storyboard.plan import Plan
    from flows.storyboard.spec import Storyboard


def continuity_problems(board: Storyboard) -> list[tuple[str, str]]:
    """Every start_from and characters problem, each with its place."""
    problems: list[tuple[str, str]] = []
    ids = {s.id: i for i, s in enumerate(board.shots)}
    known_ids = ", ".join(list(ids)[:20]) + (", ..." if len(ids) > 20 else "")
    for i, shot in enumerate(board.shots):
        where = f"shots[{i}]"
        parent = shot.start_from
        if parent is not None:
            if parent == shot.id:
                problems.append((f"{where}.start_from", f"'{shown(parent, 64)}' is this shot "
                                 "itself; a shot starts from another shot's last frame"))
            elif parent not in ids:
                problems.append((f"{where}.start_from", f"'{shown(parent, 64)}' is not a shot "
                                 f"id (accepted: the id of another shot: {known_ids})"))
            if shot.image:
                problems.append((f"{where}.start_from", "a shot starts from its parent's last "
                                 "frame or from its image:, not both; remove one"))
        for j, name in enumerate(shot.characters):
            if name not in board.characters:
                known = ", ".join(board.characters) or "none defined"
                problems.append((f"{where}.characters[{j}]", f"'{shown(name, 64)}' is not a "
                                 f"character (accepted: a name under characters: at the top "
                                 f"level: {known})"))
        if len(set(shot.characters)) != len(shot.characters):
            problems.append((f"{where}.characters", "a character is listed twice"))
    parents = {s.id: s.start_from for s in board.shots
               if s.start_from in ids and s.start_from != s.id}
    reported: set[str] = set()
    for shot_id in ids:
        loop = _cycle_from(shot_id, parents)
        if loop and not reported & set(loop):
            reported |= set(loop)
            first = min(loop, key=ids.__getitem__)
            path = " -> ".join([*_rotate(loop, first), first])
            problems.append((f"shots[{ids[first]}].start_from", f"a cycle: {path} (each shot "
                             "starts from the one after it; accepted: start_from chains that "
                             "end at a shot without start_from)"))
    return problems


def _cycle_from(start: str, parents: Mapping[str, str | None]) -> list[str] | None:
    """The cycle reached by following start_from from `start`, or None."""
    seen: list[str] = []
    node: str | None = start
    while node is not None and node not in seen:
        seen.append(node)
        node = parents.get(node)
    if node is None:
        return None
    return seen[seen.index(node):]


def _rotate(loop: list[str], first: str) -> list[str]:
    k = loop.index(first)
    return loop[k:] + loop[:k]


def order(shots: Iterable[tuple[str, str | None]]) -> list[str]:
    """Shot ids, each after its start_from parent (storyboard order otherwise). Assumes no
    cycle (checked at validation)."""
    pairs = list(shots)
    parent = dict(pairs)
    out: list[str] = []
    placed: set[str] = set()

    def place(shot_id: str) -> None:
        if shot_id in placed:
            return
        up = parent.get(shot_id)
        if up is not None and up in parent:
            place(up)
        placed.add(shot_id)
        out.append(shot_id)

    for shot_id, _ in pairs:
        place(shot_id)
    return out


def descendants(shots: Iterable[tuple[str, str | None]], root: str) -> list[str]:
    """Every shot that starts, directly or down a chain, from `root`, in dependency order."""
    pairs = list(shots)
    children: dict[str, list[str]] = {}
    for shot_id, parent in pairs:
        if parent is not None:
            children.setdefault(parent, []).append(shot_id)
    found: set[str] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return [s for s in order(pairs) if s in found]


def chain_lines(shots: Iterable[tuple[str, str | None]]) -> list[str]:
    """'a -> b -> c' for every chain (a root and everything below it), for `storyreel plan`."""
    pairs = list(shots)
    children: dict[str, list[str]] = {}
    for shot_id, parent in pairs:
        if parent is not None:
            children.setdefault(parent, []).append(shot_id)
    lines: list[str] = []

    def walk(node: str, path: list[str]) -> None:
        kids = children.get(node, [])
        if not kids:
            lines.append(" -> ".join(path))
        for kid in kids:
            walk(kid, [*path, kid])

    for shot_id, parent in pairs:
        if parent is None and shot_id in children:
            walk(shot_id, [shot_id])
    return lines


def continuity_lines(plan: Plan) -> list[str]:
    """What `storyreel plan` says about chains and characters: each chain, what a new clip of
    each parent (an edit, a re-pick) costs in regenerated dependents, and who appears where."""
    pairs = [(s.shot_id, s.start_from) for s in plan.shots]
    shots = {s.shot_id: s for s in plan.shots}
    lines: list[str] = []
    chains = chain_lines(pairs)
    if chains:
        lines.append("chains (each shot starts from the last frame of the one before it):")
        lines += [f"  {c}" for c in chains]
        for shot_id, _ in pairs:
            below = descendants(pairs, shot_id)
            if below:
                cost = sum(shots[b].estimate_usd for b in below)
                lines.append(f"  a new clip of {shot_id} (an edit, a re-pick) regenerates "
                             f"{', '.join(below)}: ${cost:.4f}")
        for s in plan.shots:
            if s.start_from is not None:
                lines.append(f"  {s.shot_id}: if {s.start_from} has no clip: "
                             + ("rendered from its prompt alone" if s.on_parent_failed == "text"
                                else "skipped (a slate)") + f" (on_parent_failed: "
                             f"{s.on_parent_failed})")
    for name, char in plan.storyboard.characters.items():
        users = [s for s in plan.shots if name in s.characters]
        where = []
        for s in users:
            o = s.primary
            how = ("reference" if "reference" in o.info.inputs and not s.uses_image(o) else
                   "first frame" if s.first_frame(o) is not None and s.image is None
                   and s.start_from is None else "description only")
            where.append(f"{s.shot_id} ({how})" if char.image else s.shot_id)
        lines.append(f"character {name}: " + (", ".join(where) or "in no shot")
                     + (f"; image {shown(char.image, 60)}" if char.image else ""))
    return lines
