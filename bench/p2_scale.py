"""P2: 1000 shots of small clips: CPU per shot over the floor, peak RSS, HTTP requests per job.

    python bench/p2_scale.py [--shots 1000] [--latency 20] [--jitter 5]

Three processes do the same vendor work against the same emulator (in this process):
  floor      bench/floor.py: bare asyncio + httpx, submit/poll/download only
  plain      bench/_plain.py: storyreel's own modules (journal, ledger, cache, probe, conform,
             assemble, reports) sequenced like the flow, without Prefect
  storyreel  `storyreel run` (the real CLI) against a running `prefect server`
CPU is each process's own user+system time (ffmpeg children excluded, listed apart); the
Prefect server's CPU is read from /proc before and after (it keeps ingesting events after
the flow returns, so we wait for it to go idle). Clips are 2 s (fal wan-2.7), served at
--media and conformed to --size so that ffmpeg does not dominate the machine.

    python bench/p2_scale.py --slope [--slope-shots 1 40] [--repeat 3] [--before CHECKOUT]

--slope: what one more parallel shot adds to the wall (issue 25: 40 shots against 1, 1 s
latency, goal <= 0.25 s): `storyreel run` (and the floor) at each size, latency 1 s, no
jitter, P1's clips (5 s served at 1280x720, conformed to 320x180), medians of --repeat
runs; slope = (wall(40) - wall(1)) / 39. --before: the same storyreel runs with another
checkout's code, interleaved.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import harness as h


def expected_polls(latency: float, first: float = 1.0, factor: float = 1.5, most: float = 10.0) -> int:
    """Status polls the adapters' schedule needs for a job ready after `latency` s: one right
    after submit, then at first, first*(1+factor), ... until one lands after `latency`."""
    t, interval, n = 0.0, first, 1
    while t < latency:
        t += interval
        interval = min(most, interval * factor)
        n += 1
    return n


def run(emu: Any, work: Path, kind: str, n: int, args: argparse.Namespace,
        api: str | None = None, server_pid: int | None = None,
        root: Path | None = None) -> dict[str, Any]:
    emu.reset()
    tag = uuid.uuid4().hex[:8]
    out = work / f"{kind}-{tag}"
    report = work / f"{kind}-{tag}.json"
    env = h.base_env(emu, work / tag, prefect_home=work / "ph", api_url=api)
    if kind == "floor":
        out.mkdir()
        argv = [sys.executable, str(h.BENCH / "floor.py"), "--base", emu.base_url("fal"),
                "--key", "test-fal-key", "--shots", str(n), "--out", str(out), "--report",
                str(report), "--preset", "wan", "--duration", str(args.duration), "--tag", tag]
    else:
        spec = h.storyboard(work / f"spec-{tag}.yaml", n, model="wan-2.7",
                            duration=args.duration, size=args.size, tag=tag)
        argv = (h.cli_argv(report, "run", str(spec), "--out", str(out)) if kind == "storyreel"
                else [sys.executable, str(h.BENCH / "_measure.py"), str(report), "plain",
                      str(spec), str(out)])
    if root is not None:  # another checkout's code, through its own bench driver
        env["PYTHONPATH"] = str(root)
        argv[1] = str(root / "bench" / "_measure.py")
    server_before = h.tree_cpu(server_pid) if server_pid else 0.0
    proc = h.run_child(argv, env=env, report=report, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed ({proc.returncode}): {proc.stderr_tail}")
    server_cpu = (h.settle_server(server_pid) - server_before) if server_pid else None
    gt = h.gen_times(emu)
    if gt.jobs != n or gt.downloads != n:
        raise RuntimeError(f"{kind}: {gt.jobs} jobs, {gt.downloads} downloads for {n} shots")
    return {"kind": kind, "n": n, "wall": proc.wall, "gen": gt.last_download - gt.first_submit,
            "submit_span": gt.last_submit - gt.first_submit,
            "cpu_s": proc.self_cpu_s, "children_cpu_s": proc.children_cpu_s,
            "peak_rss_mb": proc.report.get("peak_rss_mb", proc.report.get("self", {}).get(
                "maxrss_mb")), "server_cpu_s": server_cpu, "per_job": gt.per_job}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=20.0,
                    help="longer than it takes to submit every shot, so polling is steady")
    ap.add_argument("--jitter", type=float, default=5.0)
    ap.add_argument("--duration", type=int, default=2, help="clip seconds (wan-2.7: 2..15)")
    ap.add_argument("--size", default="160x90", help="output size (conform target)")
    ap.add_argument("--media", default="160x90", help="size the emulator serves")
    ap.add_argument("--kinds", nargs="+", default=["floor", "plain", "storyreel"])
    ap.add_argument("--slope", action="store_true",
                    help="wall per added parallel shot (latency 1 s, no jitter unless given)")
    ap.add_argument("--slope-shots", type=int, nargs=2, default=[1, 40])
    ap.add_argument("--repeat", type=int, default=3, help="runs per size with --slope")
    ap.add_argument("--before", type=Path, help="another checkout, for before figures")
    args = ap.parse_args()
    if args.slope:
        return slope(args)
    media = tuple(int(x) for x in args.media.split("x"))
    work = h.workdir("p2")
    emu = h.start_emulator(args.latency, args.jitter, media)  # type: ignore[arg-type]
    h.warm_media(emu, args.duration, resolution="720p")
    res: dict[str, Any] = {}
    try:
        with h.prefect_server(work) as (api, pid):
            for kind in args.kinds:
                h.wait_quiet()
                res[kind] = run(emu, work, kind, args.shots, args, api if kind == "storyreel"
                                else None, pid if kind == "storyreel" else None)
    finally:
        emu.stop()
    out = {"machine": h.machine(), "args": vars(args), "runs": res, "load_at_end": h.busy_note(),
           "expected_polls": expected_polls(args.latency),
           "formula_polls": 1 + math.log2(args.latency / 1.0) + 3}
    print(report(out))
    h.save("p2", out)
    return 0


def slope(args: argparse.Namespace) -> int:
    import statistics

    # P1's clips unless told otherwise: 5 s, served at 720p, conformed to 320x180
    for flag, name, value in [("--latency", "latency", 1.0), ("--jitter", "jitter", 0.0),
                              ("--duration", "duration", 5), ("--media", "media", "1280x720"),
                              ("--size", "size", "320x180")]:
        if flag not in sys.argv:
            setattr(args, name, value)
    media = tuple(int(x) for x in args.media.split("x"))
    work = h.workdir("p2-slope")
    emu = h.start_emulator(args.latency, args.jitter, media)  # type: ignore[arg-type]
    h.warm_media(emu, args.duration, resolution="720p")
    who = [("floor", None), ("storyreel", None)]
    if args.before:
        who.append(("before", args.before.resolve()))
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {w: {} for w, _ in who}
    try:
        with h.prefect_server(work) as (api, pid):
            for _ in range(args.repeat):
                for n in args.slope_shots:
                    for name, root in who:
                        h.settle_server(pid)
                        h.wait_quiet()
                        kind = "floor" if name == "floor" else "storyreel"
                        r = run(emu, work, kind, n, args, api if kind == "storyreel" else None,
                                pid if kind == "storyreel" else None, root)
                        r["load"] = list(os.getloadavg())
                        runs[name].setdefault(n, []).append(r)
    finally:
        emu.stop()
    lo, hi = args.slope_shots
    lines = [f"P2 slope: {lo} vs {hi} parallel shots of {args.duration} s, latency "
             f"{args.latency} s + U(0,{args.jitter}), media {args.media}, output {args.size}, "
             f"median of {args.repeat}"]
    out: dict[str, Any] = {"machine": h.machine(), "args": {k: str(v) for k, v in
                                                            vars(args).items()},
                           "runs": {w: {str(n): r for n, r in x.items()} for w, x in runs.items()}}
    for name, by_n in runs.items():
        w = {n: statistics.median(r["wall"] for r in rs) for n, rs in by_n.items()}
        per = (w[hi] - w[lo]) / (hi - lo)
        loads = [r["load"][0] for rs in by_n.values() for r in rs]
        out.setdefault("slope", {})[name] = per
        lines.append(f"  {name:9s}: wall {w[lo]:.2f} s at {lo}, {w[hi]:.2f} s at {hi} -> "
                     f"{per:.3f} s per added shot (walls {[round(r['wall'], 2) for r in by_n[hi]]};"
                     f" load average {min(loads):.1f}-{max(loads):.1f})")
    out["load_at_end"] = h.busy_note()
    lines.append(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
                 f"{out['load_at_end']}")
    print("\n".join(lines))
    h.save("p2-slope", out)
    return 0


def report(out: dict[str, Any]) -> str:
    runs, n = out["runs"], out["args"]["shots"]
    floor = runs.get("floor")
    rows = []
    for kind, r in runs.items():
        over = (r["cpu_s"] - floor["cpu_s"]) / n * 1000 if floor else float("nan")
        srv = r["server_cpu_s"]
        rows.append([kind, r["wall"], r["gen"], r["cpu_s"], r["cpu_s"] / n * 1000, over,
                     r["children_cpu_s"], "-" if srv is None else f"{srv:.1f}",
                     "-" if srv is None else f"{srv / n * 1000:.1f}", r["peak_rss_mb"],
                     r["per_job"]["requests"], r["per_job"]["polls"]])
    head = ["process", "wall s", "gen s", "CPU s", "CPU ms/shot", "over floor ms/shot",
            "ffmpeg CPU s", "server CPU s", "server ms/shot", "peak RSS MB", "HTTP req/job",
            "polls/job"]
    lines = [f"P2 {n} shots of {out['args']['duration']} s, latency {out['args']['latency']} s "
             f"+ U(0,{out['args']['jitter']}), media {out['args']['media']}, output "
             f"{out['args']['size']}", h.table(rows, head)]
    if "plain" in runs and "storyreel" in runs:
        pre = (runs["storyreel"]["cpu_s"] - runs["plain"]["cpu_s"]) / n * 1000
        lines.append(f"Prefect's own overhead in the flow process: {pre:.1f} ms/shot "
                     "(storyreel - plain); the server's is in 'server ms/shot'.")
    lines.append(f"polls/job: schedule predicts {out['expected_polls']} status polls for a "
                 f"{out['args']['latency']} s job; 1 + log2(latency/first) + 3 = "
                 f"{out['formula_polls']:.2f}. HTTP req/job = submit + polls + result "
                 "(+1 download, not counted).")
    lines.append(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
                 f"{out['load_at_end']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
