"""P0: from the command to the first vendor submit, and total wall, for a 1-shot storyboard.

    python bench/p0_startup.py [--repeat 2] [--latency 3]

Modes (each a fresh `storyreel run` process, the real CLI):
  cold       no PREFECT_API_URL, a fresh PREFECT_HOME: Prefect starts a temporary server and
             creates its SQLite database (first run on a machine or in CI)
  warm       the same, with the database of the cold run already there
  server     PREFECT_API_URL pointing at a running `prefect server start` (started beforehand,
             not counted)
  server-noearly   the same with `--no-early-submit` (does early submit still pay
             once the server is running?)
  reused     no PREFECT_API_URL: storyreel's own background server (flows/orchestration/server.py), started
             by a first run that is not counted, then reused, as a user's second run has it
  reused-noearly   the same with `--no-early-submit`
Baseline: bench/floor.py --shots 1, a bare Python script doing the same submit, poll and
download (no conform, no cut).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import harness as h

NO_EARLY = ("--no-early-submit",)


def floor_once(emu: Any, work: Path) -> dict[str, Any]:
    emu.reset()
    out = work / f"floor-{uuid.uuid4().hex[:6]}"
    report = out / "report.json"
    out.mkdir(parents=True)
    argv = [sys.executable, str(h.BENCH / "floor.py"), "--base", emu.base_url("fal"), "--key",
            "test-fal-key", "--shots", "1", "--out", str(out), "--report", str(report)]
    proc = h.run_child(argv, env=h.base_env(emu, work, prefect_home=work / "unused",
                                            api_url=None), report=report, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr_tail)
    gt = h.gen_times(emu)
    return {"to_submit": gt.first_submit - proc.started, "wall": proc.wall,
            "gen_done": gt.last_download - proc.started}


def storyreel_once(emu: Any, work: Path, home: Path, api: str | None, extra: tuple[str, ...] = (),
                   env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    emu.reset()
    tag = uuid.uuid4().hex[:8]
    spec = h.storyboard(work / f"spec-{tag}.yaml", 1, tag=tag)
    out = work / f"run-{tag}"
    report = work / f"report-{tag}.json"
    env = h.base_env(emu, work, prefect_home=home, api_url=api)
    env.update(env_extra or {})
    proc = h.run_child(h.cli_argv(report, "run", str(spec), "--out", str(out), *extra), env=env,
                       report=report, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"storyreel failed: {proc.stderr_tail}")
    gt = h.gen_times(emu)
    st = proc.report["stamps"]
    final = h.mono_of_mtime(out / "final.mp4")
    return {"to_submit": gt.first_submit - proc.started, "wall": proc.wall,
            "gen_done": gt.last_download - proc.started,
            "imports": st.get("pipeline_ready", float("nan")) - proc.started,
            "ready_to_submit": gt.first_submit - st.get("pipeline_ready", float("nan")),
            "final": final - proc.started, "exit_after_final": proc.ended - final,
            "cpu_s": proc.self_cpu_s, "children_cpu_s": proc.children_cpu_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--latency", type=float, default=3.0)
    ap.add_argument("--modes", nargs="+", default=["floor", "cold", "warm", "server"],
                    help="floor cold warm server server-noearly reused reused-noearly")
    args = ap.parse_args()
    work = h.workdir("p0")
    emu = h.start_emulator(args.latency, 0.0)
    h.warm_media(emu, 5)
    res: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    try:
        for _ in range(args.repeat):
            if "floor" in res:
                h.wait_quiet()
                res["floor"].append(floor_once(emu, work))
            home = h.workdir("p0-home")
            if "cold" in res:
                h.wait_quiet()
                res["cold"].append(storyreel_once(emu, work, home, None))
            if "warm" in res:
                h.wait_quiet()
                res["warm"].append(storyreel_once(emu, work, home, None))
        if "server" in res or "server-noearly" in res:
            with h.prefect_server(h.workdir("p0-server")) as (api, _pid):
                storyreel_once(emu, work, work / "ph", api)  # the server's own first use
                for _ in range(args.repeat):
                    for mode, extra in (("server", ()), ("server-noearly", NO_EARLY)):
                        if mode in res:
                            h.wait_quiet()
                            res[mode].append(storyreel_once(emu, work, work / "ph", api, extra))
        if "reused" in res or "reused-noearly" in res:
            local = {"STORYREEL_SERVER": "local", "STORYREEL_HOME": str(work / "sr-home")}
            try:  # the first run starts storyreel's server (not counted); the others reuse it
                res["first-local"] = [storyreel_once(emu, work, work / "ph", None, (), local)]
                for _ in range(args.repeat):
                    for mode, extra in (("reused", ()), ("reused-noearly", NO_EARLY)):
                        if mode in res:
                            h.wait_quiet()
                            res[mode].append(storyreel_once(emu, work, work / "ph", None,
                                                            extra, local))
            finally:
                subprocess.run([sys.executable, "-m", "flows.cli", "server", "stop"],
                               env={**os.environ, **local, "PYTHONPATH": str(h.ROOT)},
                               cwd=h.ROOT, capture_output=True, timeout=120)
    finally:
        emu.stop()
    out = {"machine": h.machine(), "args": vars(args), "runs": res, "load_at_end": h.busy_note()}
    print(report(out))
    h.save("p0", out)
    return 0


def report(out: dict[str, Any]) -> str:
    runs = out["runs"]
    base = statistics.median(r["to_submit"] for r in runs["floor"]) if runs.get("floor") else None
    base_wall = statistics.median(r["wall"] for r in runs["floor"]) if runs.get("floor") else None
    rows = []
    for mode, rs in runs.items():
        if not rs:
            continue

        def med(k: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r.get(k, float("nan")) for r in rs)

        sub, wall = med("to_submit"), med("wall")
        rows.append([mode, len(rs), sub, f"{sub / base:.1f}x" if base else "-",
                     med("imports"), med("ready_to_submit"), med("gen_done"), med("final"),
                     wall, f"{wall / base_wall:.2f}x" if base_wall else "-",
                     med("exit_after_final")])
    head = ["mode", "runs", "to 1st submit", "vs floor", "imports", "ready->submit",
            "clip downloaded", "final.mp4", "wall", "vs floor", "exit after final"]
    return "\n".join([
        f"P0 start-up, 1 shot, vendor latency {out['args']['latency']} s (seconds from the "
        "command; medians)", h.table(rows, head),
        "imports = until flows.orchestration.flow (and Prefect) is imported; ready->submit = from there "
        "to the first vendor submit (server start or connect, flow run, task run).",
        f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
        f"{out['load_at_end']}"])


if __name__ == "__main__":
    sys.exit(main())
