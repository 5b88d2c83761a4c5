"""`storyreel`: validate, plan, run, schema, providers, report.

Exit codes: 0 done; 1 the run (or plan) could not do everything asked (over budget, shots
missing, a vendor or ffmpeg failure); 2 the input is wrong (storyboard, usage, missing key).
User mistakes print one line per problem and no traceback; STORYREEL_DEBUG=1 re-raises.
"""

from __future__ import annotations

import argparse
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


def cmd_validate(args: argparse.Namespace) -> int:
    from flows.run import make_plan

    plan = make_plan(args.spec, _vars(args.var))
    print(f"{args.spec}: ok ({len(plan.shots)} shots, {plan.total_duration:g} s, "
          f"{plan.width}x{plan.height} @ {plan.fps} fps)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from flows.run import make_plan
    from flows.storyboard.keys import missing_keys

    plan = make_plan(args.spec, _vars(args.var), args.budget)
    windows, window_problem = _plan_windows(plan)
    if args.json:
        print(json.dumps({**plan.to_json(), "windows": windows}, indent=2))
    else:
        print(f"{plan.storyboard.title}: {len(plan.shots)} shots, {plan.total_duration:g} s, "
              f"{plan.width}x{plan.height} @ {plan.fps} fps")
        print(f"{'shot':<20} {'provider':<12} {'model':<28} {'seconds':>7} {'estimate':>10}  fallback")
        for s in plan.shots:
            o = s.primary
            chain = ", ".join(x.label for x in s.options[1:]) or "-"
            if s.takes > 1:  # the estimate is the takes' price
                chain = f"{s.takes} takes x ${o.estimate_usd:.4f}; fallback {chain}"
            print(f"{s.shot_id:<20} {o.provider:<12} {o.model:<28} {s.duration:>7g} "
                  f"${s.estimate_usd:>9.4f}  {chain}")
        cap = plan.cap_usd
        print(f"{'total':<70} ${plan.total_estimate:>9.4f}  cap: "
              + (f"${cap:.2f}" if cap is not None else "none"))
        for w in windows:
            print(f"window {_window_line(w)}")
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


def cmd_run(args: argparse.Namespace) -> int:
    from flows.storyboard.plan import plan_file

    variables = _vars(args.var)
    plan = plan_file(args.spec, variables, args.budget)
    if args.out is not None and not args.regenerate:  # nothing to do: say so, start nothing
        from flows.uptodate import check  # (no vendor, key, ffmpeg or Prefect: flows/uptodate.py)

        verdict = check(plan, args.out)
        if verdict.final is not None:
            print(f"up to date: {verdict.final}")
            return 0
        if os.environ.get("STORYREEL_DEBUG"):
            print(f"storyreel: not up to date: {verdict.why}", file=sys.stderr)
    from flows import runlock
    from flows.run import preflight, run_dir_for
    from flows.storyboard.files import check_out_dir

    preflight(plan)  # before Prefect starts: a wrong input never reaches a vendor
    check_out_dir(args.out)  # the same check a deployment's `out` parameter gets
    if args.out is not None:  # the picks a person wrote must parse before anything runs
        from flows.review.picks import load_review

        load_review(args.out)
    out = run_dir_for(plan, args.out)
    with runlock.own(out, wait=args.wait):  # the whole run, early submits included
        return _run_locked(args, plan, variables, out)


def _run_locked(args: argparse.Namespace, plan: Any, variables: dict[str, str], out: Path) -> int:
    from flows import progress

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
    if not args.no_early_submit:  # vendors start while Prefect starts (flows/early.py)
        from flows.early import submit_early
        from flows.run import RunOptions

        early = asyncio.run(submit_early(plan, out, RunOptions(
            no_cache=args.no_cache, regenerate=set(args.regenerate))))
        if early:
            print(f"storyreel: {len(early)} shot(s) submitted before the flow started; run "
                  f"folder {out}", file=sys.stderr)
    if server is not None:
        _use_server(server)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.pipeline import render_storyboard

    result: dict[str, Any] = asyncio.run(render_storyboard(
        storyboard=str(args.spec), vars=variables, budget=args.budget,
        out=str(out), no_cache=args.no_cache,
        regenerate=args.regenerate, resubmit_unconfirmed=args.resubmit_unconfirmed))
    return result


def spent_line(totals: dict[str, Any], cap: str) -> str:
    """The CLI's money line: the same three figures as cost.csv, run.json and the artifact."""
    line = (f"spent:  ${totals['charged_usd']:.4f} charged + ${totals['at_risk_usd']:.4f} at risk "
            f"= ${totals['total_usd']:.4f} of {cap}")
    if totals["at_risk_usd"]:
        line += "\n        (at risk: may have been charged; `storyreel reconcile DIR` settles it)"
    return line


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Ask the vendors about every job a run folder holds money for, settle what ended,
    and rewrite cost.csv and run.json."""
    import asyncio

    from flows.reconcile import reconcile

    totals, unsettled = asyncio.run(reconcile(args.dir))
    print(spent_line(totals, "the run's cap"))
    for line in unsettled:
        print(f"still at risk: {line}")
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


def cmd_budget(args: argparse.Namespace) -> int:
    from flows.money.window import status
    from flows.money.window_sql import open_store
    from flows.storyboard.budgets import declared_specs

    specs = declared_specs()
    store = open_store()
    try:
        windows = status(store, specs, everything=args.all)
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
    (flows/server.py), unless --ephemeral-server / STORYREEL_SERVER=ephemeral."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from flows import server

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
    from flows import server

    try:
        os.environ["PREFECT_API_URL"] = pending.wait()
    except (OSError, server.ServerError) as exc:
        print(f"storyreel: the local Prefect server did not start ({exc}); using a temporary "
              "one", file=sys.stderr)


def cmd_server(args: argparse.Namespace) -> int:
    from flows import server

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
            print(f"  {key:<30} {'+'.join(m.inputs):<10} {m.duration_choices():<18} "
                  f"{','.join(m.aspect_ratios):<16} {price} seed:{m.seed} {state}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from flows.money.report import aggregate_runs, format_frame

    try:
        tables = aggregate_runs([Path(d) for d in args.dirs])
    except FileNotFoundError as exc:
        raise SpecError([("report", str(exc))]) from None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        print(f"== {name}\n{format_frame(df)}\n")
        if args.out:
            df.to_csv(args.out / f"{name}.csv", index=df.index.name is not None
                      or isinstance(df.index, pd.MultiIndex))
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from flows.review.cut import open_run
    from flows.review.picks import pick

    _, journal = open_run(args.dir)
    with journal:
        pick(args.dir, args.shot, args.take, journal.attempts())
    print(f"{args.dir / 'review.yaml'}: the cut uses take {args.take} of {args.shot}; "
          f"`storyreel cut {args.dir}` re-assembles it (no spend)")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from flows.review.cut import open_run
    from flows.review.picks import reject

    _, journal = open_run(args.dir)
    with journal:
        entry = reject(args.dir, args.shot, journal.attempts(), args.note)
    print(f"{args.dir / 'review.yaml'}: rejected take(s) "
          f"{', '.join(map(str, sorted(entry.rejected)))} of {args.shot}; running the storyboard "
          f"again with --out {args.dir} makes new takes of it (and only of it)")
    return 0


def cmd_cut(args: argparse.Namespace) -> int:
    import asyncio

    from flows import runlock
    from flows.review.cut import open_run, recut

    open_run(args.dir)[1].close()  # a wrong folder is named before anything is made in it
    plan = None
    if args.spec is not None:
        from flows.storyboard.plan import plan_file

        plan = plan_file(args.spec, _vars(args.var))
    elif args.var:
        raise SpecError([("--var", "only with --spec (the recorded storyboard has its "
                          "variables filled in)")])
    with runlock.own(args.dir):  # not while a run works the folder
        cut = asyncio.run(recut(args.dir, plan))
    for c in cut:
        print(f"{c.shot_id:<20} " + (f"take {c.take}" if c.take else "MISSING (slate)"))
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
    p.add_argument("--out", type=Path, help="run folder (an unfinished one is resumed)")
    p.add_argument("--budget", type=_usd, help="override budget.max_usd")
    p.add_argument("--wait", action="store_true",
                   help="if another run owns --out, wait for it instead of exiting 2")
    p.add_argument("--no-cache", action="store_true", help="do not reuse clips from earlier runs")
    p.add_argument("--regenerate", action="append", default=[], metavar="SHOT_ID",
                   help="generate this shot again even if cached (repeatable)")
    p.add_argument("--no-early-submit", action="store_true",
                   help="let the flow make every submit (by default the first attempts are sent "
                   "while Prefect starts)")
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
    p.set_defaults(fn=cmd_providers)
    p = sub.add_parser("reconcile", help="settle the jobs a run folder still holds money for "
                       "(unconfirmed, abandoned, lost) and rewrite its reports")
    p.add_argument("dir", type=Path)
    p.set_defaults(fn=cmd_reconcile)
    p = sub.add_parser("report", help="aggregate the cost reports of many runs")
    p.add_argument("dirs", nargs="+", help="run folders (each with a cost.csv)")
    p.add_argument("--out", type=Path, help="write the tables as CSV files here")
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (SpecError, MissingKeyError, BusyError) as exc:
        if os.environ.get("STORYREEL_DEBUG"):
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except BudgetError as exc:
        if os.environ.get("STORYREEL_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StoryreelError as exc:
        if os.environ.get("STORYREEL_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
