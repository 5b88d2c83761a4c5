"""P1: makespan of N shots with a jittered vendor latency and no concurrency limit.

    python bench/p1_makespan.py [--shots 10 100] [--latency 3] [--jitter 1]

Compared, on the same emulator in the same process run (same job latencies: the emulator's
jitter is seeded and reset before each run):
  floor   bench/floor.py: bare asyncio + httpx, submit/poll/download only (same poll schedule)
  seeds   bench/floor.py --seeds: one shot at a time, 5 s sleep between polls; measured on a
          few shots (--seeds-shots) and extrapolated linearly to N (said so in the output)
  storyreel  `storyreel run` (the real CLI, against a running `prefect server` by default)

Makespans are counted from the first submit the emulator saw: "generation" ends with the
last clip downloaded, "whole" with final.mp4 written (conform + assemble included, which the
floor does not do). Process start-up is P0's subject.

--conform-baseline (the large-board target): after each storyreel run, the clips it
downloaded are conformed again by ffmpeg alone, one process per core (P5's pool), twice: the
hand-written recipe (p5_conform.plain_argv) and storyreel's own arguments. The target is
    storyreel's wall <= floor generation + recipe conform x 1.1 + storyreel's assembly
(assembly = last conformed clip to final.mp4), all from the same process run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import harness as h


def run_floor(emu: Any, work: Path, n: int, seeds: bool = False) -> dict[str, Any]:
    emu.reset()
    out = work / f"floor-{'seeds' if seeds else 'async'}-{n}-{uuid.uuid4().hex[:6]}"
    report = out / "report.json"
    out.mkdir(parents=True)
    argv = [sys.executable, str(h.BENCH / "floor.py"), "--base", emu.base_url("fal"),
            "--key", "test-fal-key", "--shots", str(n), "--out", str(out), "--report", str(report),
            "--tag", uuid.uuid4().hex[:8]] + (["--seeds"] if seeds else [])
    proc = h.run_child(argv, env=h.base_env(emu, work, prefect_home=work / "ph", api_url=None),
                       report=report, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"floor failed: {proc.stderr_tail}")
    gt = h.gen_times(emu)
    return {"n": n, "gen": gt.last_download - gt.first_submit,
            "vendor_bound": gt.vendor_done - gt.first_submit, "wall": proc.wall,
            "submit_span": gt.last_submit - gt.first_submit,
            "cpu_s": proc.self_cpu_s, "per_job": gt.per_job, "startup": gt.first_submit - proc.started}


def run_storyreel(emu: Any, work: Path, n: int, api_url: str | None, size: str,
                  prefect_home: Path, name: str = "",
                  extra_env: dict[str, str] | None = None,
                  server_pid: int | None = None) -> dict[str, Any]:
    emu.reset()
    tag = uuid.uuid4().hex[:8]
    out = work / f"run-{n}-{tag}{name}"
    spec = h.storyboard(work / f"spec-{n}-{tag}.yaml", n, size=size, tag=tag)
    report = work / f"report-{n}-{tag}.json"
    env = {**h.base_env(emu, work, prefect_home=prefect_home, api_url=api_url),
           **(extra_env or {})}
    with h.CpuWindow(server_pid) as cpu:
        proc = h.run_child(h.cli_argv(report, "run", str(spec), "--out", str(out)), env=env,
                           report=report, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"storyreel run failed ({proc.returncode}): {proc.stderr_tail}")
    gt = h.gen_times(emu)
    final = h.mono_of_mtime(out / "final.mp4")
    clips = sorted((out / "clips").glob("*.mov"))
    last_conform = max(h.mono_of_mtime(c) for c in clips)
    return {"n": n, "gen": gt.last_download - gt.first_submit,
            "whole": final - gt.first_submit, "last_conform": last_conform - gt.first_submit,
            "submit_span": gt.last_submit - gt.first_submit,
            "vendor_bound": gt.vendor_done - gt.first_submit, "wall": proc.wall,
            "startup": gt.first_submit - proc.started, "exit_after_final": proc.ended - final,
            "cpu_s": proc.self_cpu_s, "children_cpu_s": proc.children_cpu_s,
            "peak_rss_mb": proc.report.get("peak_rss_mb"), "per_job": gt.per_job,
            "cpu_window": cpu.as_dict(), "assembly": final - last_conform,
            "out": str(out)}


def conform_baseline(out: Path, size: str, fps: int = 24, seconds: float = 5) -> dict[str, float]:
    """ffmpeg alone on the run's downloaded clips, one process per core: the hand recipe and
    storyreel's own argv (no Python around them), in seconds of wall."""
    import os

    from p5_conform import plain_argv, run_pool

    from flows.media.conform import OutputFormat, conform_argv, reading_of
    from flows.media.probe import probe

    w, hgt = (int(x) for x in size.split("x"))
    fmt = OutputFormat(w, hgt, fps)
    frames = fmt.frames(seconds)
    raws = sorted((out / "raw").glob("*.mp4"))
    dest = out / "baseline"
    dest.mkdir(exist_ok=True)
    infos = [probe(r) for r in raws]
    recipe = [plain_argv(r, dest / f"{r.stem}-p.mov", w, hgt, fps, frames, i.has_audio)
              for r, i in zip(raws, infos, strict=True)]
    # as storyreel runs them when every core is busy (one thread each)
    own = [conform_argv(r, dest / f"{r.stem}-o.mov", fmt, frames, reading_of(i))
           for r, i in zip(raws, infos, strict=True)]
    workers = os.cpu_count() or 1
    h.wait_quiet()
    t_recipe = run_pool(recipe, workers)
    h.wait_quiet()
    t_own = run_pool(own, workers)
    return {"clips": len(raws), "recipe": t_recipe, "own_argv": t_own}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--latency", type=float, default=3.0)
    ap.add_argument("--jitter", type=float, default=1.0, help="uniform 0..jitter s added per job")
    ap.add_argument("--size", default="320x180", help="output size of the cut (conform target)")
    ap.add_argument("--media", default="320x180", help="size the emulator serves, or 'full'")
    ap.add_argument("--seeds-shots", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--prefect", choices=["server", "ephemeral"], default="server")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for storyreel (e.g. STORYREEL_FFMPEG_JOBS=1)")
    ap.add_argument("--no-seeds", action="store_true")
    ap.add_argument("--conform-baseline", action="store_true",
                    help="conform each run's clips again with ffmpeg alone (the large-board goal)")
    args = ap.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    media = None if args.media == "full" else tuple(int(x) for x in args.media.split("x"))
    work = h.workdir("p1")
    info = h.machine()
    emu = h.start_emulator(args.latency, args.jitter, media)  # type: ignore[arg-type]
    h.warm_media(emu, 5)
    results: dict[str, Any] = {"machine": info, "args": vars(args), "runs": {}}
    try:
        with h.prefect_server(work) if args.prefect == "server" else _nothing() as server:
            api = server[0] if server else None

            def quiet() -> None:  # the server ingests a run's events for seconds after it
                if server:
                    h.settle_server(server[1])
                h.wait_quiet()

            for n in args.shots:
                floors, runs = [], []
                for _ in range(args.repeat):
                    quiet()
                    floors.append(run_floor(emu, work, n))
                    quiet()
                    runs.append(run_storyreel(emu, work, n, api, args.size, work / "ph",
                                              extra_env=extra,
                                              server_pid=server[1] if server else None))
                    if args.conform_baseline:
                        runs[-1]["baseline"] = conform_baseline(Path(runs[-1]["out"]), args.size)
                results["runs"][n] = {"floor": floors, "storyreel": runs}
            if not args.no_seeds:
                results["seeds"] = run_floor(emu, work, args.seeds_shots, seeds=True)
    finally:
        emu.stop()
    results["load_at_end"] = h.busy_note()
    print(report(results, args))
    h.save("p1", results)
    return 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    seeds = results.get("seeds") or {"gen": float("nan"), "n": 1}
    per_shot = seeds["gen"] / seeds["n"]
    rows = []
    for n, r in results["runs"].items():
        floor = statistics.median(x["gen"] for x in r["floor"])
        gen = statistics.median(x["gen"] for x in r["storyreel"])
        whole = statistics.median(x["whole"] for x in r["storyreel"])
        s = r["storyreel"][len(r["storyreel"]) // 2]
        seeds_n = per_shot * int(n)
        rows.append([n, s["vendor_bound"], r["floor"][0]["submit_span"], s["submit_span"],
                     floor, gen, gen / floor, whole, whole / floor,
                     (whole - gen) / whole, seeds_n, seeds_n / whole,
                     s["per_job"]["polls"], s["peak_rss_mb"]])
    head = ["shots", "vendor", "submits floor", "submits storyreel", "floor", "gen",
            "gen/floor", "whole", "whole/floor", "conf+asm share", "seeds~", "seeds/whole",
            "polls/job", "RSS MB"]
    lines = []
    for n, r in results["runs"].items():
        for i, s in enumerate(r["storyreel"]):
            b = s.get("baseline")
            if not b:
                continue
            floor = r["floor"][min(i, len(r["floor"]) - 1)]["gen"]
            target = floor + 1.1 * b["recipe"] + s["assembly"]
            lines.append(
                f"{n} shots, run {i + 1}: wall {s['wall']:.1f} s (first submit to final.mp4 "
                f"{s['whole']:.1f} s); target {target:.1f} s = floor {floor:.1f} + 1.1 x "
                f"ffmpeg alone {b['recipe']:.1f} (own argv {b['own_argv']:.1f}) + assembly "
                f"{s['assembly']:.1f} -> wall/target {s['wall'] / target:.2f}")
    return "\n".join([
        f"P1 makespan (s from first submit), latency {args.latency} s + U(0,{args.jitter}) s, "
        f"output {args.size}, emulator media {args.media}, prefect {args.prefect}",
        h.table(rows, head),
        f"vendor = when the last job was finished at the vendor; floor/gen = last clip "
        f"downloaded; whole = final.mp4 written. seeds~ = {seeds['n']} shots measured "
        f"sequentially ({per_shot:.2f} s/shot) x N, extrapolated.",
        *lines,
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"{results['load_at_end']}",
    ])


if __name__ == "__main__":
    sys.exit(main())
