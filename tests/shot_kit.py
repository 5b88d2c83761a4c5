"""Render a storyboard's shots without Prefect and without the finish: for tests whose subject
is what the shot code does with money (journal, ledger, cache, retries, fallbacks), not the
flow around it nor the cut. Each such concern keeps at least one test through the real flow
(the `run` fixture); this one costs a fraction of it (no flow or task runs, no cut, no
placeholders, no contact sheet, no review page).

What it shares with the flow is everything below flows/pipeline.py: run_dir_for, runlock,
open_journal, new_context (the ledger recovered from the journal, the clip cache) and
render_shot for every shot at once, then cost.csv from the journal as the flow writes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from flows.money.status import GOOD
from flows.run import lock as runlock
from flows.run.context import ShotResult
from flows.run.redaction import redact_data
from flows.run.session import (
    RunOptions,
    close_window,
    new_context,
    open_journal,
    preflight,
    run_dir_for,
)
from flows.run.shot import render_shot
from flows.storyboard.keys import env_key
from flows.storyboard.plan import make_plan
from providers.http import new_client
from tests.storyboards import cost_rows


async def render_shots(spec: Path, out: Path, *, regenerate: list[str] | None = None,
                       resubmit_unconfirmed: bool = False, no_cache: bool = False
                       ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(result, cost.csv rows) like the `run` fixture's; result has ok, failed and the totals."""
    from flows.money.report import rows_from_journal, write_cost_csv
    from flows.money.spend import totals

    plan = make_plan(spec)
    preflight(plan)
    opts = RunOptions(out=out, no_cache=no_cache, regenerate=set(regenerate or []),
                      resubmit_unconfirmed=resubmit_unconfirmed)
    run_dir = run_dir_for(plan, out)
    with runlock.own(run_dir):
        journal = open_journal(run_dir)
        try:
            async with new_client() as client:
                keys = {p: env_key(p) for p in plan.providers_used()}
                ctx = new_context(plan, opts, run_dir, journal, client, keys, log=lambda _: None)
                try:
                    done = await asyncio.gather(*(render_shot(ctx, s) for s in plan.shots),
                                                return_exceptions=True)
                finally:
                    await asyncio.to_thread(close_window, ctx.ledger)
            results = [r if isinstance(r, ShotResult) else
                       ShotResult(s.shot_id, "failed", reason=f"{type(r).__name__}: {r}")
                       for s, r in zip(plan.shots, done, strict=True)]
            rows = redact_data(rows_from_journal(journal,
                                                 {s.shot_id: s.duration for s in plan.shots}))
            write_cost_csv(rows, run_dir / "cost.csv")
        finally:
            journal.close()
    failed = [r.shot_id for r in results if r.status not in GOOD]
    return {"ok": not failed, "failed": failed, **totals(rows)}, cost_rows(run_dir)
