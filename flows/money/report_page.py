"""report.html: the cost report of many runs as one self-contained page, charts beside tables.

The charts are matplotlib figures written as SVG straight into the page (text kept as text,
so it stays small and searchable): no script, font or style from the network, so the page
opens from file:// offline and can be mailed or archived as one file. Links to the runs'
review pages are relative to the page. Every text that came from a storyboard, a tag or a
vendor is escaped.
"""

from __future__ import annotations

import html
import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from flows.files.atomic import write_text_atomic
from flows.money.report import REPORT_TABLES, by_spend
from flows.money.report_text import EMPTY, HEADERS, _cell, _has_index, totals_text, usd

PAGE = "report.html"
# colours a reader can tell apart (Okabe & Ito, https://jfly.uni-koeln.de/color/)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000"]
PARTS = [("confirmed_usd", "confirmed by vendors", "#009E73"),
         ("estimated_spend_usd", "estimated (vendor states no charge)", "#E69F00"),
         ("at_risk_usd", "at risk (no final answer yet)", "#D55E00")]
MAX_BARS = 15  # the rest of a long list is in the table beside the chart

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1d2733;color:#fff;padding:16px 24px}header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0}main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:16px 0;padding:12px 16px}
section h2{font-size:16px;margin:0 0 8px}.pair{display:flex;flex-wrap:wrap;gap:16px;
align-items:flex-start}.chart{flex:0 1 560px;min-width:320px;margin:0}.chart svg{width:100%;height:auto}
.table{flex:1 1 420px;min-width:0;overflow-x:auto}table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.empty{color:#555;font-style:italic}
.note{color:#555;font-size:12px}
"""


def _svg(fig: Any, name: str) -> str:
    """A figure as inline SVG; ids prefixed so that several charts share one page."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # creator and date: noise
    text = re.sub(r'id="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r'url\(#([^)]+)\)', rf'url(#{name}-\1)', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', text)
    return (f'<figure class="chart" id="chart-{name}" role="img" '
            f'aria-label="{html.escape(name)}">{text}</figure>')


def _figure(height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "storyreel",
                         "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    fig, ax = plt.subplots(figsize=(6.4, height))
    return fig, ax


def _money_axis(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: usd(v) if v else "$0")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)
    ax.grid(axis=axis, color="#ddd", linewidth=0.6)
    ax.set_axisbelow(True)


def _hbars(name: str, labels: list[str], series: list[tuple[str, list[float], str]],
           stacked: bool = False) -> str:
    """Horizontal bars, one row per label (top to bottom), one colour per series."""
    fig, ax = _figure(max(1.6, 0.32 * len(labels) * (1 if stacked else len(series)) + 1.0))
    ys = list(range(len(labels)))[::-1]
    height = 0.8 if stacked else 0.8 / len(series)
    left = [0.0] * len(labels)
    for i, (label, values, colour) in enumerate(series):
        pos = ys if stacked else [y + (len(series) / 2 - i - 0.5) * height for y in ys]
        ax.barh(pos, values, height=height, left=left if stacked else None, color=colour,
                label=label)
        if stacked:
            left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(ys, [_short(x) for x in labels])
    _money_axis(ax, "x")
    if len(series) > 1:  # below the bars, never over them
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(labels) < 3 else -0.08),
                  ncol=len(series), frameon=False, fontsize=8)
    return _svg(fig, name)


def _short(text: str, n: int = 36) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def chart_day_provider(df: pd.DataFrame) -> str | None:
    if df.empty or not len(df.columns) or not df.to_numpy().sum():
        return None
    fig, ax = _figure()
    bottom = [0.0] * len(df)
    xs = list(range(len(df)))
    for i, provider in enumerate(df.columns):
        values = [float(v) for v in df[provider]]
        ax.bar(xs, values, bottom=bottom, color=PALETTE[i % len(PALETTE)], label=str(provider),
               width=0.7)
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    step = max(1, len(xs) // 12)
    ax.set_xticks(xs[::step], [str(d) for d in df.index][::step], rotation=30, ha="right")
    _money_axis(ax)
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig, "spend-per-day")


def chart_models(df: pd.DataFrame) -> str | None:
    top = df[df["actual_usd"] > 0].sort_values("actual_usd", ascending=False).head(MAX_BARS)
    if top.empty:
        return None
    labels = [f"{p}:{m}" for p, m in top.index]
    return _hbars("spend-by-model", labels, [
        (label, [float(v) for v in top[col]], colour) for col, label, colour in PARTS],
        stacked=True)


def chart_parts(totals: pd.DataFrame) -> str | None:
    t = totals.iloc[0]
    if not float(t["actual_usd"]):
        return None
    return _hbars("confirmed-estimated-at-risk", ["all runs"],
                  [(label, [float(t[col])], colour) for col, label, colour in PARTS],
                  stacked=True)


def chart_estimate_error(df: pd.DataFrame) -> str | None:
    if df.empty:
        return None
    top = df.head(MAX_BARS)
    labels = [f"{p}:{m}" for p, m in top.index]
    return _hbars("estimate-error", labels, [
        ("our estimate", [float(v) for v in top["estimated_usd"]], "#999999"),
        ("vendor's figure", [float(v) for v in top["actual_usd"]], "#0072B2")])


def chart_lost(totals: pd.DataFrame) -> str | None:
    t = totals.iloc[0]
    failed, rejected = float(t["lost_failed_usd"]), float(t["lost_rejected_usd"])
    if not failed and not rejected:
        return None
    return _hbars("money-lost", ["failed attempts (billed)", "rejected takes"],
                  [("lost", [failed, rejected], "#D55E00")])


def chart_cache(df: pd.DataFrame, name: str) -> str | None:
    """Spent vs what the cache saved, per group (a group that spent $0 is still a row)."""
    if df.empty or not float(df["cache_saved_usd"].sum()) and not float(df["actual_usd"].sum()):
        return None
    top = df.head(MAX_BARS)
    labels = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in top.index]
    return _hbars(name, labels, [
        ("spent", [float(v) for v in top["actual_usd"]], "#0072B2"),
        ("saved by the cache", [float(v) for v in top["cache_saved_usd"]], "#009E73")])


def chart_windows(windows: list[dict[str, Any]]) -> str | None:
    limited = [w for w in windows if w.get("limit_usd")]
    if not limited:
        return None
    labels = [f"{w['scope']} {w['period']} {w['start']}" for w in limited]
    left = [max(float(w["limit_usd"]) - float(w["spent_usd"]) - float(w["reserved_usd"]), 0.0)
            for w in limited]
    return _hbars("spend-windows", labels, [
        ("spent", [float(w["spent_usd"]) for w in limited], "#0072B2"),
        ("reserved", [float(w["reserved_usd"]) for w in limited], "#E69F00"),
        ("left", left, "#DDDDDD")], stacked=True)


def _link(target: str, page_dir: Path, text: str) -> str:
    if not target:
        return html.escape(text)
    path, _, anchor = target.partition("#")
    rel = Path(os.path.relpath(path, page_dir)).as_posix()
    href = html.escape(rel + (f"#{anchor}" if anchor else ""), quote=True)
    return f'<a href="{href}">{html.escape(text)}</a>'


def table_html(df: pd.DataFrame, page_dir: Path, hidden: frozenset[str] = frozenset()) -> str:
    flat = df.reset_index() if _has_index(df) else df.reset_index(drop=True)
    cols = [c for c in flat.columns if str(c) not in hidden | {"folder", "first_started"}]
    numeric = {c for c in cols if str(c).endswith("_usd")
               or (pd.api.types.is_numeric_dtype(flat[c]) and str(c) not in ("take",))}
    head = "".join(f'<th class="{"n" if c in numeric else ""}">'
                   f'{html.escape(HEADERS.get(str(c), str(c)))}</th>' for c in cols
                   if c != "review")
    rows = []
    for rec in flat.to_dict("records"):
        cells = []
        for c in cols:
            if c == "review":
                continue
            text = _cell(str(c), rec[c])
            if c in ("run_id", "shot_id") and "review" in rec and rec["review"]:
                target = rec["review"] if c == "shot_id" or "#" not in rec["review"] else \
                    rec["review"].partition("#")[0]
                cells.append(f"<td>{_link(target, page_dir, text)}</td>")
            else:
                cells.append(f'<td class="{"n" if c in numeric else ""}">'
                             f"{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _section(sid: str, title: str, chart: str | None, table: str, empty: str,
             note: str = "") -> str:
    body = (f'<div class="pair">{chart or ""}<div class="table">{table}</div></div>'
            if table else f'<p class="empty">{html.escape(empty)}</p>')
    if chart is None and table:
        body = f'<div class="pair"><div class="table">{table}</div></div>'
    extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}{extra}</section>'


