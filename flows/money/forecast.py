"""When does a spend window run out at this pace? From the daily windows of the same scope
(spent + reserved per calendar day in the scope's time zone) over the last days, a rate per
day, and the day the window's remaining money is gone at that rate.

A deliberately plain projection (a straight line through the recent daily average): it is a
warning, not a promise, and it says which days it averaged."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flows.money.window import MICRO, utc_now
from flows.money.window_sql import Store

DAYS = 7  # the pace is the average over this many days, today included


def _end(period: str, start: str) -> date:
    """The first day after the window."""
    if period == "day":
        return date.fromisoformat(start) + timedelta(days=1)
    year, month = map(int, start.split("-"))
    return date(year + month // 12, month % 12 + 1, 1)


def daily_spend(store: Store, scope: str) -> dict[str, float]:
    """USD spent + reserved per day of the scope, by day (YYYY-MM-DD)."""
    rows = store.atomic(lambda tx: tx.execute(
        "SELECT start, spent_micros, reserved_micros FROM spend_windows WHERE scope = ? "
        "AND period = 'day'", (scope,)))
    return {str(start): (spent + held) / MICRO for start, spent, held in rows}


def forecast(window: dict[str, Any], per_day: dict[str, float], now: datetime,
             days: int = DAYS) -> dict[str, Any]:
    """`window` (flows.money.window.status) with rate_usd_per_day, runs_out (a date, or None
    when the money lasts the window at this pace) and a sentence, `forecast`."""
    today = now.astimezone(ZoneInfo(window["timezone"])).date()
    first = min((date.fromisoformat(d) for d in per_day), default=today)
    span = max(1, min(days, (today - first).days + 1))  # a scope younger than `days`
    recent = [today - timedelta(days=i) for i in range(span)]
    rate = sum(per_day.get(d.isoformat(), 0.0) for d in recent) / span
    out = dict(window, rate_usd_per_day=round(rate, 6), pace_days=span, runs_out=None)
    left = window.get("remaining_usd")
    if left is None:
        out["forecast"] = ""
        return out
    end = _end(window["period"], window["start"])
    pace = f"${rate:,.2f}/day over the last {span} day(s)"
    if left <= 0:
        out["runs_out"] = today.isoformat()
        out["forecast"] = "used up"
    elif rate <= 0:
        out["forecast"] = f"nothing spent in the last {span} day(s)"
    else:
        runs_out = today + timedelta(days=int(left // rate))
        if runs_out < end:
            out["runs_out"] = runs_out.isoformat()
            out["forecast"] = f"runs out on {runs_out.isoformat()} at {pace}"
        else:
            out["forecast"] = f"lasts until the window ends ({end.isoformat()}) at {pace}"
    return out


def with_forecasts(store: Store, windows: list[dict[str, Any]], now: datetime | None = None,
                   days: int = DAYS) -> list[dict[str, Any]]:
    """Every window with its forecast (one query per scope)."""
    now = now or utc_now()
    cache: dict[str, dict[str, float]] = {}
    out = []
    for w in windows:
        if w["scope"] not in cache:
            cache[w["scope"]] = daily_spend(store, w["scope"])
        out.append(forecast(w, cache[w["scope"]], now, days))
    return out


def ledger_windows() -> list[dict[str, Any]] | None:
    """The spend windows of the ledger in use, with their forecasts; None where no ledger is
    in use (a report never creates one)."""
    import os

    from flows.money.window import status
    from flows.money.window_sql import default_path, open_store
    from flows.storyboard.budgets import declared_specs

    specs = declared_specs()
    if not (specs or os.environ.get("STORYREEL_LEDGER_URL") or default_path().is_file()):
        return None
    store = open_store()
    try:
        return with_forecasts(store, status(store, specs))
    finally:
        store.close()
