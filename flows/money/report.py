"""Cost reports: one CSV row per attempt, a per-provider summary, and roll-ups over many runs.

Conventions (finance reads these files):
* money is USD with at most 6 decimals and at least 2, written as plain decimals
  (never 1e-06), no float noise;
* actual_usd is each row's best figure, and cost_source says which it is:
  "vendor" (the vendor stated the charge: Runway credits, Runware, NanoGPT, Perf),
  "vendor_units" (the vendor counted the units and its price list priced them: fal's
  x-fal-billable-units x the account's unit price), "estimate" (the vendor charges but states
  no amount, so our catalog's estimate stands in), "reservation" (money still at a vendor, or
  a submit that may have reached one, with no final answer: counted at what was reserved for
  it) or "none" (nothing charged: cache hits, skips, failures the vendor does not bill);
* at_risk is true for the "reservation" rows: every job still at a vendor (submitted,
  running, cancel requested, abandoned, lost) and every unconfirmed submit, until a later run
  or `storyreel reconcile` learns the outcome;
* totals keep the three apart and never call an estimate a charge: confirmed_usd (vendor and
  vendor_units rows), estimated_spend_usd (estimate rows), at_risk_usd; total_usd is their
  sum, the figure every cap counts (cost.csv, run.json, the CLI, artifacts, review.html);
* "attempts" counts tries sent (or about to be sent) to a vendor: cache hits and
  skipped shots are rows of their own but not attempts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from flows.files.atomic import write_text_atomic
from flows.money.journal import Journal
from flows.money.spend import VENDOR_SOURCES, priced
from flows.money.status import AT_RISK, NOT_ATTEMPTS, SUCCEEDED, Status
from flows.money.usd import as_float, text
from flows.storyboard.tags import to_cell

COLUMNS = [
    "run_id",
    "shot_id",
    "attempt",
    "take",
    "provider",
    "model",
    "job_id",
    "status",
    "failure_reason",
    "duration_s",
    "estimated_usd",
    "reserved_usd",
    "actual_usd",
    "cost_source",
    "at_risk",
    "cache_hit",
    "queued_s",
    "generation_s",
    "download_s",
    "started_at",
    "finished_at",
    "tags",  # the run's cost tags, `client=acme;campaign=spring` (flows/storyboard/tags.py)
]
MONEY = ["estimated_usd", "reserved_usd", "actual_usd"]
SECONDS = ["duration_s", "queued_s", "generation_s", "download_s"]
FAILED = {Status.FAILED, Status.CANCELED}
COUNTS = ["attempts", "succeeded", "failed", "at_risk", "cached", "skipped"]




def money(value: Any) -> float:
    """A table cell as USD rounded to a micro-dollar (flows/money/usd.py); missing is 0."""
    return 0.0 if value is None or pd.isna(value) else as_float(value)


def money_text(value: Any) -> str:
    """A table cell as cost.csv writes money; '' for missing."""
    return "" if value is None or pd.isna(value) else text(value)


def rows_from_journal(journal: Journal, durations: dict[str, float],
                      tags: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One report row per journal row, in journal order, each carrying the run's tags."""
    cell = to_cell(tags)
    rows = []
    for a in journal.attempts():
        actual, source, risk = priced(a)
        rows.append(
            {
                "run_id": a.run_id,
                "shot_id": a.shot_id,
                "attempt": a.attempt,
                "take": a.take,
                "provider": a.provider,
                "model": a.model,
                "job_id": a.job_id,
                "status": a.status,
                "failure_reason": a.failure_reason,
                "duration_s": durations.get(a.shot_id),
                "estimated_usd": a.estimated_usd,
                "reserved_usd": a.reserved_usd,
                "actual_usd": actual,
                "cost_source": source,
                "at_risk": risk,
                "cache_hit": a.status == Status.CACHED,
                "queued_s": a.queued_s,
                "generation_s": a.generation_s,
                "download_s": a.download_s,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "tags": cell,
            }
        )
    return rows


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in MONEY + SECONDS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["actual_usd"] = df["actual_usd"].fillna(0.0)
    for col in ("cache_hit", "at_risk"):
        df[col] = [bool(v) if pd.notna(v) else False for v in df[col]]  # no silent downcast
    return df


def write_cost_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """cost.csv, written to a temp file and renamed so a reader never sees half of it."""
    path = Path(path)
    df = _frame(rows)
    out = df.astype(object)
    for col in MONEY:
        out[col] = [money_text(v) for v in df[col]]
    for col in SECONDS:
        out[col] = [("" if pd.isna(v) else round(float(v), 3)) for v in df[col]]
    write_text_atomic(path, out.to_csv(index=False))
    return path


def _counts(df: pd.DataFrame) -> pd.Series:
    tried = df[~df["status"].isin([str(s) for s in NOT_ATTEMPTS])]
    cached = df[df["status"] == "cached"]
    confirmed = df["cost_source"].isin(VENDOR_SOURCES) & ~df["at_risk"]
    return pd.Series(
        {
            "attempts": len(tried),
            "succeeded": int(df["status"].isin([str(s) for s in SUCCEEDED]).sum()),
            "failed": int(df["status"].isin([str(s) for s in FAILED]).sum()),
            "at_risk": int(df["at_risk"].sum()),
            "cached": len(cached),
            "skipped": int((df["status"] == "skipped").sum()),
            "estimated_usd": money(tried["estimated_usd"].fillna(0).sum()),
            "actual_usd": money(df["actual_usd"].sum()),
            "confirmed_usd": money(df.loc[confirmed, "actual_usd"].sum()),
            "estimated_spend_usd": money(
                df.loc[~confirmed & ~df["at_risk"], "actual_usd"].sum()),
            "at_risk_usd": money(df.loc[df["at_risk"], "actual_usd"].sum()),
            # what the cache hits would have cost to render again
            "cache_saved_usd": money(cached["estimated_usd"].fillna(0).sum()),
        }
    )


