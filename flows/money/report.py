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

import json
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from flows.files.atomic import write_text_atomic
from flows.money.journal import Journal
from flows.money.spend import VENDOR_SOURCES, priced
from flows.money.status import AT_RISK, NOT_ATTEMPTS, SUCCEEDED, Status
from flows.money.usd import as_float, text
from flows.storyboard.tags import from_cell, to_cell
from providers.errors import StoryreelError

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
    df = pd.read_csv(path, dtype={"job_id": str, "run_id": str, "shot_id": str, "tags": str})
    if "at_risk" not in df.columns and "status" in df.columns:  # older cost.csv
        df["at_risk"] = df["status"].isin([str(s) for s in AT_RISK])
    if "take" not in df.columns:  # written before takes existed: every row was take 1
        df["take"] = 1
    if "tags" not in df.columns:  # written before cost tags existed
        df["tags"] = ""
    df["tags"] = df["tags"].fillna("")
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a storyreel cost.csv (missing {', '.join(sorted(missing))})")
    for col in ("cache_hit", "at_risk"):
        df[col] = df[col].astype(str).str.lower().isin({"true", "1"})
    return _frame(df.to_dict("records"))


BY_KEYS = {"provider": "provider", "model": "model", "day": "day", "run": "run_id"}
NO_TAG = "(none)"
TOP = 10  # most expensive shots and runs shown


