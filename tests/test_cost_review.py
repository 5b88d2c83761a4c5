"""`storyreel report` as a cost review: a folder of runs found recursively, grouped by cost
tag, lost and saved money, dates, --json, report.html in a real browser, the spend windows'
forecast, and the scheduled report flow. Runs are written as cost.csv rows by hand, with
figures chosen here; every expectation below is arithmetic on those figures."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli.commands import main
from flows.money.forecast import with_forecasts
from flows.money.report import write_cost_csv
from flows.money.window import WindowSpec, status
from flows.money.window_sql import open_store
from tests import browser


def row(run: str, shot: str, provider: str, model: str, status_: str, source: str,
        est: float, act: float, day: str, take: int = 1, attempt: int = 1,
        at_risk: bool = False, reason: str | None = None) -> dict[str, Any]:
    return {"run_id": run, "shot_id": shot, "attempt": attempt, "take": take,
            "provider": provider, "model": model, "job_id": f"{run}-{shot}-{take}-{attempt}",
            "status": status_, "failure_reason": reason, "duration_s": 2, "estimated_usd": est,
            "reserved_usd": est, "actual_usd": act, "cost_source": source, "at_risk": at_risk,
            "cache_hit": status_ == "cached", "queued_s": None, "generation_s": 1.0,
            "download_s": 0.1, "started_at": f"{day}T09:30:00+00:00",
            "finished_at": f"{day}T09:31:00+00:00"}


def run_folder(folder: Path, rows: list[dict[str, Any]], tags: dict[str, str] | None = None,
               review: bool = False) -> Path:
    folder.mkdir(parents=True)
    tag_cell = ";".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))
    write_cost_csv([{**r, "tags": tag_cell} for r in rows], folder / "cost.csv")
    (folder / "run.json").write_text(json.dumps({"plan": {"title": f"board {folder.name}"},
                                                 "tags": tags or {}}))
    if review:
        (folder / "review.html").write_text("<!doctype html><title>review</title>")
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Four runs at different depths of one folder:
    acme-1 (client=acme, 2026-11-20): s1 $0.40 vendor (est 0.50); s2 a failed attempt the vendor
      billed $0.25 (est 0.50), then runway $1.00 by estimate; s3 take 1 $0.30 (rejected in
      review) and take 2 $0.30, both vendor-priced (est 0.30 each)     -> $2.25
    beta-1 (client=beta, 2026-11-21): one cache hit worth $0.80      -> $0, $0.80 saved
    plain-1 (no tags, 2026-11-25): a job still at a vendor, $0.70 held -> $0.70 at risk
    old-1 (client=acme, 2026-10-01): $5.00 vendor                      -> outside --since
    """
    root = tmp_path / "runs"
    acme = run_folder(root / "2026-11" / "acme" / "acme-1", [
        row("acme-1", "s1", "fal", "kling", "done", "vendor", 0.50, 0.40, "2026-11-20"),
        row("acme-1", "s2", "fal", "kling", "failed", "vendor", 0.50, 0.25, "2026-11-20",
            reason="content policy"),
        row("acme-1", "s2", "runway", "gen4", "done", "estimate", 1.00, 1.00, "2026-11-20",
            attempt=2),
        row("acme-1", "s3", "fal", "kling", "done", "vendor", 0.30, 0.30, "2026-11-20"),
        row("acme-1", "s3", "fal", "kling", "done", "vendor", 0.30, 0.30, "2026-11-20", take=2),
    ], {"client": "acme", "campaign": "spring"}, review=True)
    (acme / "review.yaml").write_text(yaml.safe_dump(
        {"shots": {"s3": {"rejected": [1], "note": "dark"}}}))
    run_folder(root / "2026-11" / "beta-1", [
        row("beta-1", "s1", "fal", "kling", "cached", "none", 0.80, 0.0, "2026-11-21"),
    ], {"client": "beta"})
    run_folder(root / "plain-1", [
        row("plain-1", "s1", "luma", "ray2", "submitted", "reservation", 0.70, 0.70,
            "2026-11-25", at_risk=True),
    ])
    run_folder(root / "archive" / "old-1", [
        row("old-1", "s1", "fal", "kling", "done", "vendor", 5.00, 5.00, "2026-10-01"),
    ], {"client": "acme"})
    return root


