"""What each journal row counts as in the money reports, and the three totals every report
shows: confirmed by the vendor, estimated by us (the vendor states no charge), and at risk
(no final answer yet). Plain Python: the review page and the up-to-date check use it without
pandas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from flows.money.journal import Attempt
from flows.money.status import AT_RISK, NOT_ATTEMPTS
from flows.money.usd import as_float

# cost_source values that are the vendor's own figure, as opposed to our estimate
VENDOR_SOURCES = ("vendor", "vendor_units")
PARTS = ("confirmed_usd", "estimated_spend_usd", "at_risk_usd")


def priced(a: Attempt) -> tuple[float, str, bool]:
    """(actual_usd, cost_source, at_risk) of one journal row."""
    if a.status in AT_RISK:  # no final answer: what was held for it, never less
        held = max(as_float(a.reserved_usd), as_float(a.actual_usd), as_float(a.estimated_usd))
        return held, "reservation", True
    booked = a.actual_usd is not None and a.status not in NOT_ATTEMPTS
    actual = as_float(a.actual_usd) if booked else 0.0
    if a.cost_source in VENDOR_SOURCES and booked:  # a vendor may report a zero charge too
        return actual, str(a.cost_source), False
    # a charge with no vendor source can only have come from the estimate
    return actual, ("estimate" if actual > 0 else "none"), False


def part(cost_source: Any, at_risk: Any) -> str:
    """Which of the three totals a row's money belongs to."""
    if _true(at_risk):
        return "at_risk_usd"
    return "confirmed_usd" if cost_source in VENDOR_SOURCES else "estimated_spend_usd"


def totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """confirmed_usd, estimated_spend_usd, at_risk_usd and total_usd of report rows."""
    sums = dict.fromkeys(PARTS, Decimal(0))
    for r in rows:
        sums[part(r.get("cost_source"), r.get("at_risk"))] += Decimal(str(as_float(r["actual_usd"])))
    out = {k: float(v) for k, v in sums.items()}
    out["total_usd"] = float(sum(sums.values(), Decimal(0)))
    return out


def totals_of(attempts: Iterable[Attempt]) -> dict[str, float]:
    """The same totals straight from journal rows."""
    rows = []
    for a in attempts:
        actual, source, risk = priced(a)
        rows.append({"actual_usd": actual, "cost_source": source, "at_risk": risk})
    return totals(rows)


def at_risk(attempts: Iterable[Attempt]) -> list[Attempt]:
    """The rows whose money has no final answer from their vendor."""
    return [a for a in attempts if a.status in AT_RISK]


def _true(value: Any) -> bool:
    return value.lower() in ("true", "1") if isinstance(value, str) else bool(value)
