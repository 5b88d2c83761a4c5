"""Cost tags: who a run was for (`client: acme`, `campaign: spring`), for chargeback reports.

Tags describe a run, not the film: they are recorded on every cost.csv row and in run.json,
and kept out of every cache key and the cut's key (flows/run/uptodate.py MONEY_FIELDS), so
editing them never regenerates or re-cuts anything. In cost.csv they are one fixed column,
`tags`, written `campaign=spring;client=acme` (keys sorted), so that a tag can never clash
with (or shadow) a column of the report. Plain Python: no pandas, no pydantic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
MAX_VALUE = 100
FORBIDDEN = set(";=\n\r\t")  # the column's own separators, and nothing a CSV cell mangles


def tag_problem(key: Any, value: Any) -> str | None:
    """Why `key: value` is not a tag, or None."""
    if not isinstance(key, str) or not KEY.match(key):
        return (f"tag name {key!r}: letters, digits, '_', '.', '-' (up to 40, starting with a "
                "letter or digit)")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"tag {key}: the value must be text or a number"
    text = str(value).strip()
    if not text or len(text) > MAX_VALUE or FORBIDDEN & set(text):
        return (f"tag {key}: the value must be 1-{MAX_VALUE} characters without ';', '=', tabs "
                "or line breaks")
    return None


def clean(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags checked and as text (ValueError naming the first problem)."""
    out: dict[str, str] = {}
    for key, value in (tags or {}).items():
        problem = tag_problem(key, value)
        if problem:
            raise ValueError(problem)
        out[key] = str(value).strip()
    return out


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """`--tag k=v` arguments (a later one wins for the same key)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--tag {pair!r}: expected NAME=VALUE")
        out.update(clean({key.strip(): value}))
    return out


def merged(storyboard: Mapping[str, str] | None, overrides: Mapping[str, Any] | None
           ) -> dict[str, str]:
    """The storyboard's tags with the command line's (or deployment's) on top, key by key."""
    return {**clean(storyboard), **clean(overrides)}


def to_cell(tags: Mapping[str, str] | None) -> str:
    """cost.csv's `tags` cell: `k=v;k2=v2`, keys sorted ('' for none)."""
    return ";".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))


def from_cell(cell: Any) -> dict[str, str]:
    """The tags of a `tags` cell (a missing or empty cell has none)."""
    if not isinstance(cell, str) or not cell.strip():
        return {}
    out = {}
    for part in cell.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def with_tags(plan: Any, overrides: Mapping[str, Any] | None) -> Any:
    """The plan with `overrides` (the command line's `--tag`, a deployment's `cost_tags`) on
    top of its storyboard's tags; the same plan when there are none."""
    if not overrides:
        return plan
    from dataclasses import replace

    from providers.errors import SpecError

    board = plan.storyboard
    try:
        tags = merged(board.tags, overrides)
    except ValueError as exc:
        raise SpecError([("cost_tags", str(exc))]) from None
    return replace(plan, storyboard=board.model_copy(update={"tags": tags}))
