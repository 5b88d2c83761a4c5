"""P1's board traced: do conforms start as each download lands, and are both cores busy?

    python bench/p1_trace.py [--shots 100] [--before CHECKOUT]

One `storyreel run` of P1's board (fal, 3 s latency + U(0,1), 5 s clips served at 1280x720,
conformed to 320x180) under bench/_trace.py, against a running `prefect server`. Printed:
the lag from each clip downloaded (and verified) to its conform's ffmpeg starting, and how
many ffmpeg processes ran while conforms were waiting: the core-seconds of ffmpeg slots left
idle while a downloaded clip waited (the scheduler's loss), between the first download and
the last conform.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import harness as h


def traced_run(emu: Any, work: Path, n: int, api: str, root: Path | None) -> dict[str, Any]:
    emu.reset()
    tag = uuid.uuid4().hex[:8]
    spec = h.storyboard(work / f"spec-{tag}.yaml", n, size="320x180", tag=tag)
    trace = work / f"{tag}.trace.json"
    env = h.base_env(emu, work, prefect_home=work / "ph", api_url=api)
    script = h.BENCH / "_trace.py"  # it imports the code of STORYREEL_BENCH_ROOT
    if root is not None:
        env["PYTHONPATH"] = env["STORYREEL_BENCH_ROOT"] = str(root)
    proc = h.run_child([sys.executable, str(script), str(trace), "run", str(spec), "--out",
                        str(work / f"run-{tag}")], env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"storyreel failed: {proc.stderr_tail}")
    data = json.loads(trace.read_text())
    data["wall"] = proc.ended - proc.started
    return data


def analyse(t: dict[str, Any], cores: int) -> dict[str, Any]:
    spans = t["spans"]
    fetched = {lab.split()[-1]: end for lab, _, end in spans if lab.startswith("shot._fetch")}
    conforms = {lab.split()[-1]: (s, e) for lab, s, e in spans
                if lab.startswith("conform.conform_measured")}
    # ffmpeg processes, from the slot granted (spawn) to their end; conforms by their source
    ff = sorted((s, e) for _, s, e in t["procs"])
    starts = {lab.split()[-1]: s for lab, s, _ in t["procs"]
              if lab.startswith("ffmpeg < ") and lab.split()[-1] in fetched}
    lags = sorted(starts[r] - fetched[r] for r in starts)
    t0, t1 = min(fetched.values()), max(e for _, e in conforms.values())
    # sweep: at each moment, ffmpeg running and clips downloaded but not yet started
    marks = [(s, 1, 0) for s, _ in ff] + [(e, -1, 0) for _, e in ff]
    marks += [(fetched[r], 0, 1) for r in starts] + [(starts[r], 0, -1) for r in starts]
    marks.sort()
    running = waiting = 0
    idle_while_waiting = busy = 0.0
    prev = t0
    for at, dr, dw in marks:
        a, b = max(prev, t0), min(at, t1)
        if b > a:
            busy += min(running, cores) * (b - a)
            if waiting > 0:
                idle_while_waiting += max(0, min(cores, waiting) - running) * (b - a) \
                    if running < cores else 0.0
        prev = at
        running += dr
        waiting += dw
    first_dl = t0 - t["start"]
    return {"clips": len(starts), "lag_median": statistics.median(lags), "lag_max": lags[-1],
            "lag_p90": lags[int(0.9 * (len(lags) - 1))], "span": t1 - t0,
            "busy_share": busy / (cores * (t1 - t0)), "idle_core_s_while_waiting":
            idle_while_waiting, "first_download_after_start": first_dl,
            "last_conform_after_start": t1 - t["start"], "wall": t["wall"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=100)
    ap.add_argument("--before", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    import os

    cores = os.cpu_count() or 1
    work = h.workdir("p1-trace")
    emu = h.start_emulator(3.0, 1.0, (1280, 720))
    h.warm_media(emu, 5)
    who = [("after", None)] + ([("before", args.before.resolve())] if args.before else [])
    out: dict[str, Any] = {"machine": h.machine(), "runs": {w: [] for w, _ in who}}
    try:
        with h.prefect_server(work) as (api, pid):
            for _ in range(args.repeat):
                for name, root in who:
                    h.settle_server(pid)
                    h.wait_quiet()
                    a = analyse(traced_run(emu, work, args.shots, api, root), cores)
                    a["load"] = os.getloadavg()[0]
                    out["runs"][name].append(a)
    finally:
        emu.stop()
    for name, rs in out["runs"].items():
        for a in rs:
            print(f"{name}: {a['clips']} conforms; download -> ffmpeg start: median "
                  f"{a['lag_median']:.2f} s, p90 {a['lag_p90']:.2f}, max {a['lag_max']:.2f}; "
                  f"first download {a['first_download_after_start']:.1f} s after start, last "
                  f"conform {a['last_conform_after_start']:.1f} s, wall {a['wall']:.1f} s; "
                  f"ffmpeg slots busy {100 * a['busy_share']:.0f}% of that span, idle slots "
                  f"while clips waited {a['idle_core_s_while_waiting']:.2f} core-s "
                  f"(load average {a['load']:.1f})")
    h.save("p1-trace", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