def report_html(tables: dict[str, pd.DataFrame], page_dir: Path,
                windows: list[dict[str, Any]] | None = None, title: str = "Cost report") -> str:
    d = page_dir
    totals = tables["totals"]
    t = totals.iloc[0]
    narrow = frozenset({"skipped", "estimated_usd"})

    def tbl(name: str, hidden: frozenset[str] = narrow) -> str:
        df = by_spend(tables[name]) if name == "runs" else tables[name]
        return "" if df.empty else table_html(df, d, hidden)

    days = tables["by_day"].index
    span = f"{days.min()} to {days.max()}" if len(days) else "no attempts"
    parts = [
        _section("parts", "Confirmed by vendors, estimated, at risk", chart_parts(totals),
                 table_html(totals, d, frozenset({"skipped"})),
                 "Nothing was spent."),
        _section("per-day", REPORT_TABLES["by_day_provider"],
                 chart_day_provider(tables["by_day_provider"]), tbl("by_day"),
                 "No attempt in the dates asked for."),
        _section("by-model", REPORT_TABLES["by_model"], chart_models(tables["by_model"]),
                 tbl("by_model"), "No attempt in the dates asked for."),
    ]
    if "by" in tables:
        keys = ", ".join(tables["by"].attrs.get("keys", []))
        parts.append(_section("by", f"{REPORT_TABLES['by']}: {keys}",
                              chart_cache(tables["by"], "by-group"), tbl("by"),
                              "No attempt in the dates asked for.",
                              "A group that spent nothing still shows, with what the cache "
                              "saved it."))
    parts += [
        _section("estimate-error", REPORT_TABLES["estimate_error"],
                 chart_estimate_error(tables["estimate_error"]),
                 tbl("estimate_error", frozenset()), EMPTY["estimate_error"]),
        _section("lost", REPORT_TABLES["lost"], chart_lost(totals), tbl("lost"), EMPTY["lost"]),
        _section("cache", "What the cache saved (clips reused instead of rendered again)",
                 chart_cache(tables["by_provider"], "cache-savings"),
                 table_html(tables["by_provider"][["cached", "actual_usd", "cache_saved_usd"]],
                            d) if not tables["by_provider"].empty else "",
                 "No attempt in the dates asked for."),
        _section("top-shots", REPORT_TABLES["top_shots"], None, tbl("top_shots"),
                 EMPTY["top_shots"]),
        _section("runs", REPORT_TABLES["runs"], None, tbl("runs"), EMPTY["runs"]),
    ]
    if windows is not None:
        wt = pd.DataFrame([{
            "scope": w["scope"], "period": w["period"], "start": w["start"],
            "limit_usd": w.get("limit_usd"), "spent_usd": w["spent_usd"],
            "reserved_usd": w["reserved_usd"], "remaining_usd": w.get("remaining_usd"),
            "rate_usd_per_day": w.get("rate_usd_per_day"),
            "runs_out": w.get("runs_out") or "", "forecast": w.get("forecast", "")}
            for w in windows])
        parts.append(_section("windows", "Spend windows and when they run out at this pace",
                              chart_windows(windows), "" if wt.empty else table_html(wt, d),
                              "No spend window is configured."))
    missing = tables["runs"].attrs.get("missing") or []
    head = (f"<header><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(totals_text(totals))}</p>"
            f"<p>{int(t['runs'])} run(s), {html.escape(span)}; made "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>"
            + (f"<p>No cost.csv in: {html.escape(', '.join(missing))}</p>" if missing else "")
            + "</header>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>{head}<main>{''.join(parts)}</main>"
            "</body></html>")


def write_report_page(tables: dict[str, pd.DataFrame], path: Path,
                      windows: list[dict[str, Any]] | None = None) -> Path:
    """Write report.html (a folder given: report.html inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path / PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, report_html(tables, path.parent.resolve(), windows))
