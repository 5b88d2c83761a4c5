"""`storyreel reconcile DIR`: settle the money a run folder still holds at vendors.

Jobs we stopped waiting for (abandoned at their deadline), lost contact with, or whose
submit answer named a job we can ask about, are polled once each; what has ended is booked
at its real outcome (a finished clip goes into the clip cache, so the next run of the
storyboard uses it without paying again), and cost.csv and run.json are written anew.
Unconfirmed submits without a job id cannot be asked about: they stay at risk, listed for
a person to check on the vendor's dashboard. Keys come from the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows import runlock
from flows.money.atomic import write_text_atomic
from flows.money.ledger import Ledger
from flows.money.status import AT_VENDOR, Status
from flows.render import settle_job
from flows.run import RunOptions, cache_for, open_journal
from flows.storyboard.keys import env_key
from providers.errors import SpecError
from providers.http import new_client
from providers.registry import get_provider_class


async def reconcile(run_dir: Path, *, deadline_s: float = 1.0) -> tuple[dict[str, float], list[str]]:
    """Settle what can be settled; return the folder's totals and what is still at risk."""
    if not (run_dir / "journal.sqlite").is_file():
        raise SpecError([("reconcile", f"{run_dir} is not a run folder (no journal.sqlite)")])
    from flows.money.report import rows_from_journal, totals, write_cost_csv

    with runlock.own(run_dir):
        journal = open_journal(run_dir)
        try:
            ledger = Ledger(None)  # nothing new is reserved here: only what is held settles
            cache = cache_for(RunOptions())
            async with new_client() as client:
                for a in journal.attempts():
                    if a.status not in AT_VENDOR or not a.job_id:
                        continue
                    cls = get_provider_class(a.provider)
                    provider = cls(client=client, key=env_key(a.provider))
                    await settle_job(a, ledger.hold(a.shot_id, a.reserved_usd or 0.0),
                                     provider=provider, journal=journal, ledger=ledger,
                                     cache=cache, run_dir=run_dir, log=print,
                                     deadline=deadline_s)
            _reconcile_windows(journal.run_id, journal.attempts())
            unsettled = [f"shot {a.shot_id} attempt {a.attempt} on {a.provider}:{a.model} "
                         f"({a.status}{', job ' + a.job_id if a.job_id else ''})"
                         for a in journal.attempts()
                         if a.status in (*AT_VENDOR, Status.UNCONFIRMED, Status.INTENT)]
            run_json = run_dir / "run.json"
            data: dict[str, Any] = json.loads(run_json.read_text()) if run_json.is_file() else {}
            durations = {s["shot_id"]: s.get("duration")
                         for s in (data.get("plan") or {}).get("shots", [])
                         if isinstance(s, dict) and "shot_id" in s}
            rows = rows_from_journal(journal, durations)
            write_cost_csv(rows, run_dir / "cost.csv")
            money = totals(rows)
            if data:
                data.update(money, spent_usd=money["total_usd"])
                write_text_atomic(run_json, json.dumps(data, indent=2, default=str))
            return money, unsettled
        finally:
            journal.close()


def _reconcile_windows(run_id: str, attempts: list[Any]) -> None:
    """Spend windows (flows/money/window.py) counted this run's at-risk money at its estimate;
    what the vendors said now settles it there too."""
    import os

    from flows.money.window import reconcile_run
    from flows.money.window_sql import default_path, open_store

    if not os.environ.get("STORYREEL_LEDGER_URL") and not default_path().exists():
        return  # this machine never kept a window
    store = open_store()
    try:
        reconcile_run(store, run_id, attempts)
    finally:
        store.close()
