"""Money, one way everywhere: USD as Decimal rounded to a micro-dollar (1e-6), so sums have no
float noise; floats go through str() so 0.1 stays 0.1. The ledger computes with `to_money`,
the journal stores `as_float`, reports write `text`, people read `usd`."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

MICRO = Decimal("0.000001")
ZERO = Decimal(0)


def to_money(value: float | int | str | Decimal) -> Decimal:
    """Decimal USD rounded to a millionth; NaN and infinity are refused."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    if not d.is_finite():
        raise ValueError(f"amount must be finite, got {value!r}")
    return d.quantize(MICRO, rounding=ROUND_HALF_UP)


def as_float(value: Any) -> float:
    """A rounded float for storage and tables; missing values (None, NaN) are 0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0.0
    return float(to_money(value))


def text(value: Any) -> str:
    """'0.30', '0.000001', '12.00' for cost.csv (never 1e-06); '' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    plain = f"{to_money(value):f}".rstrip("0")
    whole, _, frac = plain.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def usd(value: Any) -> str:
    """'$1.25', '$0.000001': at least cents, at most micro-dollars."""
    return f"${text(value)}"