def find_cost_csvs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Every cost.csv under `paths`: a cost.csv itself, a run folder holding one, or a folder
    of run folders (searched recursively; a run folder's own subfolders are not searched).
    Also the paths that held none."""
    found: list[Path] = []
    missing: list[str] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "cost.csv").is_file():
            found.append(p / "cost.csv")
        else:
            inner = sorted(c for c in p.rglob("cost.csv")
                           if not any((a / "cost.csv").is_file() for a in c.parent.parents
                                      if p in a.parents))
            found.extend(inner) if inner else missing.append(str(p))
    return list(dict.fromkeys(f.resolve() for f in found)), missing


def parse_by(text: str | None) -> list[str]:
    """`--by provider,model,day,run,tag:client` as frame columns (ValueError when unknown)."""
    keys = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("tag:") and part[4:].strip():
            keys.append("tag:" + part[4:].strip())
        elif part in BY_KEYS:
            keys.append(BY_KEYS[part])
        else:
            raise ValueError(f"--by {part!r}: use provider, model, day, run or tag:NAME")
    return list(dict.fromkeys(keys))


def _run_info(csv: Path) -> dict[str, Any]:
    """What the run folder says about itself: title, tags, review page, rejected takes."""
    folder = csv.parent
    info: dict[str, Any] = {"folder": str(folder), "title": "", "tags": {}, "review": None,
                            "rejected": {}}
    try:
        data = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        info["title"] = str((data.get("plan") or {}).get("title") or "")
        info["tags"] = {str(k): str(v) for k, v in (data.get("tags") or {}).items()}
    except (OSError, ValueError, AttributeError):
        pass
    if (folder / "review.html").is_file():
        info["review"] = str(folder / "review.html")
    try:
        from flows.review.picks import load_review

        info["rejected"] = {(shot, take): r.note or "" for shot, r in load_review(folder).items()
                            for take in r.rejected}
    except StoryreelError:  # a hand-edited review.yaml that does not parse: no rejections
        pass
    return info


def aggregate_runs(run_dirs: list[Path], since: date | None = None, until: date | None = None,
                   by: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Roll up many runs' cost.csv into the report's tables (see REPORT_TABLES).

    Each path is a run folder holding cost.csv, a cost.csv itself, or a folder holding run
    folders at any depth; paths with none are listed in `.attrs["missing"]` of "runs".
    since/until keep the attempts started on those days (UTC, both inclusive). `by` adds a
    "by" table grouped by those columns (parse_by). The whole-report figures are in
    `.attrs` of "totals".
    """
    csvs, missing = find_cost_csvs(run_dirs)
    if not csvs:
        raise FileNotFoundError(f"no cost.csv found in: {', '.join(missing) or '(no paths)'}")
    frames, infos = [], {}
    for csv in csvs:
        df = read_cost_csv(csv)
        info = _run_info(csv)
        df["folder"] = info["folder"]
        if info["tags"]:  # run.json knows the tags of rows written before the tags column
            df["tags"] = [c if isinstance(c, str) and c else to_cell(info["tags"])
                          for c in df["tags"]]
        for rid in df["run_id"].dropna().unique():
            infos[str(rid)] = info
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    started = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    df["day"] = started.dt.strftime("%Y-%m-%d").fillna("unknown")
    if since is not None:
        df = df[df["day"] >= since.isoformat()]
    if until is not None:
        df = df[(df["day"] <= until.isoformat()) & (df["day"] != "unknown")]
    df = df.reset_index(drop=True)
    df["tags"] = df["tags"].fillna("").astype(str)
    df["take"] = pd.to_numeric(df["take"], errors="coerce").fillna(1).astype(int)
    by = list(by or [])
    for key in by:
        if key.startswith("tag:"):
            name = key[4:]
            df[key] = [from_cell(c).get(name, NO_TAG) for c in df["tags"]]
    df["lost_as"] = _lost_as(df, infos)

    runs = _runs(df, infos)
    runs.attrs["missing"] = missing
    by_day = _grouped(df, ["day"])
    by_day.insert(0, "runs", df.groupby("day")["run_id"].nunique())
    by_provider = _grouped(df, ["provider"])
    by_provider.insert(0, "runs", df.groupby("provider")["run_id"].nunique())
    tables = {
        "totals": _totals(df),
        "by_provider": by_provider,
        "by_model": _grouped(df, ["provider", "model"]),
        "by_day": by_day,
        "by_day_provider": _day_provider(df),
        "estimate_error": estimate_error(df),
        "lost": _lost(df),
        "top_shots": _top_shots(df, infos),
        "runs": runs,
    }
    if by:
        grouped = _grouped(df, by)
        grouped.insert(0, "runs", df.groupby(by)["run_id"].nunique()
                       if len(df) else pd.Series(dtype=int))
        tables["by"] = grouped
        tables["by"].attrs["keys"] = by
    return tables


# what each table is, for the terminal, the page and --json
REPORT_TABLES = {
    "totals": "The whole report: spend split by who stated it, what the cache saved, what was "
              "lost",
    "by_provider": "Spend by provider",
    "by_model": "Spend by model",
    "by_day": "Spend by day (UTC, the day each attempt started)",
    "by_day_provider": "Spend per day and provider",
    "estimate_error": "Our estimate against the vendor's own figure (rows the vendor priced)",
    "lost": "Money spent on takes that did not make it: failed attempts the vendor billed, "
            "takes rejected in review",
    "top_shots": "The most expensive shots",
    "runs": "Runs, most expensive first",
    "by": "Grouped as asked (--by)",
}


def by_spend(df: pd.DataFrame) -> pd.DataFrame:
    """Most expensive first (ties in their order)."""
    return df.sort_values("actual_usd", ascending=False, kind="stable") if len(df) else df


def _lost_as(df: pd.DataFrame, infos: dict[str, dict[str, Any]]) -> list[str]:
    """Per row: 'failed' (billed, no clip), 'rejected' (a take rejected in review) or ''."""
    failed = {str(s) for s in FAILED}
    good = {str(s) for s in SUCCEEDED}
    out = []
    for run_id, shot, take, status, usd in zip(df["run_id"], df["shot_id"], df["take"],
                                               df["status"], df["actual_usd"], strict=True):
        rejected = (infos.get(str(run_id)) or {}).get("rejected") or {}
        if usd > 0 and status in failed:
            out.append("failed")
        elif (usd > 0 and status in good
              and (str(shot), int(take) if pd.notna(take) else 1) in rejected):
            out.append("rejected")
        else:
            out.append("")
    return out


def _totals(df: pd.DataFrame) -> pd.DataFrame:
    row = _counts(df)
    row["runs"] = df["run_id"].nunique()
    row["lost_failed_usd"] = money(df.loc[df["lost_as"] == "failed", "actual_usd"].sum())
    row["lost_rejected_usd"] = money(df.loc[df["lost_as"] == "rejected", "actual_usd"].sum())
    out = pd.DataFrame([row])
    out.index = pd.Index(["all runs"], name="report")
    return out.astype({c: int for c in [*COUNTS, "runs"]})


def _day_provider(df: pd.DataFrame) -> pd.DataFrame:
    """Spend (actual_usd) per day (rows) and provider (columns), 0 where none."""
    if df.empty:
        return pd.DataFrame(index=pd.Index([], name="day"))
    out = df.pivot_table(index="day", columns="provider", values="actual_usd", aggfunc="sum",
                         fill_value=0.0)
    out.columns.name = None
    return out.map(money)


def _lost(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["run_id", "shot_id", "take", "attempt", "provider", "model", "lost_as",
            "failure_reason", "actual_usd"]
    lost = df.loc[df["lost_as"] != "", cols].copy()
    lost = lost.sort_values("actual_usd", ascending=False, kind="stable")
    return lost.reset_index(drop=True)


def _top_shots(df: pd.DataFrame, infos: dict[str, dict[str, Any]]) -> pd.DataFrame:
    cols = ["run_id", "shot_id", "attempts", "takes", "models", "actual_usd", "review"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    tried = ~df["status"].isin([str(s) for s in NOT_ATTEMPTS])
    g = df.assign(tried=tried).groupby(["run_id", "shot_id"], sort=True)
    out = pd.DataFrame({
        "attempts": g["tried"].sum().astype(int),
        "takes": g["take"].nunique(),
        "models": g.apply(lambda x: ", ".join(dict.fromkeys(
            f"{p}:{m}" for p, m, t in zip(x["provider"], x["model"], x["tried"], strict=True)
            if t)), include_groups=False),
        "actual_usd": g["actual_usd"].sum().map(money),
    }).reset_index()
    out = out[out["actual_usd"] > 0]
    out = out.sort_values(["actual_usd", "run_id", "shot_id"], ascending=[False, True, True],
                          kind="stable").head(TOP)
    out["review"] = [_review_link(infos, r, f"shot-{s}") for r, s in
                     zip(out["run_id"], out["shot_id"], strict=True)]
    return out[cols].reset_index(drop=True)


def _review_link(infos: dict[str, dict[str, Any]], run_id: Any, anchor: str = "") -> str:
    page = (infos.get(str(run_id)) or {}).get("review")
    return "" if not page else page + (f"#{anchor}" if anchor else "")


def _runs(df: pd.DataFrame, infos: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per run, most expensive first."""
    if df.empty:
        names = ["title", "tags", "first_day", "shots", *_counts(df).index, "folder", "review"]
        return pd.DataFrame(columns=names, index=pd.Index([], name="run_id"))
    out = _grouped(df, ["run_id"])
    g = df.groupby("run_id", sort=True)
    out.insert(0, "shots", g["shot_id"].nunique())
    out.insert(0, "first_day", g["day"].min())
    out.insert(0, "tags", g["tags"].first())
    out.insert(0, "title", [(infos.get(str(r)) or {}).get("title", "") for r in out.index])
    out["folder"] = [(infos.get(str(r)) or {}).get("folder", "") for r in out.index]
    out["review"] = [_review_link(infos, r) for r in out.index]
    out["first_started"] = g["started_at"].min()  # kept for CSV readers of older reports
    return out  # by run id; the terminal and the page show the most expensive first


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
