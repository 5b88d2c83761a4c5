"""Early submits: `storyreel run` sends each shot's first vendor request before it imports
Prefect, so the vendors' generation time (seconds to minutes) overlaps the orchestrator's
start-up (1.5-4 s with a running server, 7-25 s with a temporary one) instead of following it
(bench/README.md, P0 and P4).

It does only what the flow would do first anyway, with the same money rules (reserve ->
journal intent -> submit -> journal job id, flows/run/shot.py), and only where nothing on the
Prefect side could change that first step:
- a fresh shot whose options have no cached clip: no attempt in this run folder, or its last
  attempt made the clip of what the shot asked before an edit (the producer's loop: edit a
  prompt, run the same --out again; flows/run/shot.py's resume starts a new attempt for it too);
- its first option's key is in the environment (a Secret block needs Prefect to read);
- that provider has no `limits:` entry (limits are shared across runs through Prefect's
  global concurrency limits, which only the flow holds);
- not the local animatic provider (nothing to wait for);
- not a `start_from` shot: its first frame is its parent's last, which does not exist yet.
The flow then finds the job in the journal and polls it as a resumed run would; the journal
rows written here count as the option's first try there (render.py counts tries from the
journal), so nothing is handed over besides the journal itself.

Does it still pay now that `storyreel run` reuses a running Prefect server (bench/README.md,
the table with and without `--no-early-submit`)? The edited run of P4 in one folder, reused
server, load 2-3: the submit leaves 0.67 s after the command instead of 3.40 s, the wall is
15.9 s instead of 17.8 s (2-10 s sooner under heavy load, P0). What it can save is bounded
by the flow's start-up (Prefect's import plus one flow run, ~2.7 s), which is more than the
edit loop's whole 2 s allowance: without it the "vendor time + conform + 2 s" target is out of
reach by construction.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from flows.money.journal import Attempt
from flows.run import progress, redaction
from flows.run.context import RunContext, clip_key
from flows.run.session import RunOptions, close_window, new_context, open_journal
from flows.run.shot import submit_first
from flows.run.uptodate import DONE, row_is_current
from flows.storyboard.keys import env_key, key_env
from flows.storyboard.plan import Plan, ShotPlan
from providers.errors import redact
from providers.http import new_client


def _log(line: str) -> None:
    """Per-shot lines only with STORYREEL_DEBUG: the flow reports every outcome (a refused
    early submit's reason travels in the journal's `early` key to the shot's result)."""
    if os.environ.get("STORYREEL_DEBUG"):
        print(f"storyreel: {line}", file=sys.stderr)


def fresh(ctx: RunContext, shot: ShotPlan, rows: list[Attempt]) -> bool:
    """No attempt yet, or the last one is a finished clip for the shot as it was before an
    edit (anything else: in flight, failed, unconfirmed, is the flow's to resume)."""
    rows = [a for a in rows if a.take == shot.take]  # takes of a shot go their own ways
    if not rows:
        return True
    last = rows[-1]
    return last.status in DONE and not row_is_current(ctx.plan, shot, last)


def eligible(ctx: RunContext, shot: ShotPlan, attempted: dict[str, list[Attempt]]) -> bool:
    opt = shot.options[0]
    if shot.start_from is not None:  # sent once its parent's clip exists (flows/run/chain.py)
        return False
    if opt.provider == "local" or opt.provider in ctx.limits \
            or not fresh(ctx, shot, attempted.get(shot.shot_id, [])):
        return False
    if key_env(opt.provider) and not ctx.keys.get(opt.provider):  # a Secret block's key
        return False
    if ctx.cache is not None and shot.shot_id not in ctx.regenerate:
        return not any(ctx.cache.get(clip_key(ctx, shot, o)) is not None for o in shot.options)
    return True


async def submit_early(plan: Plan, run_dir: Path, opts: RunOptions) -> dict[str, list[str]]:
    """Submit the eligible shots' first attempts; record and return what was done."""
    redaction.install()
    journal = open_journal(run_dir)
    ctx = None
    try:
        async with new_client() as client:
            ctx = new_context(plan, opts, run_dir, journal, client,
                              {p: env_key(p) for p in plan.providers_used()}, log=_log)
            ctx.events = progress.sink(plan, ctx.ledger)
            attempted: dict[str, list[Attempt]] = {}
            for a in journal.attempts():
                attempted.setdefault(a.shot_id, []).append(a)
            shots = [s for s in plan.shots if eligible(ctx, s, attempted)]
            # one shot's surprise must not cancel the others' submits mid-flight; the flow
            # sees whatever its journal rows say (an intent with no answer is unconfirmed)
            outcomes = await asyncio.gather(*(submit_first(ctx, s) for s in shots),
                                            return_exceptions=True)
        for s, r in zip(shots, outcomes, strict=True):
            if isinstance(r, BaseException):
                print(redact(f"storyreel: {s.shot_id}: early submit failed ({type(r).__name__}: "
                             f"{r}); left to the flow"), file=sys.stderr)
        return {s.shot_id: r for s, r in zip(shots, outcomes, strict=True)
                if isinstance(r, list)}
    finally:
        if ctx is not None:  # the flow's ledger, in this process, adopts what is at vendors
            await asyncio.to_thread(close_window, ctx.ledger, False)
        journal.close()
