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
"""

from __future__ import annotations

import argparse
import math
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
        api: str | None = None, server_pid: int | None = None) -> dict[str, Any]:
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
    args = ap.parse_args()
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
