"""`storyreel report` for people and machines: aligned tables with money written as money,
a sentence where a section has nothing to show, and the same tables as JSON."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from flows.money.report import REPORT_TABLES, by_spend

HEADERS = {
    "attempts": "tries", "succeeded": "ok", "failed": "failed", "at_risk": "at risk",
    "cached": "cached", "skipped": "skipped", "estimated_usd": "estimate",
    "actual_usd": "spent", "confirmed_usd": "confirmed", "estimated_spend_usd": "estimated",
    "at_risk_usd": "at risk $", "cache_saved_usd": "cache saved", "error_usd": "error",
    "mean_abs_error_usd": "mean |error|", "error_pct": "error %", "run_id": "run",
    "shot_id": "shot", "first_day": "first day", "lost_as": "lost as",
    "failure_reason": "why", "lost_failed_usd": "lost (failed)",
    "lost_rejected_usd": "lost (rejected)",
}
EMPTY = {
    "estimate_error": "No vendor stated its own charge in these runs, so there is no estimate "
                      "to check against one.",
    "lost": "Nothing was lost: no failed attempt was billed and no take was rejected.",
    "top_shots": "No shot cost anything.",
    "runs": "No run has an attempt in the dates asked for.",
}
TERMINAL = ["by_provider", "by_model", "by_day", "by", "estimate_error", "lost", "top_shots",
            "runs"]
HIDDEN = {"folder", "review", "first_started"}  # long paths: the CSV files and the page have them


def usd(value: Any) -> str:
    """$1,234.50; amounts under a cent keep their micro-dollars ($0.000125); '' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    v = float(value)
    if v != 0 and abs(v) < 0.01:
        return f"{'-' if v < 0 else ''}${abs(v):.6f}".rstrip("0")
    return f"{'-' if v < 0 else ''}${abs(v):,.2f}"


def _cell(col: str, value: Any) -> str:
    if col.endswith("_usd"):
        return usd(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if col == "error_pct" or col == "pct_of_cap":
        return f"{float(value):+.1f}%" if col == "error_pct" else f"{float(value):.1f}%"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table_text(df: pd.DataFrame, hidden: frozenset[str] = frozenset()) -> str:
    """Columns aligned (numbers and money to the right), the index as the first columns."""
    flat = df.reset_index() if _has_index(df) else df.reset_index(drop=True)
    cols = [c for c in flat.columns if str(c) not in HIDDEN | hidden]
    numeric = {c for c in cols if pd.api.types.is_numeric_dtype(flat[c])
               or str(c).endswith("_usd")}
    head = [HEADERS.get(str(c), str(c)) for c in cols]
    body = [[_cell(str(c), v) for c, v in zip(cols, row, strict=True)]
            for row in flat[cols].itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if col in numeric else c.ljust(w)
                         for c, w, col in zip(cells, widths, cols, strict=True)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _has_index(df: pd.DataFrame) -> bool:
    return isinstance(df.index, pd.MultiIndex) or df.index.name is not None


def totals_text(totals: pd.DataFrame) -> str:
    t = totals.iloc[0]
    runs = int(t["runs"])
    return "\n".join([
        f"Spent {usd(t['actual_usd'])} in {runs} run{'s' if runs != 1 else ''}: "
        f"{usd(t['confirmed_usd'])} confirmed by vendors + {usd(t['estimated_spend_usd'])} "
        f"estimated (the vendor states no charge) + {usd(t['at_risk_usd'])} at risk (no final "
        "answer yet).",
        f"The cache saved {usd(t['cache_saved_usd'])} ({int(t['cached'])} clip(s) reused). "
        f"Lost {usd(t['lost_failed_usd'])} to failed attempts and "
        f"{usd(t['lost_rejected_usd'])} to rejected takes.",
    ])


def window_text(w: dict[str, Any]) -> str:
    """One spend window: limit, spent, reserved, left, and when it runs out at this pace."""
    limit = "no limit" if w.get("limit_usd") is None else f"limit {usd(w['limit_usd'])}"
    line = (f"{w['scope']} {w['period']} {w['start']} ({w['timezone']}): {limit}, spent "
            f"{usd(w['spent_usd'])}, reserved {usd(w['reserved_usd'])}")
    if w.get("remaining_usd") is not None:
        line += f", {usd(w['remaining_usd'])} left"
    return line + (f"; {w['forecast']}" if w.get("forecast") else "")


def report_text(tables: dict[str, pd.DataFrame], windows: list[dict[str, Any]] | None = None
                ) -> str:
    parts = [totals_text(tables["totals"])]
    for name in TERMINAL:
        if name not in tables:
            continue
        df = by_spend(tables[name]) if name == "runs" else tables[name]
        title = REPORT_TABLES[name]
        if name == "by":
            title += ": " + ", ".join(df.attrs.get("keys", []))
        # narrower on a terminal: the CSV files, --json and the page keep these columns
        hidden = frozenset({"skipped"} if name == "estimate_error" else
                           {"skipped", "estimated_usd"})
        parts.append(f"== {title}\n" + (EMPTY.get(name, "Nothing in the dates asked for.")
                                        if df.empty else table_text(df, hidden)))
    missing = tables["runs"].attrs.get("missing") or []
    if missing:
        parts.append("No cost.csv in: " + ", ".join(missing))
    if windows is not None:
        parts.append("== Spend windows\n" + ("\n".join(map(window_text, windows)) if windows
                                            else "No spend window is configured."))
    return "\n\n".join(parts) + "\n"


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    flat = df.reset_index() if _has_index(df) else df.reset_index(drop=True)
    out = []
    for row in flat.to_dict("records"):
        out.append({str(k): (None if isinstance(v, float) and math.isnan(v) else
                             v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


def report_json(tables: dict[str, pd.DataFrame], windows: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """The report for machines: the totals, every table as a list of rows, the windows."""
    out: dict[str, Any] = {"totals": _records(tables["totals"])[0],
                           "tables": {k: _records(v) for k, v in tables.items() if k != "totals"},
                           "missing": tables["runs"].attrs.get("missing") or []}
    if "by" in tables:
        out["by"] = tables["by"].attrs.get("keys", [])
    if windows is not None:
        out["windows"] = windows
    return out
