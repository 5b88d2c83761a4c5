"""P4: incremental re-run: a 20-shot storyboard, one shot's prompt edited, run again.

    python bench/p4_incremental.py [--shots 20] [--latency 3] [--jitter 1] [--size 1280x720]
                                   [--same-folder] [--no-early-submit]

Both runs are `storyreel run` (the real CLI, running Prefect server) into new run folders
sharing one clip cache, as a user would run them; with --same-folder all three go into one
run folder (the producer's loop: `--out` stays, so the unchanged third run is a no-op).
--no-early-submit is passed to every run (to measure what early submit saves). The emulator
serves clips at the output size. Reported: paid jobs of the second run (emulator submits), its
wall time against the first run's, and against the target "1 generation + 1 conform + 1 s",
where generation is the edited shot's submit -> clip downloaded and conform is that clip's
conform measured here afterwards (flows.media.conform.conform). Start-up (P0) is shown apart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import harness as h


def run(emu: Any, work: Path, api: str, spec: Path, name: str, folder: str | None = None,
        extra: tuple[str, ...] = ()) -> dict[str, Any]:
    emu.reset()
    out = work / (folder or name)
    report = work / f"{name}.json"
    env = h.base_env(emu, work, prefect_home=work / "ph", api_url=api)
    proc = h.run_child(h.cli_argv(report, "run", str(spec), "--out", str(out), *extra), env=env,
                       report=report, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"storyreel failed: {proc.stderr_tail}")
    jobs = emu.jobs("fal")
    res: dict[str, Any] = {"wall": proc.wall, "paid_jobs": len(jobs), "out": str(out),
                           "final": h.mono_of_mtime(out / "final.mp4") - proc.started,
                           "cpu_s": proc.self_cpu_s, "children_cpu_s": proc.children_cpu_s}
    res["exit_after_final"] = proc.ended - proc.started - res["final"]
    if jobs:
        gt = h.gen_times(emu)
        res["startup"] = gt.first_submit - proc.started
        res["generation"] = gt.last_download - gt.first_submit
        res["final_after_download"] = res["final"] - (gt.last_download - proc.started)
    else:
        # a no-op run never imports the flow: its whole wall is start-up
        res["startup"] = proc.report["stamps"].get("pipeline_ready", proc.ended) - proc.started
    return res


def conform_time(raw: Path, work: Path, size: str) -> float:
    from flows.media.conform import OutputFormat, conform

    w, hgt = (int(x) for x in size.split("x"))
    t = time.monotonic()
    asyncio.run(conform(raw, work / "bench-conform.mov", OutputFormat(w, hgt, 24), 5))
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--latency", type=float, default=3.0)
    ap.add_argument("--jitter", type=float, default=1.0)
    ap.add_argument("--size", default="1280x720", help="output size, also served by the emulator")
    ap.add_argument("--edit", type=int, default=7, help="index of the shot whose prompt changes")
    ap.add_argument("--same-folder", action="store_true", help="all runs into one --out")
    ap.add_argument("--no-early-submit", action="store_true")
    args = ap.parse_args()
    work = h.workdir("p4")
    w, hgt = (int(x) for x in args.size.split("x"))
    emu = h.start_emulator(args.latency, args.jitter, (w, hgt))
    h.warm_media(emu, 5)
    tag = uuid.uuid4().hex[:8]
    first = h.storyboard(work / "first.yaml", args.shots, size=args.size, tag=tag)
    edited = h.storyboard(work / "edited.yaml", args.shots, size=args.size, tag=tag,
                          prompts={args.edit: f"bench shot {args.edit:04d} {tag}, now at night"})
    try:
        with h.prefect_server(work) as (api, _pid):
            h.wait_quiet()
            folder = "run1" if args.same_folder else None
            extra = ("--no-early-submit",) if args.no_early_submit else ()
            r1 = run(emu, work, api, first, "run1", folder, extra)
            h.wait_quiet()
            r2 = run(emu, work, api, edited, "run2", folder, extra)
            h.wait_quiet()
            # nothing changed: all from the cache (a new folder) or nothing to do (the same)
            r3 = run(emu, work, api, edited, "run3", folder, extra)
    finally:
        emu.stop()
    raw = max((Path(r2["out"]) / "raw").glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    h.wait_quiet()
    conform_s = conform_time(raw, work, args.size)
    out = {"machine": h.machine(), "args": vars(args), "first": r1, "edited": r2,
           "unchanged": r3, "one_conform": conform_s, "load_at_end": h.busy_note()}
    print(report(out))
    h.save("p4" + ("-same" if args.same_folder else "")
           + ("-noearly" if args.no_early_submit else ""), out)
    return 0


def report(out: dict[str, Any]) -> str:
    r1, r2, r3 = out["first"], out["edited"], out["unchanged"]
    target = r2["generation"] + out["one_conform"] + 1.0
    rows = [[name, r["paid_jobs"], r["startup"], r.get("generation", float("nan")),
             r.get("final_after_download", float("nan")), r["final"], r["exit_after_final"],
             r["wall"], r["wall"] / r1["wall"], r["wall"] - r["startup"]]
            for name, r in (("first run", r1), ("1 shot edited", r2), ("unchanged", r3))]
    head = ["run", "paid jobs", "start-up", "generation", "download->final", "final.mp4 at",
            "final->exit", "wall", "vs first", "wall - start-up"]
    return "\n".join([
        f"P4 incremental: {out['args']['shots']} x 5 s shots at {out['args']['size']}, latency "
        f"{out['args']['latency']} s + U(0,{out['args']['jitter']}) s (seconds from the command)"
        f"{'; one run folder' if out['args'].get('same_folder') else ''}"
        f"{'; --no-early-submit' if out['args'].get('no_early_submit') else ''}",
        h.table(rows, head),
        f"target for the edited run: wall <= 1 generation ({r2['generation']:.2f}) + 1 conform "
        f"({out['one_conform']:.2f}) + 1 s = {target:.2f} s; measured {r2['wall']:.2f} s "
        f"({r2['wall'] - r2['startup']:.2f} s after start-up).",
        f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
        f"{out['load_at_end']}"])


if __name__ == "__main__":
    sys.exit(main())
