from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from flows.money.journal import Journal
from flows.money.report import (
    COLUMNS,
    aggregate_runs,
    format_frame,
    money_text,
    rows_from_journal,
    summarize,
    write_cost_csv,
)
from flows.money.spend import totals


def _attempt(j: Journal, shot: str, n: int, provider: str, model: str, est: float) -> int:
    return j.intent(shot_id=shot, attempt=n, provider=provider, model=model, cache_key="k",
                    estimated_usd=est, reserved_usd=est)


def _journal(path: Path) -> Journal:
    """A run with one of everything: paid, failed (charged and not), cached, skipped, ..."""
    j = Journal(path, run_id="run-A")
    r = _attempt(j, "s1", 1, "fal", "kling", 0.1)
    j.submitted(r, "fal-1", {})
    j.status(r, "failed", failure_reason="transient", actual_usd=0, cost_source="none")
    r = _attempt(j, "s1", 2, "fal", "kling", 0.1)
    j.submitted(r, "fal-2", {})
    j.status(r, "done", actual_usd=0.2, cost_source="vendor", queued_s=1.5, generation_s=30.25)
    r = _attempt(j, "s2", 1, "runway", "gen4", 0.5)
    j.submitted(r, "rw-1", {})
    j.status(r, "failed", failure_reason="content_policy", actual_usd=0.5, cost_source="estimate")
    j.record(shot_id="s3", attempt=1, provider="fal", model="kling", status="cached",
             estimated_usd=0.1, actual_usd=0.1, cost_source="vendor")  # the reuse itself is free
    j.record(shot_id="s4", attempt=1, provider="luma", model="ray-2", status="skipped",
             estimated_usd=2.0, failure_reason="budget")
    r = _attempt(j, "s5", 1, "luma", "ray-2", 0.3)
    j.status(r, "unconfirmed", failure_reason="unconfirmed")
    r = _attempt(j, "s6", 1, "fal", "kling", 0.1)
    j.submitted(r, "fal-3", {})
    j.status(r, "done", actual_usd=0.1)  # charged, source not recorded: it was the estimate
    return j


DURATIONS = {"s1": 5.0, "s2": 10.0, "s3": 5.0, "s4": 4.0, "s5": 6.0, "s6": 5.0}


def test_rows_from_journal(tmp_path: Path) -> None:
    with _journal(tmp_path / "j.sqlite") as j:
        rows = rows_from_journal(j, DURATIONS)
    assert [list(r) for r in rows] == [COLUMNS] * 7
    by = {(r["shot_id"], r["attempt"]): r for r in rows}
    assert by["s1", 1]["actual_usd"] == 0 and by["s1", 1]["cost_source"] == "none"
    assert by["s1", 2]["actual_usd"] == 0.2 and by["s1", 2]["cost_source"] == "vendor"
    assert by["s1", 2]["job_id"] == "fal-2" and by["s1", 2]["duration_s"] == 5.0
    assert by["s2", 1]["actual_usd"] == 0.5 and by["s2", 1]["cost_source"] == "estimate"
    assert by["s3", 1]["cache_hit"] and by["s3", 1]["actual_usd"] == 0
    assert by["s3", 1]["cost_source"] == "none"
    assert by["s4", 1]["actual_usd"] == 0 and by["s4", 1]["failure_reason"] == "budget"
    assert by["s5", 1]["status"] == "unconfirmed" and by["s5", 1]["reserved_usd"] == 0.3
    # may have been charged: reported at what was reserved, flagged at risk, never $0
    assert by["s5", 1]["actual_usd"] == 0.3 and by["s5", 1]["at_risk"]
    assert by["s5", 1]["cost_source"] == "reservation"
    assert not any(r["at_risk"] for r in rows if r["shot_id"] != "s5")
    assert by["s6", 1]["cost_source"] == "estimate"
    assert all(r["run_id"] == "run-A" for r in rows)


def test_cost_csv_is_clean_and_atomic(tmp_path: Path) -> None:
    rows = [
        {c: None for c in COLUMNS}
        | {"run_id": "r", "shot_id": "s1", "attempt": 1, "provider": "fal", "model": "m",
           "status": "done", "estimated_usd": 0.1 + 0.2, "reserved_usd": 0.3,
           "actual_usd": 0.0000014, "cost_source": "vendor", "cache_hit": False,
           "queued_s": 1.23456789},
        {c: None for c in COLUMNS}
        | {"run_id": "r", "shot_id": "s2", "attempt": 1, "provider": "fal", "model": "m",
           "status": "cached", "estimated_usd": 12, "actual_usd": 0, "cost_source": "none",
           "cache_hit": True},
    ]
    out = write_cost_csv(rows, tmp_path / "run" / "cost.csv")
    assert [p.name for p in out.parent.iterdir()] == ["cost.csv"]  # no temp file left
    text = out.read_text()
    assert "0.30000000000000004" not in text and "e-0" not in text
    got = list(csv.DictReader(text.splitlines()))
    assert list(got[0]) == COLUMNS
    assert got[0]["estimated_usd"] == "0.30" and got[0]["actual_usd"] == "0.000001"
    assert got[0]["queued_s"] == "1.235" and got[0]["cache_hit"] == "False"
    assert got[1]["estimated_usd"] == "12.00" and got[1]["reserved_usd"] == ""
    assert got[1]["cache_hit"] == "True" and got[1]["job_id"] == ""
    assert money_text(1.5) == "1.50" and money_text(None) == ""


