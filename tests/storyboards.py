"""Write small storyboards for tests, and read back what a run left behind."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml


def write_board(folder: Path, shots: list[dict[str, Any]], *, name: str = "board.yaml",
                **top: Any) -> Path:
    """A storyboard with a small, fast output format unless told otherwise."""
    data: dict[str, Any] = {"version": 1, "title": top.pop("title", "test board"),
                            "output": top.pop("output", {"size": "320x180", "fps": 12})}
    data.update(top)
    data["shots"] = shots
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def cost_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "cost.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def total(rows: list[dict[str, str]], column: str = "actual_usd") -> Decimal:
    return sum((Decimal(r[column] or "0") for r in rows), Decimal(0))


def charged(emu: Any, vendor: str | None = None) -> Decimal:
    stats = emu.stats(vendor) if vendor else emu.stats()["total"]
    return Decimal(str(round(stats["charged_usd"], 6)))
