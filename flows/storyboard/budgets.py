"""Which spend window a run spends from, and its limits.

With an operators' budgets file (named by STORYREEL_BUDGETS) the file is the only authority on
limits: operators set them, authors only name a scope. A storyboard's `budget.window` limits
are then ignored (it cannot raise, lower or set a cap); a scope the file does not list spends
from the file's `default_scope`, or is refused (SpecError at `budget.window.scope`) when the
file declares none. So every run of a scope enforces the same limits.

Without a budgets file the storyboard's `budget.window` is the window, limits included; the
window row keeps the limits of the latest run that reserved in it (runs of one scope should
agree; a budgets file makes them).

    # budgets.yaml
    version: 1
    default_scope: marketing      # optional: storyboards without budget.window spend here
    scopes:
      marketing: {daily_usd: 40, monthly_usd: 600, timezone: Europe/Paris}
      research:  {monthly_usd: 200}
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from flows.money.window import WindowSpec
from flows.storyboard.loading import _where, read_yaml
from flows.storyboard.spec import SCOPE, Storyboard, WindowLimits, _Strict
from providers.errors import SpecError

ENV = "STORYREEL_BUDGETS"


class BudgetsFile(_Strict):
    version: Literal[1] = 1
    default_scope: str | None = Field(None, description="scope of storyboards naming none")
    scopes: dict[str, WindowLimits] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> BudgetsFile:
        for name in self.scopes:
            if not SCOPE.match(name):
                raise ValueError(f"scopes.{name}: '{name}' is not a scope name: use 1-64 "
                                 "letters, digits, '.', '_', ':' or '-'")
        if self.default_scope is not None and self.default_scope not in self.scopes:
            raise ValueError(f"default_scope: '{self.default_scope}' is not under scopes: "
                             f"({', '.join(self.scopes)})")
        return self


def load_budgets(path: str | Path) -> BudgetsFile:
    """Parse and validate an operators' budgets file; SpecError names every problem's place."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or a NUL in the name
        raise SpecError([("", f"cannot read the budgets file ({ENV}): "
                              f"{getattr(exc, 'strerror', None) or exc}")],
                        source) from None
    data, lines = read_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError([("", "a budgets file is a mapping with scopes: {name: {daily_usd, "
                              "monthly_usd, timezone}}")], source)
    try:
        return BudgetsFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_issues(exc, lines), source) from None


def _issues(exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = WindowLimits if len(loc) == 3 and loc[0] == "scopes" else BudgetsFile
            msg = f"unknown field '{loc[-1]}' (allowed: {', '.join(model.model_fields)})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        if not loc and ": " in msg:  # a model-level check carries its own place
            place, _, msg = msg.partition(": ")
            loc = tuple(place.split("."))
        out.append((_where(loc, lines), msg))
    return out


def window_spec(board: Storyboard, env: dict[str, str] | None = None) -> WindowSpec | None:
    """The window a run of `board` spends from, or None. With an operators' file, limits come
    from the file only: the storyboard's scope if the file lists it, else the file's
    default_scope (also for a storyboard naming no window), else a SpecError. Without one,
    the storyboard's `budget.window` as written."""
    env = os.environ if env is None else env
    declared = board.budget.window
    path = env.get(ENV)
    if not path:
        if declared is None:
            return None
        return _spec(declared.scope, declared, "storyboard")
    ops = load_budgets(path)
    scope = declared.scope if declared else None
    if scope not in ops.scopes:
        if scope is not None and ops.default_scope is None:
            raise SpecError([("budget.window.scope", (
                f"scope '{scope}' is not in the operators' budgets file {path} ({ENV}), which "
                f"lists: {', '.join(ops.scopes)} (and no default_scope); name one of those"))])
        scope = ops.default_scope
    if scope is None:
        return None
    return _spec(scope, ops.scopes[scope], str(path))


def _spec(scope: str, limits: WindowLimits, source: str) -> WindowSpec:
    return WindowSpec(scope=scope, daily_usd=_dec(limits.daily_usd),
                      monthly_usd=_dec(limits.monthly_usd), timezone=limits.timezone,
                      source=source)


def declared_specs(env: dict[str, str] | None = None) -> list[WindowSpec]:
    """Every scope of the operators' file (for `storyreel budget`)."""
    env = os.environ if env is None else env
    path = env.get(ENV)
    if not path:
        return []
    ops = load_budgets(path)
    return [WindowSpec(scope=name, daily_usd=_dec(w.daily_usd), monthly_usd=_dec(w.monthly_usd),
                       timezone=w.timezone, source=str(path)) for name, w in ops.scopes.items()]


def _dec(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))