def test_summarize_per_provider(tmp_path: Path) -> None:
    with _journal(tmp_path / "j.sqlite") as j:
        rows = rows_from_journal(j, DURATIONS)
    s = summarize(rows, cap_usd=2.0)
    assert list(s.index) == ["fal", "luma", "runway", "TOTAL"]
    fal, luma, total = s.loc["fal"], s.loc["luma"], s.loc["TOTAL"]
    assert (fal.attempts, fal.succeeded, fal.failed, fal.cached) == (3, 2, 1, 1)
    assert fal.estimated_usd == 0.3 and fal.actual_usd == 0.3 and fal.cache_saved_usd == 0.1
    assert (luma.attempts, luma.skipped, luma.at_risk, luma.actual_usd) == (1, 1, 1, 0.3)
    assert luma.at_risk_usd == 0.3 and fal.at_risk_usd == 0
    assert luma.estimated_usd == 0.3  # the skipped shot's estimate was never tried
    assert total.attempts == 5 and total.actual_usd == 1.1 and total.estimated_usd == 1.1
    assert s.attrs == {"cap_usd": 2.0, "spent_usd": 1.1, "remaining_usd": 0.9}
    assert total.pct_of_cap == 55.0
    assert "1.10" in format_frame(s)
    # s1's second attempt is the vendor's figure; the rest outside s5 are estimates
    assert totals(rows) == {"confirmed_usd": 0.2, "estimated_spend_usd": 0.6,
                            "at_risk_usd": 0.3, "total_usd": 1.1}
    empty = summarize([], cap_usd=None)
    assert list(empty.index) == ["TOTAL"] and empty.loc["TOTAL"].attempts == 0
    assert empty.attrs["remaining_usd"] is None


def _row(run: str, shot: str, provider: str, model: str, day: str, **kw) -> dict:
    base = {c: None for c in COLUMNS}
    base.update(run_id=run, shot_id=shot, attempt=1, provider=provider, model=model,
                status="done", cache_hit=False, started_at=f"{day}T10:00:00.5+00:00",
                cost_source="vendor")
    base.update(kw)
    return base


def test_aggregate_runs(tmp_path: Path) -> None:
    a, b = tmp_path / "run-a", tmp_path / "run-b"
    write_cost_csv([
        _row("A", "s1", "fal", "kling", "2025-03-01", estimated_usd=0.5, actual_usd=0.6),
        _row("A", "s2", "fal", "kling", "2025-03-01", estimated_usd=0.5, actual_usd=0.4),
        _row("A", "s3", "luma", "ray-2", "2025-03-01", status="failed", estimated_usd=1.0,
             actual_usd=0, cost_source="none"),
    ], a / "cost.csv")
    write_cost_csv([
        _row("B", "s1", "fal", "kling", "2025-03-02", estimated_usd=0.5, actual_usd=0.5),
        _row("B", "s2", "fal", "veo", "2025-03-02", status="cached", cache_hit=True,
             estimated_usd=3.0, actual_usd=0, cost_source="none"),
        _row("B", "s3", "luma", "ray-2", "2025-03-02", estimated_usd=1.0, actual_usd=1.0,
             cost_source="estimate"),
    ], b / "cost.csv")
    (tmp_path / "crashed").mkdir()
    agg = aggregate_runs([a, b / "cost.csv", tmp_path / "crashed"])

    prov = agg["by_provider"]
    assert all(str(prov[c].dtype) == "int64" for c in ("runs", "attempts", "failed", "cached"))
    assert prov.loc["fal", "runs"] == 2 and prov.loc["fal", "attempts"] == 3
    assert prov.loc["fal", "actual_usd"] == 1.5 and prov.loc["fal", "cached"] == 1
    assert prov.loc["luma", "failed"] == 1 and prov.loc["luma", "actual_usd"] == 1.0

    model = agg["by_model"]
    assert model.loc[("fal", "kling"), "actual_usd"] == 1.5
    assert model.loc[("fal", "veo"), "cache_saved_usd"] == 3.0

    day = agg["by_day"]
    assert list(day.index) == ["2025-03-01", "2025-03-02"]
    assert day.loc["2025-03-01", "actual_usd"] == 1.0 and day.loc["2025-03-02", "runs"] == 1

    err = agg["estimate_error"]  # vendor-reported actuals only: fal/kling, 3 rows
    assert list(err.index) == [("fal", "kling")]
    kling = err.loc[("fal", "kling")]
    assert kling.n == 3 and kling.estimated_usd == 1.5 and kling.actual_usd == 1.5
    assert kling.error_usd == 0 and kling.error_pct == 0
    assert kling.mean_abs_error_usd == pytest.approx(0.066667)

    runs = agg["runs"]
    assert list(runs.index) == ["A", "B"] and runs.loc["A", "actual_usd"] == 1.0
    assert runs.attrs["missing"] == [str(tmp_path / "crashed")]
    assert isinstance(format_frame(prov), str)

    with pytest.raises(FileNotFoundError):
        aggregate_runs([tmp_path / "crashed"])
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a storyreel cost.csv"):
        aggregate_runs([tmp_path / "bad.csv"])


def test_report_round_trip_from_journal(tmp_path: Path) -> None:
    with _journal(tmp_path / "run" / "journal.sqlite") as j:
        rows = rows_from_journal(j, DURATIONS)
    write_cost_csv(rows, tmp_path / "run" / "cost.csv")
    agg = aggregate_runs([tmp_path / "run"])
    direct = summarize(rows, cap_usd=None).drop(index="TOTAL")
    again = agg["by_provider"].drop(columns="runs")
    pd.testing.assert_frame_equal(direct, again, check_dtype=False, check_names=False)
