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

--conform-baseline (the large-board target, issue 25): after each storyreel run, the clips it
downloaded are conformed again by ffmpeg alone, one process per core (P5's pool), twice: the
hand-written recipe (p5_conform.plain_argv) and storyreel's own arguments; then ffmpeg alone
joins storyreel's conformed clips (concat demuxer, video copied, one AAC pass: the simplest
cut). The target is
    storyreel's wall <= 1.10 x (max(floor generation, recipe conform) + join)
all from the same process run: generation and conforms may overlap, so the ideal is the
longer of the two, then the join.

--before PATH: each storyreel run is followed by one with the code of another checkout
(e.g. `git archive main | tar -x -C /tmp/before`), same emulator, same baselines.
"""

from __future__ import annotations

import argparse
import os
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
                  server_pid: int | None = None, root: Path | None = None) -> dict[str, Any]:
    """`root`: another checkout whose code runs instead of this one (its own bench driver,
    which puts its root first on sys.path)."""
    emu.reset()
    tag = uuid.uuid4().hex[:8]
    out = work / f"run-{n}-{tag}{name}"
    spec = h.storyboard(work / f"spec-{n}-{tag}.yaml", n, size=size, tag=tag)
    report = work / f"report-{n}-{tag}.json"
    env = {**h.base_env(emu, work, prefect_home=prefect_home, api_url=api_url),
           **(extra_env or {})}
    argv = h.cli_argv(report, "run", str(spec), "--out", str(out))
    if root is not None:
        env["PYTHONPATH"] = str(root)
        argv[1] = str(root / "bench" / "_measure.py")
    with h.CpuWindow(server_pid) as cpu:
        proc = h.run_child(argv, env=env, report=report, timeout=3600)
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
    storyreel's own argv (no Python around them), then the join, in seconds of wall."""
    from p5_conform import plain_argv

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
    h.wait_quiet()
    return {"clips": len(raws), "recipe": t_recipe, "own_argv": t_own,
            "join": bare_join(out, dest)}


def _niced() -> None:
    """The baselines' ffmpeg at the priority storyreel gives its own (ffmpeg_exec: nice +10 by
    default), so that other work on a shared machine slows both alike: at nice 0 against
    storyreel's +10, a loaded machine measured the nice, not storyreel."""
    from flows.media.ffmpeg_exec import _nice

    os.nice(_nice())


def run_pool(argvs: list[list[str]], workers: int) -> float:
    """ffmpeg alone on argvs, `workers` processes at a time (P5's pool, niced as storyreel)."""
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    from flows.media.ffmpeg_exec import BASE_ARGS, ffmpeg_exe

    def one(argv: list[str]) -> None:
        subprocess.run([ffmpeg_exe(), *BASE_ARGS, *argv], check=True, capture_output=True,
                       timeout=600, preexec_fn=_niced)

    t = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, argvs))
    return time.monotonic() - t


def bare_join(run_dir: Path, work: Path) -> float:
    """ffmpeg alone making the simplest cut of the run's conformed clips, in timeline order:
    concat demuxer, video copied, the audio encoded once (AAC)."""
    import json

    results = json.loads((run_dir / "run.json").read_text())["results"]
    listfile = work / "join.txt"
    listfile.write_text("".join(f"file '{run_dir / r['clip']}'\n" for r in results))
    return run_pool([["-f", "concat", "-safe", "0", "-i", str(listfile), "-c:v", "copy",
                      "-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart", "-f", "mp4",
                      str(work / "join.mp4")]], 1)


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
    ap.add_argument("--before", type=Path,
                    help="another checkout: a run of its code after each run of this one")
    args = ap.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    if "STORYREEL_FFMPEG_NICE" in extra:  # the baselines' ffmpeg get storyreel's priority
        os.environ["STORYREEL_FFMPEG_NICE"] = extra["STORYREEL_FFMPEG_NICE"]
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
                floors, runs, befores = [], [], []
                for _ in range(args.repeat):
                    quiet()
                    floors.append(run_floor(emu, work, n))
                    quiet()
                    runs.append(run_storyreel(emu, work, n, api, args.size, work / "ph",
                                              extra_env=extra,
                                              server_pid=server[1] if server else None))
                    if args.conform_baseline:
                        runs[-1]["baseline"] = conform_baseline(Path(runs[-1]["out"]), args.size)
                    if args.before:
                        quiet()
                        befores.append(run_storyreel(
                            emu, work, n, api, args.size, work / "ph", name="-before",
                            extra_env=extra, server_pid=server[1] if server else None,
                            root=args.before.resolve()))
                results["runs"][n] = {"floor": floors, "storyreel": runs}
                if befores:
                    results["runs"][n]["before"] = befores
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
            ideal = max(floor, b["recipe"]) + b["join"]
            lines.append(
                f"{n} shots, run {i + 1}: baseline {ideal:.1f} s = max(floor {floor:.1f}, "
                f"ffmpeg alone conform {b['recipe']:.1f} (own argv {b['own_argv']:.1f})) + "
                f"ffmpeg alone join {b['join']:.1f}; target 1.10 x = {1.1 * ideal:.1f} s")
            befores = r.get("before") or []
            for who, x in [("storyreel", s)] + ([("before", befores[i])] if i < len(befores)
                                                else []):
                lines.append(
                    f"  {who}: wall {x['wall']:.1f} s -> {x['wall'] / ideal:.2f}x the baseline "
                    f"(start-up {x['startup']:.1f}, first submit to last download "
                    f"{x['gen']:.1f}, to last conform {x['last_conform']:.1f}, to final.mp4 "
                    f"{x['whole']:.1f} = {x['whole'] / ideal:.2f}x; exit {x['exit_after_final']:.1f}"
                    f" s after it); CPU flow {x['cpu_s']:.1f} s, ffmpeg "
                    f"{x['children_cpu_s']:.1f} s")
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
