"""The Prefect flow: one flow run per storyboard, one task run per shot.

Sequencing only; the work lives in plain modules (plan, render, run). Why the shape: a task
run awaited in an async flow (asyncio.gather) costs 4-7 ms of flow-process CPU and 37-54 ms
of the Prefect server's (bench/README.md, "Prefect alone"), while `.submit()` would run each
async task in a new event loop on a pool thread (prefect/task_runners.py, ThreadPoolTaskRunner);
so each shot is ONE awaited task that polls inside itself, never a task per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from prefect.utilities.annotations import quote

from flows.files.store import checkpoints, local_out, pull_if_remote
from flows.review.page import PageRefresher
from flows.run import lock as runlock
from flows.run import redaction
from flows.run.chain import start_shots
from flows.run.early_audio import EarlyAudio
from flows.run.progress import sink as progress_sink
from flows.run.session import (
    RunOptions,
    RunSummary,
    close_window,
    finish,
    new_context,
    open_journal,
    preflight,
    run_dir_for,
    slug,
    warm_imports,
    write_review,
)
from flows.run.shot import RunContext, ShotResult, render_shot, settle_orphans
from flows.storyboard.files import check_run_params
from flows.storyboard.keys import env_key
from flows.storyboard.plan import Plan, ShotPlan, make_plan
from flows.storyboard.prices import price_plan
from flows.storyboard.tags import with_tags
from providers.errors import BudgetError, ContentPolicyError, PlanError, SpecError, redact
from providers.http import new_client


async def _retry_shot(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries a shot task once for unexpected errors (a crashed conform, a lost
    connection): safe because render_shot resumes from the journal instead of paying again.
    Vendor verdicts and budget refusals are final; the attempt loop inside already handled
    retries and fallbacks with the ledger, which Prefect's task retries cannot see.
    Async: in the async task engine a sync `state.result()` is only a coroutine, never raises."""
    try:
        await state.aresult()
    except (ContentPolicyError, BudgetError, PlanError, SpecError):
        return False
    except Exception:
        return True
    return False


def _shot_run_name(parameters: dict[str, Any]) -> str:
    """The task run is named after its shot (a callback: `with_options` per shot would build
    a new Task each time, ~1 ms of CPU per shot)."""
    shot = parameters["shot"]
    return (shot.unquote() if isinstance(shot, quote) else shot).shot_id


@task(name="render-shot", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_shot,
      cache_policy=NO_CACHE, persist_result=False, task_run_name=_shot_run_name)
async def shot_task(ctx: RunContext, shot: ShotPlan,
                    started: dict[str, asyncio.Future[ShotResult]] | None = None) -> ShotResult:
    """One shot. `started`: renders that run_plan began before their task runs existed, so
    that Prefect's start-up of each task run (4-7 ms of CPU, one after another) delays no
    poll or download (bench/README.md P1); the task run awaits its own. A retry renders anew,
    resuming from the journal."""
    try:
        work = started.pop(shot.shot_id, None) if started else None
        return await (work if work is not None else render_shot(ctx, shot))
    except Exception as exc:  # an adapter bug must not put a key in the task's state message
        clean = redaction.scrub(exc)
        if clean is exc:
            raise
        raise clean from None


def _flow_run_name() -> str:
    params = flow_run.parameters
    return slug(Path(str(params.get("storyboard", "storyboard"))).stem)


def _gcl_limiter(names: set[str]) -> Any:
    """Cross-run per-vendor limits (`vendor:<id>` global concurrency limits), strict so that a
    missing limit is an error, not silent unthrottling. A failed lease renewal (a server hiccup
    during a 10-minute vendor job) must not kill a job that is already paid for: with strict=True
    Prefect would, unless told otherwise; the lease then just lapses and the slot frees early."""
    from prefect.concurrency.asyncio import concurrency

    def limiter(provider: str) -> Any:
        if provider not in names:
            return contextlib.nullcontext()
        return concurrency(f"vendor:{provider}", occupy=1, strict=True,
                           raise_on_lease_renewal_failure=False)

    return limiter


async def _ensure_limits(limits: dict[str, int]) -> None:
    """Create or update `vendor:<id>` to the storyboard's value (the last run to start wins
    when storyboards disagree). Two runs starting together may both try to create it: the
    loser of that race updates instead."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        for provider, limit in limits.items():
            name = f"vendor:{provider}"
            try:
                await client.upsert_global_concurrency_limit_by_name(name, limit)
            except ObjectAlreadyExists:
                await client.upsert_global_concurrency_limit_by_name(name, limit)


def _uses_server() -> bool:
    """True when runs share a Prefect server (PREFECT_API_URL set, as every deployment run and
    worker has); False for `storyreel run` on a temporary server only it can see."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def _scheduled_date() -> str:
    """The flow run's scheduled date (UTC), e.g. 2026-11-22; today for an unscheduled call."""
    return flow_run.scheduled_start_time.date().isoformat()


