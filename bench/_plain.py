"""The storyreel pipeline without Prefect, to measure what Prefect itself costs (P2).

The same plain modules the flow calls (flows.run.session, flows.run.shot), sequenced the way
flows/pipeline.py's `run_plan` does, minus the flow, the task per shot, the progress and
summary artifacts and the run logger. Not a product path: a benchmark control.

    python bench/_measure.py REPORT.json plain SPEC.yaml OUT_DIR
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from flows.run.session import (
    RunOptions,
    cache_for,
    finish,
    ledger_for,
    open_journal,
    output_format,
    preflight,
    run_dir_for,
)
from flows.run.shot import RunContext, ShotResult, render_shot
from flows.storyboard.keys import env_key
from flows.storyboard.plan import make_plan
from providers.http import new_client


async def run(spec: str, out: Path) -> bool:
    opts = RunOptions(out=out)
    plan = make_plan(spec)
    preflight(plan)
    run_dir = run_dir_for(plan, opts.out)
    journal = open_journal(run_dir)
    ledger = ledger_for(plan, journal)
    keys = {p: env_key(p) for p in plan.providers_used()}
    cache = cache_for(opts)
    async with new_client() as client:
        ctx = RunContext(plan=plan, run_dir=run_dir, journal=journal, ledger=ledger,
                         client=client, keys=keys, fmt=output_format(plan), cache=cache,
                         limits=plan.storyboard.limits, log=lambda _msg: None)

        async def one(shot) -> ShotResult:  # noqa: ANN001 - a ShotPlan
            try:
                return await render_shot(ctx, shot)
            except Exception as exc:
                return ShotResult(shot.shot_id, "failed", reason=f"{type(exc).__name__}: {exc}")

        try:
            results = list(await asyncio.gather(*(one(s) for s in plan.shots)))
            summary = await finish(plan, run_dir, journal, ledger, results)
        finally:
            journal.close()
    return summary.ok


def main(args: list[str]) -> int:
    spec, out = args
    return 0 if asyncio.run(run(spec, Path(out))) else 1
