"""`storyreel reconcile DIR`: settle the money a run folder still holds at vendors.

Every job still at a vendor (submitted or running when a run was killed, abandoned at its
deadline, cancel requested, lost contact with, or named by a submit answer we can ask about)
is polled, all at once, until its vendor gives a final answer or `timeout_s` passes; what has
ended is booked at its real outcome (a finished clip goes into the clip cache, so the next run
of the storyboard uses it without paying again), and cost.csv and run.json are written anew.
Each job is asked with the key of its own provider (from the environment), whatever the
storyboard says now. Unconfirmed submits without a job id cannot be asked about: they stay at
risk, listed for a person to check on the vendor's dashboard.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.money.ledger import Ledger
from flows.money.status import AT_RISK, AT_VENDOR
from flows.run import lock as runlock
from flows.run.journals import has_journal
from flows.run.session import RunOptions, cache_for, open_journal
from flows.run.shot import Books, settle_job
from flows.storyboard.keys import env_key
from flows.storyboard.prices import lookup_fal
from providers.base import Provider
from providers.errors import SpecError
from providers.http import new_client
from providers.registry import get_provider_class

DEFAULT_TIMEOUT_S = 10.0


async def reconcile(run_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S
                    ) -> tuple[dict[str, float], list[str]]:
    """Settle what can be settled; return the folder's totals and what is still at risk."""
    if not has_journal(run_dir):
        raise SpecError([("reconcile", f"{run_dir} is not a run folder (no journal)")])
    from flows.money.report import rows_from_journal, write_cost_csv
    from flows.money.spend import totals

    with runlock.own(run_dir):
        journal = open_journal(run_dir)
        try:
            ledger = Ledger(None)  # nothing new is reserved here: only what is held settles
            cache = cache_for(RunOptions())
            asked = [a for a in journal.attempts() if a.status in AT_VENDOR and a.job_id
                     and _known(a.provider)]
            # fal's billed units become money at the account's unit prices
            fal = {str((a.job_data or {}).get("model")) for a in asked if a.provider == "fal"}
            prices = (await lookup_fal(sorted(fal - {"None"}))).prices if fal else {}
            async with new_client() as client:
                providers: dict[str, Provider] = {}

                def provider_for(name: str) -> Provider:
                    if name not in providers:
                        extra: dict[str, Any] = {"prices": prices} if name == "fal" else {}
                        providers[name] = get_provider_class(name)(client=client,
                                                                   key=env_key(name), **extra)
                    return providers[name]

                books = Books(journal, ledger, cache, run_dir, log=print)
                await asyncio.gather(*(
                    settle_job(a, ledger.hold(a.shot_id, a.reserved_usd or 0.0, row=a.id,
                                              attempt=a.attempt, take=a.take),
                               provider=provider_for(a.provider), books=books,
                               deadline=max(0.01, timeout_s))
                    for a in asked))
            _reconcile_windows(journal.run_id, journal.attempts())
            unsettled = [f"shot {a.shot_id} attempt {a.attempt} on {a.provider}:{a.model} "
                         f"({a.status}{', job ' + a.job_id if a.job_id else ''})"
                         for a in journal.attempts()
                         if a.status in AT_RISK]
            run_json = run_dir / "run.json"
            data: dict[str, Any] = json.loads(run_json.read_text()) if run_json.is_file() else {}
            # the plan in run.json names a shot `id` (Plan.to_json)
            durations = {s["id"]: s.get("duration")
                         for s in (data.get("plan") or {}).get("shots", [])
                         if isinstance(s, dict) and "id" in s}
            rows = rows_from_journal(journal, durations, tags=data.get("tags"))
            write_cost_csv(rows, run_dir / "cost.csv")
            money = totals(rows)
            if data:
                data.pop("charged_usd", None)  # written before estimates were told apart
                data.update(money, spent_usd=money["total_usd"])
                write_text_atomic(run_json, json.dumps(data, indent=2, default=str))
            return money, unsettled
        finally:
            journal.close()


def _known(provider: str) -> bool:
    try:
        get_provider_class(provider)
    except KeyError:  # no adapter any more: its money stays at risk, listed below
        return False
    return True


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