async def _resolve_keys(plan: Plan, providers: set[str] | None = None
                        ) -> dict[str, str | None]:
    """Env var first, then the Prefect Secret block the storyboard names (loaded here, in the
    flow process, never passed as a parameter)."""
    from prefect.blocks.system import Secret

    from providers.errors import register_secret

    keys: dict[str, str | None] = {}
    for p in plan.providers_used() if providers is None else providers:
        value = env_key(p)
        block = plan.storyboard.keys.get(p)
        if not value and block:
            secret = await Secret.aload(block)
            value = secret.get()
            register_secret(value)
        keys[p] = value
    return keys


@flow(name="render-storyboard", flow_run_name=_flow_run_name, log_prints=False)
@redaction.scrubbed  # the flow run's state message never carries a key
async def render_storyboard(storyboard: str, vars: dict[str, Any] | None = None,
                            budget: float | None = None, out: str | None = None,
                            no_cache: bool = False, regenerate: list[str] | None = None,
                            resubmit_unconfirmed: bool = False,
                            shared_limits: bool | None = None,
                            date_var: str | None = None,
                            cost_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Render one storyboard into final.mp4 + cost.csv. Parameters never carry keys.

    shared_limits: the storyboard's `limits:` also hold across concurrent runs, as Prefect
    global concurrency limits `vendor:<id>`; None (default) = on when talking to a Prefect
    server (PREFECT_API_URL), off on a temporary one. date_var: the name of a storyboard
    variable to fill with the run's scheduled date, for cron deployments (`vars` wins).
    cost_tags: tags for the cost report (client, campaign, ...) on top of the storyboard's
    `tags:`, key by key; not Prefect's deployment tags, and never part of a cache key."""
    redaction.install()  # before anything can log a key
    check_run_params(storyboard, out, deployed=deployment.id is not None)
    logger = get_run_logger()
    variables = dict(vars or {})
    if date_var:
        variables.setdefault(date_var, _scheduled_date())
    if shared_limits is None:
        shared_limits = _uses_server()
    opts = RunOptions(out=local_out(out), variables=variables, budget=budget,
                      no_cache=no_cache, regenerate=set(regenerate or []),
                      resubmit_unconfirmed=resubmit_unconfirmed)
    plan = with_tags(make_plan(storyboard, opts.variables, opts.budget), cost_tags)
    if "fal" in plan.providers_used():  # the account's unit prices, before the caps are checked
        plan = await price_plan(plan, (await _resolve_keys(plan, {"fal"}))["fal"])
    preflight(plan)
    # the artifacts are made as soon as the reports are, beside the contact sheet and the page
    summary = await run_plan(plan, opts, logger.info, shared_limits=shared_limits,
                             on_reports=lambda s: _artifacts(plan, s))
    for line in summary.table.splitlines():
        logger.info(line)
    if not summary.ok:
        logger.warning("%d shot(s) missing from the cut: %s", len(summary.failures()),
                       "; ".join(f"{r.shot_id} ({r.status}: {r.reason})" for r in summary.failures()))
    return {"run_id": summary.run_id, "run_dir": str(summary.run_dir), "final": str(summary.final),
            "cost_csv": str(summary.cost_csv), "spent_usd": summary.spent_usd, **summary.totals,
            "ok": summary.ok, "failed": [r.shot_id for r in summary.failures()],
            "summary": summary.table, "windows": summary.windows}


async def run_plan(plan: Plan, opts: RunOptions, log: Any, shared_limits: bool = False,
                   on_reports: Any = None) -> RunSummary:
    """`on_reports(summary)`: started once the reports are written (flows/run/session.py)."""
    run_dir = run_dir_for(plan, opts.out)
    with runlock.own(run_dir):  # one owner per run folder (a second run gets BusyError)
        await pull_if_remote(run_dir)  # out on a store: its state first (flows/files/store.py)
        async with checkpoints(run_dir):  # and its journal there while it works
            return await _run_plan(plan, opts, log, shared_limits, run_dir, on_reports)


async def _run_plan(plan: Plan, opts: RunOptions, log: Any, shared_limits: bool,
                    run_dir: Path, on_reports: Any = None) -> RunSummary:
    journal = open_journal(run_dir)
    keys = await _resolve_keys(plan)
    limits = plan.storyboard.limits
    limiter = None
    if shared_limits and limits:
        await _ensure_limits(limits)
        limiter = _gcl_limiter(set(limits))
    # created beside the first submits, not before them (a server round trip)
    progress = asyncio.ensure_future(acreate_progress_artifact(
        0.0, key=f"progress-{slug(plan.storyboard.title)}", description="shots finished"))
    done, reported = 0, 0.0  # reported: when the progress artifact was last updated

    async with new_client() as client:
        ctx = new_context(plan, opts, run_dir, journal, client, keys, log=log, limiter=limiter)
        ctx.events = progress_sink(plan, ctx.ledger)
        # pandas & co. for the reports, imported while the shots wait on vendors
        warm = asyncio.get_running_loop().run_in_executor(None, warm_imports)

        # every shot's work starts now (a start_from shot's once its parent's clip is chosen:
        # flows/run/chain.py); its task run (created one at a time) awaits it
        started = start_shots(ctx, plan.shots, render_shot)
        orphans = asyncio.ensure_future(settle_orphans(ctx))  # jobs of shots no longer planned
        # the cut's audio that waits on no unfinished shot starts before them (an edited shot)
        early = EarlyAudio(plan, run_dir)
        early.follow(started)
        # review.html follows the run as shots finish (flows/review/page.py)
        page = PageRefresher(lambda: write_review(plan, run_dir, journal, ctx.ledger, None,
                                                  running=True))

        async def one(shot: ShotPlan) -> ShotResult:
            nonlocal done, reported
            try:
                with tags(*{f"provider:{o.provider}" for o in shot.options}):
                    # quote(): Prefect must not walk (or copy) the shared run context
                    result = await shot_task(quote(ctx), quote(shot), quote(started))
            except Exception as exc:  # one broken shot must not cancel its siblings
                result = ShotResult(shot.shot_id, "failed", reason=f"{type(exc).__name__}: {exc}")
            work = started.pop(shot.shot_id, None)
            if work is not None:  # Prefect failed before the task body ran: the work goes on
                try:
                    result = await work
                except Exception as exc:
                    result = ShotResult(shot.shot_id, "failed",
                                        reason=f"{type(exc).__name__}: {exc}")
            done += 1
            early.done(shot.shot_id, result.conformed)
            page.poke()
            # at most one update a second: each is a server write (~15 ms of its CPU, one at
            # a time), so one per shot slowed 100-shot runs by seconds (bench/README.md P1)
            if time.monotonic() - reported >= 1.0 and done < len(plan.shots):
                reported = time.monotonic()
                await aupdate_progress_artifact(await progress, 100.0 * done / len(plan.shots))
            return result

        try:
            results = list(await asyncio.gather(*(one(s) for s in plan.shots)))
            await orphans
            await aupdate_progress_artifact(await progress, 100.0)  # after every throttled update
            await warm
            await page.close()
            return await finish(plan, run_dir, journal, ctx.ledger, results, reported=on_reports)
        finally:
            early.close()
            await page.close()
            await asyncio.to_thread(close_window, ctx.ledger)  # no-op after finish's
            journal.close()


async def _artifacts(plan: Plan, summary: RunSummary) -> None:
    key = slug(plan.storyboard.title)
    await acreate_table_artifact(table=redaction.redact_data(
        [{k: ("" if v is None else v) for k, v in r.items()} for r in summary.rows]),
                                 key=f"cost-report-{key}", description="cost.csv: one row per attempt")
    cap = f"${summary.cap_usd:.2f}" if summary.cap_usd is not None else "no cap"
    lines = [f"# {plan.storyboard.title}", "",
             f"Spent **${summary.spent_usd:.4f}** of {cap}: "
             f"${summary.totals['confirmed_usd']:.4f} confirmed by vendors + "
             f"${summary.totals['estimated_spend_usd']:.4f} estimated (the vendor reports no "
             f"cost) + ${summary.totals['at_risk_usd']:.4f} at risk (no final answer yet).", "",
             f"Cut: `{summary.final}`  ", f"Report: `{summary.cost_csv}`", "",
             "```", summary.table, "```"]
    for w in summary.windows:  # spend windows shared with other runs (flows/money/window.py)
        lines += [f"Window {w['scope']} {w.get('period', '')} {w.get('start', '')}: "
                  + (w["error"] if "error" in w else
                     f"this run spent ${w['run_spent_usd']:.4f} (holds ${w['run_held_usd']:.4f}); "
                     f"all runs ${w['window_spent_usd']:.4f} of "
                     + ("no limit" if w["limit_usd"] is None else f"${w['limit_usd']:.2f}, "
                        f"${w['remaining_usd']:.2f} left")) + "  "]
    if summary.failures():
        lines += ["", "## Missing shots"] + [f"- {r.shot_id}: {r.status}: {r.reason}"
                                            for r in summary.failures()]
    await acreate_markdown_artifact(redact("\n".join(lines)), key=f"summary-{key}",
                                    description="spend vs cap, failures, where the cut is")
