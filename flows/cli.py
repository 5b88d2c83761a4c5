"""`storyreel`: validate, plan, run, schema, providers, report.

Exit codes: 0 done; 1 the run (or plan) could not do everything asked (over budget, shots
missing, a vendor or ffmpeg failure); 2 the input is wrong (storyboard, usage, missing key).
User mistakes print one line per problem and no traceback; STORYREEL_DEBUG=1 re-raises.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from providers.errors import BudgetError, MissingKeyError, SpecError, StoryreelError


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
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(f"{plan.storyboard.title}: {len(plan.shots)} shots, {plan.total_duration:g} s, "
              f"{plan.width}x{plan.height} @ {plan.fps} fps")
        print(f"{'shot':<20} {'provider':<12} {'model':<28} {'seconds':>7} {'estimate':>10}  fallback")
        for s in plan.shots:
            o = s.primary
            chain = ", ".join(x.label for x in s.options[1:]) or "-"
            print(f"{s.shot_id:<20} {o.provider:<12} {o.model:<28} {s.duration:>7g} "
                  f"${o.estimate_usd:>9.4f}  {chain}")
        cap = plan.cap_usd
        print(f"{'total':<70} ${plan.total_estimate:>9.4f}  cap: "
              + (f"${cap:.2f}" if cap is not None else "none"))
    problems = plan.over_budget()
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
    out = args.out
    if out is not None and not args.regenerate:  # nothing to do: say so, start nothing (no
        from flows.uptodate import check  # vendor, key, ffmpeg or Prefect: flows/uptodate.py)

        verdict = check(plan, out)
        if verdict.final is not None:
            print(f"up to date: {verdict.final}")
            return 0
        if os.environ.get("STORYREEL_DEBUG"):
            print(f"storyreel: not up to date: {verdict.why}", file=sys.stderr)
    import asyncio  # here, not at the top: "up to date" needs no event loop (nor ssl)

    from flows.run import preflight

    preflight(plan)  # before Prefect starts: a wrong input never reaches a vendor
    server = _start_server(args)  # a local Prefect server boots while the vendors start
    if not args.no_early_submit:  # vendors start while Prefect starts (flows/early.py)
        from flows.early import submit_early
        from flows.run import RunOptions, run_dir_for

        out = run_dir_for(plan, args.out)
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
        out=str(out) if out else None, no_cache=args.no_cache,
        regenerate=args.regenerate, resubmit_unconfirmed=args.resubmit_unconfirmed))
    cap = f"${args.budget if args.budget is not None else plan.cap_usd:.2f}" \
        if (args.budget is not None or plan.cap_usd is not None) else "no cap"
    print(f"\n{result.get('summary', '')}\n\ncut:    {result['final']}\n"
          f"report: {result['cost_csv']}\nspent:  ${result['spent_usd']:.4f} of {cap}")
    if not result["ok"]:
        print(f"missing shots (placeholders in the cut): {', '.join(result['failed'])}",
              file=sys.stderr)
        return 1
    return 0


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
                  f"{','.join(m.aspect_ratios):<16} {price} {state}")
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
    p.add_argument("--budget", type=float, help="override budget.max_usd")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)
    p = spec_cmd("run", "render a storyboard into a cut")
    p.add_argument("--out", type=Path, help="run folder (an unfinished one is resumed)")
    p.add_argument("--budget", type=float, help="override budget.max_usd")
    p.add_argument("--no-cache", action="store_true", help="do not reuse clips from earlier runs")
    p.add_argument("--regenerate", action="append", default=[], metavar="SHOT_ID",
                   help="generate this shot again even if cached (repeatable)")
    p.add_argument("--no-early-submit", action="store_true",
                   help="let the flow make every submit (by default the first attempts are sent "
                   "while Prefect starts)")
    p.add_argument("--resubmit-unconfirmed", action="store_true",
                   help="resubmit shots whose earlier submit may or may not have been accepted")
    p.add_argument("--ephemeral-server", action="store_true",
                   help="without PREFECT_API_URL, use a temporary Prefect server for this run "
                   "instead of storyreel's background one (or STORYREEL_SERVER=ephemeral)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("server", help="storyreel's local Prefect server: status, start, stop")
    p.add_argument("action", choices=["status", "start", "stop"], nargs="?", default="status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_server)
    sub.add_parser("schema", help="print the storyboard JSON Schema").set_defaults(fn=cmd_schema)
    p = sub.add_parser("providers", help="list providers, models, limits and prices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_providers)
    p = sub.add_parser("report", help="aggregate the cost reports of many runs")
    p.add_argument("dirs", nargs="+", help="run folders (each with a cost.csv)")
    p.add_argument("--out", type=Path, help="write the tables as CSV files here")
    p.set_defaults(fn=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (SpecError, MissingKeyError) as exc:
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
