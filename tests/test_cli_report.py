"""`storyreel report DIR...`: many runs' cost.csv rolled up, printed and written as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flows.cli.commands import main
from flows.money.report import write_cost_csv


def run_folder(root: Path, run_id: str, day: str, rows: list[tuple[str, str, float, float]]) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    write_cost_csv([{
        "run_id": run_id, "shot_id": f"s{i}", "attempt": 1, "provider": p, "model": m,
        "job_id": f"j{i}", "status": "done", "failure_reason": None, "duration_s": 5,
        "estimated_usd": est, "reserved_usd": est, "actual_usd": act, "cost_source": "vendor",
        "cache_hit": False, "queued_s": None, "generation_s": 1.0, "download_s": 0.1,
        "started_at": f"{day}T10:00:00+00:00", "finished_at": f"{day}T10:01:00+00:00",
    } for i, (p, m, est, act) in enumerate(rows)], folder / "cost.csv")
    return folder


def test_report_aggregates_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = run_folder(tmp_path, "r1", "2026-11-20", [("fal", "kling", 0.35, 0.35),
                                                    ("runway", "gen4.5", 0.60, 0.66)])
    b = run_folder(tmp_path, "r2", "2026-11-21", [("fal", "kling", 0.35, 0.35)])
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== Spend by provider" in printed and "== Spend by day" in printed
    with open(out / "by_provider.csv", newline="") as fh:
        rows = {r["provider"]: r for r in csv.DictReader(fh)}
    assert float(rows["fal"]["actual_usd"]) == pytest.approx(0.70)
    assert float(rows["runway"]["actual_usd"]) == pytest.approx(0.66)
    assert (out / "by_day.csv").exists() and (out / "estimate_error.csv").exists()


def test_report_without_any_cost_csv_is_a_clear_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no cost.csv found" in err and "Traceback" not in err
