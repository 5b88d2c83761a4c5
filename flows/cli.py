"""`storyreel`: validate, plan, run, schema, providers, report.

Exit codes: 0 done; 1 the run (or plan) could not do everything asked (over budget, shots
missing, a vendor or ffmpeg failure); 2 the input is wrong (storyboard, usage, missing key).
User mistakes print one line per problem and no traceback; STORYREEL_DEBUG=1 re-raises.
"""

from __future__ import annotations

import argparse
import asyncio
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
            if s.takes > 1:  # the estimate is the takes' price
                chain = f"{s.takes} takes x ${o.estimate_usd:.4f}; fallback {chain}"
            print(f"{s.shot_id:<20} {o.provider:<12} {o.model:<28} {s.duration:>7g} "
                  f"${s.estimate_usd:>9.4f}  {chain}")
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
    from flows.run import make_plan, preflight

    variables = _vars(args.var)
    plan = make_plan(args.spec, variables, args.budget)
    preflight(plan)  # before Prefect starts: a wrong input never reaches a vendor
    if args.out is not None:  # the picks a person wrote must parse before anything runs
        from flows.review.picks import load_review

        load_review(args.out)
    out = args.out
    from flows import progress

    live = progress.Progress()  # one line per shot, redrawn in place on a terminal
    progress.use(live)
    live.start(plan)
    if not args.verbose:  # Prefect's own lines still reach its server; -v shows them here
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    try:
        result = _run(args, plan, variables, out)
    finally:
        live.stop()
        progress.use(None)
    cap = f"${args.budget if args.budget is not None else plan.cap_usd:.2f}" \
        if (args.budget is not None or plan.cap_usd is not None) else "no cap"
    print(f"\n{result.get('summary', '')}\n\ncut:    {result['final']}\n"
          f"report: {result['cost_csv']}\nreview: {Path(result['run_dir']) / 'review.html'}\n"
          f"spent:  ${result['spent_usd']:.4f} of {cap}")
    if not result["ok"]:
        print(f"missing shots (placeholders in the cut): {', '.join(result['failed'])}",
              file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace, plan: Any, variables: dict[str, str], out: Any
         ) -> dict[str, Any]:
    if not args.no_early_submit:  # vendors start while Prefect starts (flows/early.py)
        from flows.early import submit_early
        from flows.run import RunOptions, run_dir_for

        out = run_dir_for(plan, args.out)
        early = asyncio.run(submit_early(plan, out, RunOptions(
            no_cache=args.no_cache, regenerate=set(args.regenerate))))
        if early:
            print(f"storyreel: {len(early)} shot(s) submitted before the flow started; run "
                  f"folder {out}", file=sys.stderr)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.pipeline import render_storyboard

    result: dict[str, Any] = asyncio.run(render_storyboard(
        storyboard=str(args.spec), vars=variables, budget=args.budget,
        out=str(out) if out else None, no_cache=args.no_cache,
        regenerate=args.regenerate, resubmit_unconfirmed=args.resubmit_unconfirmed))
    return result


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
    from flows.review.cut import recut

    cut = asyncio.run(recut(args.dir))
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
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Prefect's log lines in the terminal (they always reach its server)")
    p.set_defaults(fn=cmd_run)
    sub.add_parser("schema", help="print the storyboard JSON Schema").set_defaults(fn=cmd_schema)
    p = sub.add_parser("providers", help="list providers, models, limits and prices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_providers)
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
    p = sub.add_parser("cut", help="re-assemble the cut from the picks (no vendor call, no spend)")
    p.add_argument("dir", type=Path, help="the run folder")
    p.set_defaults(fn=cmd_cut)
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
