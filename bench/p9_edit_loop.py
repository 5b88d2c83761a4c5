"""P9: the edit loop, traced: one shot of a board edited, run again into the same folder.

    python bench/p9_edit_loop.py [--shots 20] [--size 1280x720] [--latency 1] [--repeat 3]
                                 [--no-demo]

Every run is the real CLI (`storyreel run`, running Prefect server, the vendor emulator),
under bench/_trace.py, which stamps the end of a run's steps (the cut and its ffmpeg calls, the
contact sheet, the reports, run.json, the review page, the flow's return, the exit) and every
shot event. For each edited run it prints where the time goes after the last shot is done,
"command -> first shot event", "last shot done -> final.mp4" and "last shot done -> exit".
The baseline, measured in the same run right after each edited run: ffmpeg alone joining the
same conformed clips (concat demuxer, video copied, one AAC pass), i.e. the simplest cut.
The demo (specs/demo.yaml, local animatics, no vendor) is edited the same way: its whole wall.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import harness as h

FINAL = {"done", "cached", "failed", "skipped", "unconfirmed"}


def traced(work: Path, env: dict[str, str], name: str, *args: str) -> dict[str, Any]:
    trace = work / f"{name}.trace.json"
    argv = [sys.executable, str(h.BENCH / "_trace.py"), str(trace), *args]
    proc = h.run_child(argv, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"storyreel failed: {proc.stderr_tail}")
    data = json.loads(trace.read_text())
    data["wall"] = proc.ended - proc.started
    data["started"] = proc.started
    return data


def breakdown(t: dict[str, Any]) -> dict[str, Any]:
    """Offsets from the last shot done (render_shot's end) of each step that ends after it."""
    spans = [(n, a, b) for n, a, b in t["spans"]]
    shots = [b for n, _a, b in spans if n.startswith("render_shot")]
    ends = [e[0] for e in t["events"] if e[2] == 0 and e[3] in FINAL]
    last = max(shots or ends)
    first_event = min((e[0] for e in t["events"] if e[3] != "queued"), default=float("nan"))
    final = max((b for n, _a, b in spans if n == "finishing.make_cut"), default=float("nan"))
    flow_end = max((b for n, _a, b in spans if n == "flow.run_plan"), default=float("nan"))
    run_end = max((b for n, _a, b in spans if n == "commands._run"), default=float("nan"))
    steps = sorted(((n, a - last, b - a) for n, a, b in spans
                    if b > last and not n.startswith("render_shot")), key=lambda s: s[1])
    return {"first_event": first_event - t["start"], "last_done": last - t["start"],
            "final": final - last, "flow_end": flow_end - last, "run_end": run_end - last,
            "exit": t["end"] - last, "wall": t["wall"], "steps": steps}


def bare_join(run_dir: Path, work: Path) -> float:
    """The simplest cut of the run's clips: concat demuxer, video copied, one AAC pass."""
    from flows.media.ffmpeg_exec import run_ffmpeg_sync

    results = json.loads((run_dir / "run.json").read_text())["results"]
    clips = [run_dir / r["clip"] for r in results]
    listfile = work / "bare.txt"
    listfile.write_text("".join(f"file '{c}'\n" for c in clips))
    t = time.monotonic()
    run_ffmpeg_sync(["-f", "concat", "-safe", "0", "-i", str(listfile), "-c:v", "copy",
                     "-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart", "-f", "mp4",
                     str(work / "bare.mp4")])
    return time.monotonic() - t


def variants(args: argparse.Namespace, env: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """("after", this checkout) and, with --before, ("before", that checkout's code)."""
    out = [("after", env)]
    if args.before:
        out.append(("before", {**env, "STORYREEL_BENCH_ROOT": str(Path(args.before).resolve()),
                               "PYTHONPATH": str(Path(args.before).resolve())}))
    return out


def edit_loop(args: argparse.Namespace, work: Path, env: dict[str, str], tag: str
              ) -> dict[str, list[dict[str, Any]]]:
    first = h.storyboard(work / "first.yaml", args.shots, size=args.size, tag=tag)
    res: dict[str, list[dict[str, Any]]] = {}
    for name, e in variants(args, env):
        traced(work, e, f"first-{name}", "run", str(first), "--out", str(work / f"edit-{name}"))
        res[name] = []
    for k in range(args.repeat):
        for name, e in variants(args, env):
            out = work / f"edit-{name}"
            spec = h.storyboard(work / f"edit{k}-{name}.yaml", args.shots, size=args.size,
                                tag=tag, prompts={args.edit: f"bench shot {args.edit:04d} {tag}, "
                                                             f"edit {k} {name}"})
            h.wait_quiet(timeout=20)
            b = breakdown(traced(work, e, f"edit{k}-{name}", "run", str(spec), "--out", str(out)))
            b["bare_join"] = bare_join(out, work)
            res[name].append(b)
    return res


def demo_loop(args: argparse.Namespace, work: Path, env: dict[str, str]
              ) -> dict[str, list[dict[str, Any]]]:
    needle = "The keeper climbs the spiral stairs with a lantern"
    res: dict[str, list[dict[str, Any]]] = {}
    for name, e in variants(args, env):
        demo = work / f"demo-spec-{name}"
        shutil.copytree(h.ROOT / "specs", demo)
        text = (demo / "demo.yaml").read_text().replace(needle, f"{needle} ({name})")
        (demo / "demo.yaml").write_text(text)
        traced(work, e, f"demo0-{name}", "run", str(demo / "demo.yaml"), "--out",
               str(work / f"demo-{name}"))
        res[name] = []
    for k in range(args.repeat):
        for name, e in variants(args, env):
            demo = work / f"demo-spec-{name}"
            text = (demo / "demo.yaml").read_text()
            (demo / "demo.yaml").write_text(text.replace(f"({name}", f"({name} take {k + 1},"))
            h.wait_quiet(timeout=20)
            res[name].append(breakdown(traced(work, e, f"demo{k + 1}-{name}", "run",
                                              str(demo / "demo.yaml"), "--out",
                                              str(work / f"demo-{name}"))))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--edit", type=int, default=7, help="index of the shot whose prompt changes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", help="another checkout: its code edited the same way, "
                                     "runs alternating with this one's")
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("--no-edit", action="store_true", help="the demo edit only")
    ap.add_argument("--report", action="store_true", help="print the last run's results again")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads((h.RESULTS / "p9.json").read_text())))
        return 0
    work = h.workdir("p9")
    w, hgt = (int(x) for x in args.size.split("x"))
    emu = h.start_emulator(args.latency, 0.0, (w, hgt))
    h.warm_media(emu, 5)
    tag = uuid.uuid4().hex[:8]
    try:
        with h.prefect_server(work) as (api, _pid):
            env = h.base_env(emu, work, prefect_home=work / "ph", api_url=api)
            edits = {} if args.no_edit else edit_loop(args, work, env, tag)
            demos = {} if args.no_demo else demo_loop(args, work, env)
    finally:
        emu.stop()
    out = {"machine": h.machine(), "args": vars(args), "edits": edits, "demo": demos,
           "load_at_end": h.busy_note()}
    h.save("p9" + ("-demo" if args.no_edit else ""), out)
    print(report(out))
    return 0