def _grouped(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    names = list(_counts(df.iloc[:0]).index)
    if df.empty:
        return pd.DataFrame(columns=names, index=pd.Index([], name=keys[0]))
    parts = [_counts(group) for _, group in df.groupby(keys, sort=True)]
    labels = [name for name, _ in df.groupby(keys, sort=True)]
    out = pd.DataFrame(parts, columns=names)
    out.index = (
        pd.MultiIndex.from_tuples(labels, names=keys)
        if len(keys) > 1
        else pd.Index([k[0] if isinstance(k, tuple) else k for k in labels], name=keys[0])
    )
    return out.astype({c: int for c in COUNTS})


def summarize(rows: list[dict[str, Any]], cap_usd: float | None) -> pd.DataFrame:
    """Per provider, plus a 'TOTAL' row; the cap and what is left of it are in `.attrs`."""
    df = _frame(rows)
    out = _grouped(df, ["provider"])
    out.loc["TOTAL"] = _counts(df)
    out = out.astype({c: int for c in COUNTS})
    spent = money(df["actual_usd"].sum())
    out.attrs["cap_usd"] = cap_usd
    out.attrs["spent_usd"] = spent
    out.attrs["remaining_usd"] = None if cap_usd is None else money(max(cap_usd - spent, 0.0))
    if cap_usd:
        out["pct_of_cap"] = (out["actual_usd"] / cap_usd * 100).round(2)
    return out


def read_cost_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"job_id": str, "run_id": str, "shot_id": str})
    if "at_risk" not in df.columns and "status" in df.columns:  # older cost.csv
        df["at_risk"] = df["status"].isin([str(s) for s in AT_RISK])
    if "take" not in df.columns:  # written before takes existed: every row was take 1
        df["take"] = 1
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a storyreel cost.csv (missing {', '.join(sorted(missing))})")
    for col in ("cache_hit", "at_risk"):
        df[col] = df[col].astype(str).str.lower().isin({"true", "1"})
    return _frame(df.to_dict("records"))


def aggregate_runs(run_dirs: list[Path]) -> dict[str, pd.DataFrame]:
    """Roll up many runs' cost.csv: by_provider, by_model, by_day, estimate_error, runs.

    Each path is a run folder holding cost.csv, or a cost.csv itself; folders
    without one (a run that never got that far) are left out of the totals and
    listed in `.attrs["missing"]` of the "runs" frame.
    """
    frames, missing = [], []
    for p in map(Path, run_dirs):
        csv = p if p.is_file() else p / "cost.csv"
        if csv.is_file():
            frames.append(read_cost_csv(csv))
        else:
            missing.append(str(p))
    if not frames:
        raise FileNotFoundError(f"no cost.csv found in: {', '.join(missing) or '(no paths)'}")
    df = pd.concat(frames, ignore_index=True)
    started = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    df["day"] = started.dt.strftime("%Y-%m-%d").fillna("unknown")

    runs = df.groupby("run_id", sort=True).agg(
        shots=("shot_id", "nunique"),
        rows=("shot_id", "size"),
        actual_usd=("actual_usd", "sum"),
        first_started=("started_at", "min"),
    )
    runs["actual_usd"] = runs["actual_usd"].map(money)
    runs.attrs["missing"] = missing

    by_day = _grouped(df, ["day"])
    by_day.insert(0, "runs", df.groupby("day")["run_id"].nunique())
    by_provider = _grouped(df, ["provider"])
    by_provider.insert(0, "runs", df.groupby("provider")["run_id"].nunique())
    return {
        "by_provider": by_provider,
        "by_model": _grouped(df, ["provider", "model"]),
        "by_day": by_day,
        "estimate_error": estimate_error(df),
        "runs": runs,
    }


def estimate_error(df: pd.DataFrame) -> pd.DataFrame:
    """Estimated vs the vendor's own figure per provider/model (only rows with both)."""
    known = df[
        df["cost_source"].isin(VENDOR_SOURCES)
        & ~df["cache_hit"]
        & df["estimated_usd"].notna()
        & df["actual_usd"].notna()
    ].copy()
    cols = ["n", "estimated_usd", "actual_usd", "error_usd", "mean_abs_error_usd", "error_pct"]
    if known.empty:
        return pd.DataFrame(
            columns=cols, index=pd.MultiIndex.from_tuples([], names=["provider", "model"])
        )
    known["abs_err"] = (known["actual_usd"] - known["estimated_usd"]).abs()
    g = known.groupby(["provider", "model"], sort=True)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "estimated_usd": g["estimated_usd"].sum().map(money),
            "actual_usd": g["actual_usd"].sum().map(money),
            "mean_abs_error_usd": g["abs_err"].mean().map(money),
        }
    )
    out["error_usd"] = (out["actual_usd"] - out["estimated_usd"]).map(money)
    est = out["estimated_usd"].where(out["estimated_usd"] != 0)
    out["error_pct"] = (out["error_usd"] / est * 100).round(2)
    return out[cols]


def format_frame(df: pd.DataFrame) -> str:
    """A frame as text for the terminal, money columns as plain decimals."""
    shown = df.copy()
    for col in shown.columns:
        if str(col).endswith("_usd"):
            shown[col] = shown[col].map(money_text)
    return shown.to_string()
