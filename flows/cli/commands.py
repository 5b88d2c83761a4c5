"""`storyreel`: validate, plan, run, schema, providers, report.

Exit codes: 0 done; 1 the run (or plan) could not do everything asked (over budget, shots
missing, a vendor or ffmpeg failure); 2 the input is wrong (storyboard, usage, missing key).
User mistakes print one line per problem and no traceback; anything unexpected prints one
line too (exit 1); STORYREEL_DEBUG=1 re-raises.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from providers.errors import BudgetError, BusyError, MissingKeyError, SpecError, StoryreelError


def _usd(text: str) -> float:
    """--budget: a finite amount >= 0 (argparse turns the ValueError into a usage error)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


_usd.__name__ = "amount in USD (a number >= 0)"


def _vars(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SpecError([("--var", f"'{pair}' is not name=value")])
        out[name] = value
    return out


def _tags(pairs: list[str]) -> dict[str, str]:
    """--tag NAME=VALUE (repeatable): cost tags on top of the storyboard's `tags:`."""
    from flows.storyboard.tags import parse_pairs

    try:
        return parse_pairs(pairs)
    except ValueError as exc:
        raise SpecError([("--tag", str(exc))]) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from flows.storyboard.plan import make_plan

    plan = make_plan(args.spec, _vars(args.var))
    print(f"{args.spec}: ok ({len(plan.shots)} shots, {plan.total_duration:g} s, "
          f"{plan.width}x{plan.height} @ {plan.fps} fps)")
    return 0


def _check_lines(plan: Any) -> list[str]:
    """The clip checks (flows/media/checks.py): the shared thresholds, then each shot that
    differs."""
    from collections import Counter

    from flows.media.checks import describe

    said = Counter(describe(s.checks) for s in plan.shots)
    usual = said.most_common(1)[0][0]
    lines = [f"clip checks before the cut: {usual} (checks:)"]
    lines += [f"  {s.shot_id}: {d}" for s in plan.shots if (d := describe(s.checks)) != usual]
    return lines


def cmd_plan(args: argparse.Namespace) -> int:
    from flows.storyboard.keys import missing_keys
    from flows.storyboard.plan import make_plan
    from flows.storyboard.prices import price_plan_sync

    plan = price_plan_sync(make_plan(args.spec, _vars(args.var), args.budget))
    windows, window_problem = _plan_windows(plan)
    if args.json:
        print(json.dumps({**plan.to_json(), "windows": windows}, indent=2))
    else:
        print(f"{plan.storyboard.title}: {len(plan.shots)} shots, {plan.total_duration:g} s, "
              f"{plan.width}x{plan.height} @ {plan.fps} fps")
        print(f"{'shot':<20} {'provider':<12} {'model':<28} {'seconds':>7} {'estimate':>10} "
              f"{'reserve':>10}  fallback  [price from]")
        for s in plan.shots:
            o = s.primary
            chain = ", ".join(x.label for x in s.options[1:]) or "-"
            if s.takes > 1:  # the estimate is the takes' price
                chain = f"{s.takes} takes x ${o.estimate_usd:.4f}; fallback {chain}"
            print(f"{s.shot_id:<20} {o.provider:<12} {o.model:<28} {s.duration:>7g} "
                  f"${s.estimate_usd:>9.4f} ${s.reserve_usd:>9.4f}  {chain}  [{o.price_source}]")
        cap = plan.cap_usd
        print(f"{'total':<70} ${plan.total_estimate:>9.4f} ${plan.total_reserve:>9.4f}  cap: "
              + (f"${cap:.2f}" if cap is not None else "none"))
        margin = plan.storyboard.budget.estimate_margin
        print(f"estimate: our price list's figure (an upper bound where the vendor states no "
              f"charge); reserve: what an attempt holds against the caps, the estimate + "
              f"{margin:.0%} (budget.estimate_margin)")
        for w in windows:
            print(f"window {_window_line(w)}")
        from flows.storyboard.chains import continuity_lines

        for line in continuity_lines(plan):  # start_from chains and characters
            print(line)
        for line in _check_lines(plan):
            print(line)
        if plan.price_note:
            print(plan.price_note)
    problems = plan.over_budget()
    if window_problem and plan.storyboard.budget.on_exhausted == "stop":
        problems.append(window_problem + " (budget.on_exhausted: stop)")
    elif window_problem:
        print(f"warning: {window_problem}; shots that do not fit will be skipped "
              "(budget.on_exhausted: skip)", file=sys.stderr)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    keys = missing_keys(plan.providers_used(), plan.storyboard.keys)
    for k in keys:
        print(f"error: {k}", file=sys.stderr)
    if keys:
        return 2
    return 1 if problems else 0


def _out(text: str) -> Path | str:
    """--out: a folder, or an s3:// URL kept as text (Path would fold its //)."""
    from flows.files.store import is_store_url

    return text if is_store_url(text) else Path(text)


_out.__name__ = "folder or s3:// URL"


def _checkout(args: argparse.Namespace) -> str | None:
    """--out s3://...: the URL is checked, the run's state pulled into its scratch folder (under
    the folder's run lock), and args.out becomes that folder (flows/files/store.py)."""
    from flows.files import store

    if not store.is_store_url(args.out):
        return None
    url = str(args.out)
    store.check_out_url(url)
    from flows.run import lock as runlock

    folder = store.scratch_for(url)
    with runlock.own(folder, wait=args.wait):
        pulled = store.RunStore(url).pull(folder)
    if pulled.got:
        print(pulled.line("pulled", store.remote_of(folder) or url), file=sys.stderr)
    args.out = folder
    return store.remote_of(folder)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.storyboard.plan import make_plan
    from flows.storyboard.tags import with_tags

    variables = _vars(args.var)
    cost_tags = _tags(args.tag)
    if getattr(args, "out", None) is not None and not isinstance(args.out, Path):
        from flows.files.store import check_out_url

        check_out_url(str(args.out))  # before the storyboard is even read: exit 2, said plainly
    plan = with_tags(make_plan(args.spec, variables, args.budget), cost_tags)
    url = _checkout(args)
    if args.out is not None and not args.regenerate:  # nothing to do: say so, start nothing
        from flows.run.uptodate import check  # (no vendor, key, ffmpeg or Prefect: flows/run/uptodate.py)

        verdict = check(plan, args.out)
        if verdict.final is not None:
            from flows.run.retag import retag

            if retag(args.out, plan.storyboard.tags):  # tags describe the run: no re-cut
                print(f"tags: {args.out / 'cost.csv'} and run.json now carry the new tags")
            if url is not None:  # what changed (the tags) to the store; one LIST when nothing
                from flows.files.store import RunStore

                print(RunStore(url).publish(args.out).line("published", url))
            print(f"up to date: {verdict.final}" + (f" ({url}/final.mp4)" if url else ""))
            return _settle_at_risk(args.out, verdict.at_risk, verdict.askable)
        if os.environ.get("STORYREEL_DEBUG"):
            print(f"storyreel: not up to date: {verdict.why}", file=sys.stderr)
    from flows.run import lock as runlock
    from flows.run.session import preflight, run_dir_for
    from flows.storyboard.files import check_out_dir
    from flows.storyboard.prices import price_plan_sync

    plan = price_plan_sync(plan)  # after the up-to-date check, which makes no network call
    preflight(plan)  # before Prefect starts: a wrong input never reaches a vendor
    check_out_dir(args.out)  # the same check a deployment's `out` parameter gets
    if args.out is not None:  # the picks a person wrote must parse before anything runs
        from flows.review.picks import load_review

        load_review(args.out)
    out = run_dir_for(plan, args.out)
    with runlock.own(out, wait=args.wait):  # the whole run, early submits included
        code = _run_locked(args, plan, variables, out)
    if url is not None:  # published at the finish (flows/run/finish.py)
        print(f"store:  {url}/final.mp4 (and the run's reports, review page and state)")
    return code


def _settle_at_risk(out: Path, at_risk: int, askable: int) -> int:
    """An up-to-date folder still holding money at vendors: ask them now (the cut needs
    nothing, but the report must not leave jobs at risk), or say how to."""
    if askable:
        import asyncio

        from flows.run.reconcile import reconcile

        print(f"{askable} job(s) still at a vendor: asking about them")
        totals, unsettled = asyncio.run(reconcile(out))
        print(spent_line(totals, "the run's cap"))
        at_risk = len(unsettled)
    if at_risk:
        print(f"{at_risk} job(s) at risk: storyreel reconcile {out}")
    return 0


def _run_locked(args: argparse.Namespace, plan: Any, variables: dict[str, str], out: Path) -> int:
    from flows.run import progress

    live = progress.Progress()  # one line per shot, redrawn in place on a terminal
    progress.use(live)
    live.start(plan)
    if not args.verbose:  # Prefect's own lines still reach its server; -v shows them here
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    try:
        result = _run(args, variables, plan, out)
    finally:
        live.stop()
        progress.use(None)
    cap = f"${args.budget if args.budget is not None else plan.cap_usd:.2f}" \
        if (args.budget is not None or plan.cap_usd is not None) else "no cap"
    print(f"\n{result.get('summary', '')}\n\ncut:    {result['final']}\n"
          f"report: {result['cost_csv']}\nreview: {Path(result['run_dir']) / 'review.html'}\n"
          + spent_line(result, cap))
    for w in result.get("windows", []):
        print(_window_used(w))
    if not result["ok"]:
        print(f"missing shots (placeholders in the cut): {', '.join(result['failed'])}",
              file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace, variables: dict[str, str], plan: Any, out: Path
         ) -> dict[str, Any]:
    import asyncio  # here, not at the top: "up to date" needs no event loop (nor ssl)

    server = _start_server(args)  # a local Prefect server boots while the vendors start
    if not args.no_early_submit:  # vendors start while Prefect starts (flows/run/early.py)
        from flows.run.early import submit_early
        from flows.run.session import RunOptions

        early = asyncio.run(submit_early(plan, out, RunOptions(
            no_cache=args.no_cache, regenerate=set(args.regenerate))))
        if early:
            print(f"storyreel: {len(early)} shot(s) submitted before the flow started; run "
                  f"folder {out}", file=sys.stderr)
    if server is not None:
        _use_server(server)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.orchestration.flow import render_storyboard

    result: dict[str, Any] = asyncio.run(render_storyboard(
        storyboard=str(args.spec), vars=variables, budget=args.budget,
        out=str(out), no_cache=args.no_cache,
        regenerate=args.regenerate, resubmit_unconfirmed=args.resubmit_unconfirmed,
        cost_tags=_tags(args.tag) or None))
    return result


def spent_line(totals: dict[str, Any], cap: str) -> str:
    """The CLI's money line: the same three figures as cost.csv, run.json and the artifact;
    an estimate is never called a charge."""
    line = (f"spent:  ${totals['confirmed_usd']:.4f} confirmed by vendors"
            f" + ${totals['estimated_spend_usd']:.4f} estimated (vendor reports no cost)"
            f" + ${totals['at_risk_usd']:.4f} at risk = ${totals['total_usd']:.4f} of {cap}")
    if totals["at_risk_usd"]:
        line += ("\n        (at risk: jobs with no final answer from their vendor, counted at "
                 "what was reserved; `storyreel reconcile DIR` settles them)")
    return line


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Ask the vendors about every job a run folder holds money for, settle what ended,
    and rewrite cost.csv and run.json."""
    import asyncio

    from flows.run.reconcile import DEFAULT_TIMEOUT_S, reconcile

    timeout = DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    totals, unsettled = asyncio.run(reconcile(args.dir, timeout_s=timeout))
    print(spent_line(totals, "the run's cap"))
    for line in unsettled:
        print(f"still at risk: {line}")
    if unsettled:
        print(f"{len(unsettled)} job(s) have no final answer yet: run `storyreel reconcile "
              f"{args.dir}` again later (or with --timeout SECONDS)")
    return 1 if unsettled else 0


def _plan_windows(plan: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The spend windows the storyboard would spend from, and why its estimate does not fit
    in them now (None when it does, or without a window)."""
    from flows.money.window import status
    from flows.money.window_sql import open_store
    from flows.storyboard.budgets import window_spec

    spec = window_spec(plan.storyboard)
    if spec is None:
        return [], None
    store = open_store()
    try:
        windows = [w for w in status(store, [spec]) if w["scope"] == spec.scope]
    finally:
        store.close()
    for w in windows:
        left = w["remaining_usd"]
        if left is not None and plan.total_estimate > left + 1e-9:
            return windows, (f"estimated total ${plan.total_estimate:.2f} does not fit spend "
                             f"window {w['scope']} {w['period']} {w['start']}: ${left:.2f} left")
    return windows, None


def _money(v: float | None) -> str:
    return "-" if v is None else f"${v:.2f}"


def _window_line(w: dict[str, Any]) -> str:
    return (f"{w['scope']} {w['period']} {w['start']} ({w['timezone']}): limit "
            f"{_money(w['limit_usd'])}, spent {_money(w['spent_usd'])}, reserved "
            f"{_money(w['reserved_usd'])}, {_money(w['remaining_usd'])} left")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-86400)")
    return value


