"""specs/vendors-demo.yaml end to end: every adapter through the Prefect flow against the
emulator, a verified cut, and a cost report that matches what the emulator charged.

The tour runs on a copy of the storyboard whose output is 320x180 instead of 720p: the
adapters and the money are the subject, and ten 720p conforms would be most of the test's CPU.
The 720p film itself is the README demo's (tests/test_e2e_local.py)."""

from __future__ import annotations

import csv
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from flows.media.probe import probe
from flows.storyboard.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "vendors-demo.yaml"
SIZE = (320, 180)


def small_copy(folder: Path) -> Path:
    """The tour with a 320x180 output, beside a copy of its assets (images stay inside the
    storyboard's folder)."""
    data = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    data["output"]["size"] = f"{SIZE[0]}x{SIZE[1]}"
    shutil.copytree(SPEC.parent / "assets", folder / "assets")
    path = folder / SPEC.name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def money(rows: list[dict[str, str]], provider: str | None = None) -> Decimal:
    return sum((Decimal(r["actual_usd"] or "0") for r in rows
                if provider is None or r["provider"] == provider), Decimal(0))


@pytest.mark.e2e
async def test_vendor_tour_renders_and_costs_match(emu_env, prefect_api: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.orchestration.flow import render_storyboard

    emu = emu_env
    emu.configure(latency=0.3, price_multiplier={"runway": 1.1, "runware": 0.9})
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    spec = small_copy(tmp_path / "board")
    result = await render_storyboard(storyboard=str(spec), out=str(out))
    assert result["ok"], result

    plan = make_plan(spec)
    assert [s.shot_id for s in plan.shots] == [s.shot_id for s in make_plan(SPEC).shots]
    info = probe(out / "final.mp4")
    assert (info.width, info.height, round(info.fps)) == (*SIZE, 24)
    assert abs(info.duration - plan.total_duration) <= 1 / 24 + 1e-6

    rows = read_rows(out / "cost.csv")
    stats = emu.stats()
    assert len(rows) == len(plan.shots)  # one attempt each, no retries needed
    for shot in plan.shots:
        vendor = shot.primary.provider
        assert stats[vendor]["submits"] == 1, vendor
        row = next(r for r in rows if r["shot_id"] == shot.shot_id)
        assert row["provider"] == vendor and row["status"] == "done" and row["job_id"]
        assert money(rows, vendor) == Decimal(str(round(stats[vendor]["charged_usd"], 6))), vendor
    # vendors that report their charge are billed from it; the rest from the estimate
    by_vendor = {r["provider"]: r["cost_source"] for r in rows}
    # fal: the billed units (x-fal-billable-units) x the account's unit price (Platform API)
    assert by_vendor["runway"] == "vendor" and by_vendor["fal"] == "vendor_units"
    assert by_vendor["luma"] == "estimate"
    assert money(rows) == Decimal(str(round(stats["total"]["charged_usd"], 6)))