@pytest.fixture(autouse=True)
def no_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORYREEL_LEDGER_URL", raising=False)
    monkeypatch.delenv("STORYREEL_BUDGETS", raising=False)
    monkeypatch.setenv("STORYREEL_HOME", str(tmp_path / "home"))


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_folder_of_runs_by_tag_with_lost_saved_and_at_risk_money(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    got = report_json(capsys, str(runs), "--since", "2026-11-01", "--by", "tag:client")
    t = got["totals"]
    assert t["runs"] == 3
    assert t["actual_usd"] == pytest.approx(0.40 + 0.25 + 1.00 + 0.30 + 0.30 + 0.70)
    assert t["confirmed_usd"] == pytest.approx(0.40 + 0.25 + 0.30 + 0.30)
    assert t["estimated_spend_usd"] == pytest.approx(1.00)
    assert t["at_risk_usd"] == pytest.approx(0.70)
    assert t["cache_saved_usd"] == pytest.approx(0.80)
    assert t["lost_failed_usd"] == pytest.approx(0.25)
    assert t["lost_rejected_usd"] == pytest.approx(0.30)

    groups = {g["tag:client"]: g for g in got["tables"]["by"]}
    assert set(groups) == {"acme", "beta", "(none)"}  # old-1's acme money is outside --since
    assert groups["acme"]["actual_usd"] == pytest.approx(2.25)
    # a group that spent nothing still shows, with what the cache saved it
    assert groups["beta"]["actual_usd"] == 0 and groups["beta"]["cache_saved_usd"] == 0.80
    assert groups["(none)"]["at_risk_usd"] == pytest.approx(0.70)

    # estimate error only where the vendor stated the charge (runway's was our estimate)
    [err] = got["tables"]["estimate_error"]
    assert (err["provider"], err["model"], err["n"]) == ("fal", "kling", 4)
    assert err["estimated_usd"] == pytest.approx(1.60) and err["actual_usd"] == pytest.approx(1.25)

    top = got["tables"]["top_shots"][0]
    assert (top["run_id"], top["shot_id"], top["actual_usd"]) == ("acme-1", "s2", 1.25)
    assert top["review"].endswith("acme-1/review.html#shot-s2")
    lost = {(r["shot_id"], r["take"], r["lost_as"]) for r in got["tables"]["lost"]}
    assert lost == {("s2", 1, "failed"), ("s3", 1, "rejected")}
    days = {d["day"] for d in got["tables"]["by_day"]}
    assert days == {"2026-11-20", "2026-11-21", "2026-11-25"}

    # --until, and tags on two keys
    got = report_json(capsys, str(runs), "--until", "2026-11-20", "--by", "tag:campaign,provider")
    assert {r["run_id"] for r in got["tables"]["runs"]} == {"acme-1", "old-1"}
    by = {(g["tag:campaign"], g["provider"]): g["actual_usd"] for g in got["tables"]["by"]}
    assert by == {("spring", "fal"): pytest.approx(1.25), ("spring", "runway"): 1.0,
                  ("(none)", "fal"): 5.0}


def test_the_terminal_report_reads_as_money_and_sentences(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs / "2026-11" / "beta-1"), str(runs / "plain-1")]) == 0
    text = capsys.readouterr().out
    assert "Empty DataFrame" not in text and "NaN" not in text and "Index: []" not in text
    assert "Spent $0.70 in 2 runs" in text and "The cache saved $0.80" in text
    assert "no estimate to check" in text  # no vendor priced anything here: said in a sentence
    assert "Nothing was lost" in text
    # aligned: every line of a table has its money column ending at the same place
    table = text.split("== Spend by provider\n")[1].split("\n\n")[0].splitlines()
    ends = {m.end() for line in table[2:] for m in [re.search(r"\$\d+\.\d\d", line)] if m}
    assert len(table) == 4 and len(ends) == 1
    runs = text.split("== Runs, most expensive first\n")[1]
    assert runs.index("plain-1") < runs.index("beta-1")  # $0.70 before $0