def report(out: dict[str, Any]) -> str:
    def med(rs: list[dict[str, Any]], k: str) -> float:
        return statistics.median(r[k] for r in rs)

    a = out["args"]
    lines = [f"P9 edit loop: {a['shots']} x 5 s shots at {a['size']}, shot {a['edit']} edited, "
             f"same --out, latency {a['latency']} s; {a['repeat']} edited runs per variant, "
             "alternating (seconds: median, then each run)"]
    keys = [("first_event", "command -> first shot event"),
            ("last_done", "command -> last shot done"),
            ("final", "last shot done -> final.mp4"),
            ("flow_end", "last shot done -> flow's work returned"),
            ("run_end", "last shot done -> Prefect flow run returned"),
            ("exit", "last shot done -> exit"), ("wall", "wall")]
    for runs, what in ((out["edits"], f"{a['shots']}-shot edit"), (out["demo"], "demo edit")):
        for name, rs in runs.items():
            if not rs:
                continue
            rows = [[label, med(rs, k), *(r[k] for r in rs)] for k, label in keys]
            if "bare_join" in rs[0]:
                rows.append(["baseline: ffmpeg alone, concat copy + 1 AAC pass",
                             med(rs, "bare_join"), *(r["bare_join"] for r in rs)])
                rows.append(["last shot done -> exit / baseline",
                             statistics.median(r["exit"] / r["bare_join"] for r in rs),
                             *(r["exit"] / r["bare_join"] for r in rs)])
            lines += ["", f"{what}, {name}",
                      h.table(rows, ["", "median", *(f"run {i + 1}" for i in range(len(rs)))])]
            last = rs[len(rs) // 2]
            lines += ["", f"{what}, {name}, run {len(rs) // 2 + 1}: steps ending after the last "
                      "shot was done (start offset from it, duration)",
                      h.table([[n, s, d] for n, s, d in last["steps"]], ["step", "at", "lasts"])]
        if "before" in runs and runs["before"]:
            lines.append(f"{what}: after / before, medians: " + ", ".join(
                f"{k} {med(runs['after'], k) / med(runs['before'], k):.2f}x"
                for k in ("final", "exit", "wall")))
    lines.append(f"load: {out['load_at_end']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