def cmd_budget(args: argparse.Namespace) -> int:
    from flows.money.forecast import with_forecasts
    from flows.money.window import status
    from flows.money.window_sql import open_store
    from flows.storyboard.budgets import declared_specs

    specs = declared_specs()
    store = open_store()
    try:
        windows = with_forecasts(store, status(store, specs, everything=args.all))
        url = store.url
    finally:
        store.close()
    if args.json:
        print(json.dumps({"ledger": url, "windows": windows}, indent=2))
        return 0
    print(f"ledger: {url}")
    if not windows:
        print("no spend windows yet (declare budget.window in a storyboard, or scopes in the "
              "file STORYREEL_BUDGETS names)")
    print(f"{'scope':<16} {'period':<6} {'start':<11} {'timezone':<18} {'limit':>10} "
          f"{'spent':>10} {'reserved':>10} {'remaining':>10}")
    for w in windows:
        print(f"{w['scope']:<16} {w['period']:<6} {w['start']:<11} {w['timezone']:<18} "
              f"{_money(w['limit_usd']):>10} {_money(w['spent_usd']):>10} "
              f"{_money(w['reserved_usd']):>10} {_money(w['remaining_usd']):>10}")
        if w.get("forecast"):
            print(f"    at this pace: {w['forecast']}")
        for r in w["runs"]:
            print(f"    held by run {r['run_id']} on {r['host']} (pid {r['pid']}): "
                  f"{r['reservations']} reservation(s), {_money(r['reserved_usd'])}, lease "
                  f"{max(r['lease_s'], 0):g} s")
    return 0