def test_report_html_in_a_real_browser(runs: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    today = datetime.now(UTC).date()
    monkeypatch.setenv("STORYREEL_LEDGER_URL", f"sqlite:///{tmp_path / 'budgets.sqlite'}")
    seed_ledger(tmp_path / "budgets.sqlite", today, month_limit=100.0, month_spent=30.0,
                days={today: 10.0, today - timedelta(days=1): 10.0})
    page = runs / "report.html"
    assert main(["report", str(runs), "--by", "tag:client", "--html", str(page)]) == 0
    assert "page: " in capsys.readouterr().out
    report = browser.load(page, 1280, 1000)
    assert report.errors == []
    for chart in ("spend-per-day", "spend-by-model", "confirmed-estimated-at-risk",
                  "estimate-error", "money-lost", "cache-savings", "by-group", "spend-windows"):
        figure = re.search(rf'<figure[^>]*id="chart-{chart}".*?</figure>', report.html, re.S)
        assert figure and "<svg" in figure.group(0) and "<path" in figure.group(0), chart
    # nothing to fetch: no script, style, image or font from anywhere
    assert not re.search(r'(?:src|href)="(?!#)[^"]*://', page.read_text())
    assert "<script" not in page.read_text()
    # the most expensive shot links to its run's review page, relative to report.html
    link = re.search(r'<a href="([^"]+)">s2</a>', report.html)
    assert link and link.group(1) == "2026-11/acme/acme-1/review.html#shot-s2"
    assert (page.parent / link.group(1).split("#")[0]).is_file()
    assert "beta" in report.text and "runs out on" in report.text or "lasts until" in report.text
    if shot := os.environ.get("STORYREEL_REPORT_SCREENSHOT"):  # docs/report.png is made so
        browser.save_screenshot(report, Path(shot))


def seed_ledger(path: Path, today: date, month_limit: float, month_spent: float,
                days: dict[date, float], scope: str = "team") -> None:
    store = open_store(f"sqlite:///{path}")
    try:
        def step(tx: Any) -> None:
            tx.execute("INSERT INTO spend_windows (scope, period, start, timezone, limit_micros, "
                       "spent_micros, reserved_micros) VALUES (?, 'month', ?, 'UTC', ?, ?, 0)",
                       (scope, f"{today:%Y-%m}", int(month_limit * 1e6), int(month_spent * 1e6)))
            for day, spent in days.items():
                tx.execute("INSERT INTO spend_windows (scope, period, start, timezone, "
                           "limit_micros, spent_micros, reserved_micros) VALUES "
                           "(?, 'day', ?, 'UTC', NULL, ?, 0)",
                           (scope, day.isoformat(), int(spent * 1e6)))
        store.atomic(step)
    finally:
        store.close()


@pytest.mark.parametrize(("limit", "days", "runs_out"), [
    # 7 days of $6 (the week before: $18 on the 1st, outside the pace): $40 left -> 6 days
    (100.0, {**{date(2026, 12, 4) + timedelta(days=i): 6.0 for i in range(7)},
             date(2026, 12, 1): 18.0}, "2026-12-16"),
    # the same pace with $140 left lasts past the month's end
    (200.0, {**{date(2026, 12, 4) + timedelta(days=i): 6.0 for i in range(7)},
             date(2026, 12, 1): 18.0}, None),
])
def test_a_monthly_window_runs_out_at_the_recent_pace(tmp_path: Path, limit: float,
                                                      days: dict[date, float],
                                                      runs_out: str | None) -> None:
    now = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
    seed_ledger(tmp_path / "b.sqlite", now.date(), limit, sum(days.values()), days)
    store = open_store(f"sqlite:///{tmp_path / 'b.sqlite'}")
    try:
        spec = WindowSpec("team", monthly_usd=None)
        windows = with_forecasts(store, status(store, [], now=now), now=now)
    finally:
        store.close()
    [month] = [w for w in windows if w["period"] == "month"]
    assert spec.scope == month["scope"]
    assert month["rate_usd_per_day"] == pytest.approx(6.0)
    assert month["runs_out"] == runs_out
    assert ("runs out on 2026-12-16" in month["forecast"]) == (runs_out is not None)


def test_storyreel_budget_shows_the_forecast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    today = datetime.now(UTC).date()
    monkeypatch.setenv("STORYREEL_LEDGER_URL", f"sqlite:///{tmp_path / 'b.sqlite'}")
    # a scope two days old, $10 a day, $70 of $100 left -> 7 more days, unless the month ends
    seed_ledger(tmp_path / "b.sqlite", today, 100.0, 30.0,
                {today: 10.0, today - timedelta(days=1): 10.0})
    assert main(["budget"]) == 0
    out = capsys.readouterr().out
    gone = today + timedelta(days=7)
    if gone.month == today.month:
        assert f"runs out on {gone.isoformat()} at $10.00/day over the last 2 day(s)" in out
    else:
        assert "lasts until the window ends" in out


def test_the_scheduled_report_publishes_artifacts(runs: Path, prefect_api: str) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    from flows.orchestration.report_flow import cost_report

    result = cost_report(folder=str(runs), days=None, by="tag:client")
    assert Path(result["page"]) == runs / "report.html" and (runs / "report.html").is_file()
    assert result["actual_usd"] == pytest.approx(2.95 + 5.00)

    async def latest(key: str) -> Any:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key={"any_": [key]}))
        return sorted(found, key=lambda a: a.created)[-1]

    md = asyncio.run(latest("cost-report")).data
    assert "Spent $7.95 in 4 runs" in md and "| acme | 2 | $7.25 |" in md
    table = asyncio.run(latest("cost-report-groups")).data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["tag:client"] for r in rows} == {"acme", "beta", "(none)"}
