"""The scheduled cost report: a Prefect flow that rolls up every run under an output folder
(`storyreel report`'s tables), writes report.html next to the runs and publishes the summary
as a markdown artifact and the per-group spend as a table artifact, so the week's spend is on
the Prefect UI without opening a terminal (prefect.yaml deployment `weekly-cost-report`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.money.forecast import ledger_windows
from flows.money.report import REPORT_TABLES, aggregate_runs, parse_by
from flows.money.report_page import PAGE, write_report_page
from flows.money.report_text import report_json, totals_text, usd, window_text
from providers.errors import SpecError, redact


def _markdown(tables: dict[str, Any], windows: list[dict[str, Any]] | None, page: Path,
              title: str) -> str:
    table = tables.get("by", tables["by_provider"])
    keys = [str(k) for k in (table.index.names if table.index.names[0] else ["group"])]
    lines = [f"# {title}", "", totals_text(tables["totals"]).replace("\n", "  \n"), "",
             f"Page: `{page}`", "", "| " + " | ".join([*keys, "runs", "spent", "confirmed",
                                                     "estimated", "at risk", "cache saved"])
             + " |", "|" + "---|" * (len(keys) + 6)]
    for key, row in table.iterrows():
        names = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([*map(str, names), str(int(row["runs"])),
                                        *(usd(row[c]) for c in ("actual_usd", "confirmed_usd",
                                          "estimated_spend_usd", "at_risk_usd",
                                          "cache_saved_usd"))]) + " |")
    if windows:
        lines += ["", "## Spend windows", *(f"- {window_text(w)}" for w in windows)]
    return "\n".join(lines)


@flow(name="cost-report", log_prints=False)
def cost_report(folder: str = "runs", days: int | None = 7, by: str | None = None,
                html: str | None = None) -> dict[str, Any]:
    """Report the runs under `folder` whose attempts started in the last `days` days (None:
    all of them), grouped also `by` (e.g. "tag:client"); the page goes to `html`, by default
    <folder>/report.html. Returns the report's totals and the page's path."""
    logger = get_run_logger()
    try:
        keys = parse_by(by)
    except ValueError as exc:
        raise SpecError([("by", str(exc))]) from None
    since = None if days is None else (datetime.now(UTC) - timedelta(days=max(days, 1) - 1)).date()
    tables = aggregate_runs([Path(folder)], since=since, by=keys)
    windows = ledger_windows()
    page = write_report_page(tables, Path(html) if html else Path(folder) / PAGE, windows)
    title = f"Cost report: {folder}" + (f", since {since}" if since else "")
    create_markdown_artifact(redact(_markdown(tables, windows, page, title)), key="cost-report",
                             description="spend over the runs of an output folder")
    group = "by" if "by" in tables else "by_provider"
    create_table_artifact(report_json(tables)["tables"][group], key="cost-report-groups",
                          description=REPORT_TABLES[group])
    logger.info("%s; page %s", totals_text(tables["totals"]).splitlines()[0], page)
    return {"page": str(page), **report_json(tables)["totals"]}