def _window_used(w: dict[str, Any]) -> str:
    if "error" in w:
        return f"window: {w['scope']}: {w['error']}"
    return (f"window: {w['scope']} {w['period']} {w['start']}: this run {_money(w['run_spent_usd'])}"
            f" spent" + (f" + {_money(w['run_held_usd'])} held" if w["run_held_usd"] else "")
            + f"; all runs {_money(w['window_spent_usd'])} "
            + ("(no limit)" if w["limit_usd"] is None else
               f"of {_money(w['limit_usd'])}, {_money(w['remaining_usd'])} left"))


def _start_server(args: argparse.Namespace) -> Any:
    """With no PREFECT_API_URL: find or start storyreel's background Prefect server
    (flows/orchestration/server.py), unless --ephemeral-server / STORYREEL_SERVER=ephemeral."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from flows.orchestration import server

    if server.mode(args.ephemeral_server) != "local":
        return None
    try:
        pending = server.begin()
    except (OSError, server.ServerError) as exc:
        print(f"storyreel: no local Prefect server ({exc}); using a temporary one",
              file=sys.stderr)
        return None
    if pending.url is None:
        print(f"storyreel: starting a local Prefect server in the background (once; "
              f"`storyreel server stop` stops it; home {server.home()})", file=sys.stderr)
    return pending


def _use_server(pending: Any) -> None:
    from flows.orchestration import server

    try:
        os.environ["PREFECT_API_URL"] = pending.wait()
    except (OSError, server.ServerError) as exc:
        print(f"storyreel: the local Prefect server did not start ({exc}); using a temporary "
              "one", file=sys.stderr)


def cmd_server(args: argparse.Namespace) -> int:
    from flows.orchestration import server

    if args.action == "start":
        url = server.ensure()
        print(f"running: {url} (database {server.status()['database']})")
        return 0
    if args.action == "stop":
        state = server.stop()
        print(f"stopped: {state['url']} (pid {state['pid']})" if state else "not running")
        return 0
    st = server.status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"{'running' if st['running'] else 'not running'}"
              f"{'' if not st['running'] else ' (healthy)' if st['healthy'] else ' (not answering)'}")
        for k in ("url", "pid", "home", "database", "log", "mode"):
            if st.get(k) is not None:
                print(f"  {k + ':':<9} {st[k]}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from flows.storyboard.spec import Storyboard

    print(json.dumps(Storyboard.model_json_schema(), indent=2))
    return 0


def cmd_providers(args: argparse.Namespace) -> int:
    from providers.catalog import load_catalog

    catalog = load_catalog()
    if args.stale is not None:
        return _stale_prices(catalog, args.stale, args.json)
    if args.json:
        print(json.dumps({p: c.model_dump(mode="json") for p, c in catalog.items()}, indent=2))
        return 0
    from flows.storyboard.keys import key_env

    for p, cat in catalog.items():
        try:
            env = key_env(p) or "no key"
        except (KeyError, ImportError):
            env = "no adapter"
        print(f"{p}  ({cat.vendor}; key: {env})")
        for key, m in cat.models.items():
            state = f"RETIRED {m.retired}" if m.retired else ""
            price = m.price.model_dump(exclude_none=True, exclude={"currency"})
            if not m.price.extra_frames:
                price.pop("extra_frames", None)
            dated = f"as of {m.price_as_of}" if m.price_as_of else "free"
            print(f"  {key:<30} {'+'.join(m.inputs):<10} {m.duration_choices():<18} "
                  f"{','.join(m.aspect_ratios):<16} {price} {dated} seed:{m.seed} {state}")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    """The catalog's fal prices next to fal's live prices for this account (FAL_KEY)."""
    from flows.storyboard.prices import compare_fal

    rows, problem = compare_fal(refresh=args.refresh)
    if not any(r["live"] is not None for r in rows):
        print(f"storyreel prices: no live fal prices ({problem or 'none found'}); the catalog's "
              "estimates stay in use", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"prices": rows, "problem": problem}, indent=2))
        return 0
    print(f"{'endpoint':<52} {'catalog':>10} {'live':>10} {'unit':<10} {'difference':>18}")
    for r in rows:
        cat = f"${r['catalog']:.4f}" if r["catalog"] is not None else "-"
        live = f"${r['live']:.4f}" if r["live"] is not None else "-"
        diff = "-"
        if r["difference"] is not None:
            diff = "same" if abs(r["difference"]) < 5e-7 else f"{r['difference']:+.4f}"
            if r["difference_pct"] is not None and diff != "same":
                diff += f" ({r['difference_pct']:+.0f}%)"
        print(f"{r['endpoint']:<52} {cat:>10} {live:>10} {r['unit'] or '-':<10} {diff:>18}")
    differ = sum(1 for r in rows if r["difference"] is not None and abs(r["difference"]) >= 5e-7)
    print(f"{differ} of {len(rows)} fal endpoints differ from the catalog"
          + (f"; {problem}" if problem else ""))
    return 0


def _stale_prices(catalog: dict, days: int, as_json: bool) -> int:
    """The catalog entries whose price was last checked more than `days` days ago."""
    today = dt.date.today()
    rows = [{"provider": p, "model": key, "price_as_of": m.price_as_of.isoformat(),
             "age_days": (today - m.price_as_of).days, "source": m.price_source}
            for p, cat in catalog.items() for key, m in cat.models.items()
            if m.price_as_of is not None and (today - m.price_as_of).days > days]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{len(rows)} catalog price(s) older than {days} day(s) (today {today}):")
    for r in rows:
        print(f"  {r['provider']:<12} {r['model']:<26} {r['price_as_of']}  "
              f"{r['age_days']:>4} d  {r['source']}")
    return 0


def _days(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (an integer >= 0)")
    return n


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from flows.money.report import aggregate_runs, parse_by
    from flows.money.report_text import report_json, report_text

    try:
        by = parse_by(args.by)
    except ValueError as exc:
        raise SpecError([("--by", str(exc))]) from None
    if args.since and args.until and args.since > args.until:
        raise SpecError([("--since", f"{args.since} is after --until {args.until}")])
    try:
        tables = aggregate_runs([Path(d) for d in args.dirs], args.since, args.until, by)
    except FileNotFoundError as exc:
        raise SpecError([("report", str(exc))]) from None
    from flows.money.forecast import ledger_windows

    windows = ledger_windows()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, df in tables.items():
            df.to_csv(args.out / f"{name}.csv", index=df.index.name is not None
                      or isinstance(df.index, pd.MultiIndex))
    if args.html:
        from flows.money.report_page import write_report_page

        write_report_page(tables, args.html, windows=windows)
    if args.json:
        print(json.dumps(report_json(tables, windows), indent=2, default=str))
    else:
        print(report_text(tables, windows), end="")
        if args.html:
            print(f"page: {args.html}")
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from flows.review.picks import pick
    from flows.run.recut import open_run

    _, journal = open_run(args.dir)
    with journal:
        pick(args.dir, args.shot, args.take, journal.attempts())
        from flows.run.chain import stale_report

        stale = stale_report(args.dir, journal)  # start_from shots below a re-picked parent
    print(f"{args.dir / 'review.yaml'}: the cut uses take {args.take} of {args.shot}; "
          f"`storyreel cut {args.dir}` re-assembles it (no spend)")
    for line in stale:
        print(line)
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from flows.review.picks import reject
    from flows.run.recut import open_run

    _, journal = open_run(args.dir)
    with journal:
        entry = reject(args.dir, args.shot, journal.attempts(), args.note)
    print(f"{args.dir / 'review.yaml'}: rejected take(s) "
          f"{', '.join(map(str, sorted(entry.rejected)))} of {args.shot}; running the storyboard "
          f"again with --out {args.dir} makes new takes of it (and only of it)")
    return 0


def cmd_cut(args: argparse.Namespace) -> int:
    import asyncio

    from flows.run import lock as runlock
    from flows.run.recut import open_run, recut

    open_run(args.dir)[1].close()  # a wrong folder is named before anything is made in it
    plan = None
    if args.spec is not None:
        from flows.storyboard.plan import make_plan

        plan = make_plan(args.spec, _vars(args.var))
    elif args.var:
        raise SpecError([("--var", "only with --spec (the recorded storyboard has its "
                          "variables filled in)")])
    with runlock.own(args.dir):  # not while a run works the folder
        cut = asyncio.run(recut(args.dir, plan))
    for c in cut:
        print(f"{c.shot_id:<20} " + (f"take {c.take}" if c.take else "MISSING (slate)"))
    from flows.run.chain import stale_report
    from flows.run.recut import open_run as _open

    with _open(args.dir)[1] as journal:  # dependents cut as they are, though their parent changed
        for line in stale_report(args.dir, journal, plan):
            print(line)
    print(f"cut:    {args.dir / 'final.mp4'}\nreview: {args.dir / 'review.html'}")
    return 0 if all(c.take for c in cut) else 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="storyreel", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def spec_cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("spec", type=Path)
        p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                       help="set a storyboard variable (repeatable)")
        return p

    spec_cmd("validate", "check a storyboard").set_defaults(fn=cmd_validate)
    p = spec_cmd("plan", "price a storyboard without spending anything")
    p.add_argument("--budget", type=_usd, help="override budget.max_usd")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)
    p = spec_cmd("run", "render a storyboard into a cut")
    p.add_argument("--out", type=_out, help="run folder (an unfinished one is resumed), or "
                   "s3://bucket/prefix inside STORYREEL_ALLOWED_STORES: the run works in a local "
                   "scratch folder and publishes its deliverables and state there")
    p.add_argument("--budget", type=_usd, help="override budget.max_usd")
    p.add_argument("--wait", action="store_true",
                   help="if another run owns --out, wait for it instead of exiting 2")
    p.add_argument("--no-cache", action="store_true", help="do not reuse clips from earlier runs")
    p.add_argument("--regenerate", action="append", default=[], metavar="SHOT_ID",
                   help="generate this shot again even if cached (repeatable)")
    p.add_argument("--no-early-submit", action="store_true",
                   help="let the flow make every submit (by default the first attempts are sent "
                   "while Prefect starts)")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE",
                   help="a cost tag for the report, e.g. client=acme (repeatable; wins over the "
                   "storyboard's tags: for the same name; never regenerates anything)")
    p.add_argument("--resubmit-unconfirmed", action="store_true",
                   help="resubmit shots whose earlier submit may or may not have been accepted")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Prefect's log lines in the terminal (they always reach its server)")
    p.add_argument("--ephemeral-server", action="store_true",
                   help="without PREFECT_API_URL, use a temporary Prefect server for this run "
                   "instead of storyreel's background one (or STORYREEL_SERVER=ephemeral)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("budget", help="spend windows: limit, spent, reserved, remaining, and "
                       "the runs holding reservations")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="past windows too, not only today's "
                   "and this month's")
    p.set_defaults(fn=cmd_budget)
    p = sub.add_parser("server", help="storyreel's local Prefect server: status, start, stop")
    p.add_argument("action", choices=["status", "start", "stop"], nargs="?", default="status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_server)
    sub.add_parser("schema", help="print the storyboard JSON Schema").set_defaults(fn=cmd_schema)
    p = sub.add_parser("providers", help="list providers, models, limits and prices")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stale", type=_days, metavar="DAYS", help="only the models whose price "
                   "was last checked (price_as_of) more than DAYS days ago")
    p.set_defaults(fn=cmd_providers)
    p = sub.add_parser("prices", help="compare the catalog's fal prices with fal's live prices "
                       "for your account (FAL_KEY)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--refresh", action="store_true", help="ask fal now, not the day's cache")
    p.set_defaults(fn=cmd_prices)
    p = sub.add_parser("reconcile", help="ask the vendors about every job a run folder still "
                       "holds money for (in flight, cancel requested, abandoned, lost) and "
                       "rewrite its reports")
    p.add_argument("dir", type=Path)
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="wait up to this long for jobs still running to end (default 10)")
    p.set_defaults(fn=cmd_reconcile)
    p = sub.add_parser("report", help="aggregate the cost reports of many runs")
    p.add_argument("dirs", nargs="+", help="run folders (each with a cost.csv), or folders "
                   "holding run folders (searched recursively)")
    p.add_argument("--out", type=Path, help="write the tables as CSV files here")
    p.add_argument("--html", type=Path, metavar="FILE", help="write the report as one "
                   "self-contained page with charts (opens offline)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--by", metavar="KEYS", help="also group by these, comma-separated: "
                   "provider, model, day, run, tag:NAME (e.g. --by tag:client)")
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD",
                   help="only attempts started on or after this day (UTC)")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD",
                   help="only attempts started on or before this day (UTC)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("pick", help="choose the take a shot's cut uses (writes review.yaml)")
    p.add_argument("dir", type=Path, help="the run folder")
    p.add_argument("shot")
    p.add_argument("take", type=int)
    p.set_defaults(fn=cmd_pick)
    p = sub.add_parser("reject", help="reject a shot's takes: the next run makes new ones")
    p.add_argument("dir", type=Path, help="the run folder")
    p.add_argument("shot")
    p.add_argument("--note", help="why (shown on the review page)")
    p.set_defaults(fn=cmd_reject)
    p = sub.add_parser("cut", help="re-make the finished cut from the picks (no vendor call, "
                       "no spend)")
    p.add_argument("dir", type=Path, help="the run folder")
    p.add_argument("--spec", type=Path, help="the storyboard to cut by (default: the one the "
                   "folder's run recorded; needed for a folder made by an older storyreel, "
                   "which recorded none)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="with --spec: a storyboard variable, as given to the run (repeatable)")
    p.set_defaults(fn=cmd_cut)
    return ap


def dispatch(argv: list[str] | None = None) -> int:
    """Run one command; the errors storyreel raises on purpose become an exit code and one
    line per problem. Anything else propagates (`main` is the last resort)."""
    args = parser().parse_args(argv)
    try:
        _check_paths(args)
        return int(args.fn(args))
    except (SpecError, MissingKeyError, BusyError) as exc:
        if _debug():
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except BudgetError as exc:
        if _debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StoryreelError as exc:
        if _debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _check_paths(args: argparse.Namespace) -> None:
    """Paths on the command line that no file system takes (too long, a NUL) are wrong input,
    said before any command trips over them."""
    from flows.storyboard.files import PATH_MAX, path_problem, shown

    named = [(k, getattr(args, k, None)) for k in ("spec", "out", "dir")]
    named += [(f"dirs[{i}]", d) for i, d in enumerate(getattr(args, "dirs", None) or [])]
    issues = [(k, f"{problem}: '{shown(str(v), 60)}'") for k, v in named
              if v is not None and (problem := path_problem(str(v), PATH_MAX))]
    if issues:
        raise SpecError(issues)


def _debug() -> bool:
    return bool(os.environ.get("STORYREEL_DEBUG"))


def main(argv: list[str] | None = None) -> int:
    """The `storyreel` command: `dispatch`, and a last resort for what nobody expected, so
    that no input ends in a traceback (STORYREEL_DEBUG=1 shows it)."""
    try:
        return dispatch(argv)
    except Exception as exc:
        if _debug():
            raise
        print(f"error: {unexpected(exc)}", file=sys.stderr)
        return 1


def unexpected(exc: BaseException) -> str:
    """One line for an error nobody planned for: its type and text, keys masked, shortened."""
    from providers.errors import redact

    text = " ".join(redact(f"{type(exc).__name__}: {exc}").split())
    if len(text) > 300:
        text = text[:297] + "..."
    return (f"storyreel stopped on an unexpected error ({text}); STORYREEL_DEBUG=1 shows "
            "where")


if __name__ == "__main__":
    sys.exit(main())
