"""Prefect's own cost per task run, apart from storyreel: what P1/P2 pay for "one task per shot".

    python bench/prefect_tasks.py [--tasks 100 1000] [--sleep 1]

A child process runs one flow whose body gathers N async tasks that only sleep `--sleep` s
(the shape of storyreel's shot tasks: concurrent, awaiting the network), with the same task
options as flows/pipeline.py's shot task, against a running `prefect server` (SQLite).
Baseline, in the same child: the same N coroutines gathered without Prefect. Reported per
task: CPU of the flow process (in-process engine, state changes, events, logs), CPU of the
Prefect server (ingesting them; read from /proc once it goes idle), and how late the last
task body started after the first (the queueing that would delay a vendor submit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import harness as h


def child(n: int, sleep: float, out: Path) -> None:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    starts: list[float] = []

    async def body(i: int) -> int:
        starts.append(time.monotonic())
        await asyncio.sleep(sleep)
        return i

    shot = task(name="noop-shot", cache_policy=NO_CACHE, persist_result=False, retries=1,
                task_run_name=lambda parameters: f"s{parameters['i']:04d}")(body)

    async def gather(fn: Any) -> dict[str, float]:
        starts.clear()
        t0, c0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(fn(i) for i in range(n)))
        return {"wall": time.monotonic() - t0, "cpu": time.process_time() - c0,
                "start_span": max(starts) - min(starts)}

    @flow(name="bench-prefect-tasks", persist_result=False)
    async def many() -> dict[str, float]:
        return await gather(shot)

    async def plain() -> dict[str, float]:
        return await gather(body)

    c0 = time.process_time()
    res: dict[str, Any] = {"plain": asyncio.run(plain())}
    t0, c1 = time.monotonic(), time.process_time()
    res["prefect"] = asyncio.run(many())
    res["flow_wall"], res["flow_cpu"] = time.monotonic() - t0, time.process_time() - c1
    res["plain_cpu_total"] = c1 - c0
    out.write_text(json.dumps(res))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--child", nargs=3, metavar=("N", "SLEEP", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), float(args.child[1]), Path(args.child[2]))
        return 0
    work = h.workdir("prefect-tasks")
    runs: dict[int, dict[str, Any]] = {}
    with h.prefect_server(work) as (api, pid):
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(work / "client"),
                    "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(h.ROOT)})
        for n in args.tasks:
            h.settle_server(pid)
            before = h.tree_cpu(pid)
            out = work / f"r{n}.json"
            proc = h.run_child([sys.executable, __file__, "--child", str(n), str(args.sleep),
                                str(out)], env=env, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr_tail)
            r = json.loads(out.read_text())
            r["server_cpu"] = h.settle_server(pid) - before
            runs[n] = r
    result = {"machine": h.machine(), "args": vars(args), "runs": runs,
              "load_at_end": h.busy_note()}
    print(report(result))
    h.save("prefect_tasks", result)
    return 0


def report(out: dict[str, Any]) -> str:
    rows = []
    for n, r in out["runs"].items():
        n = int(n)
        p, b = r["prefect"], r["plain"]
        rows.append([n, p["wall"], b["wall"], 1e3 * (p["cpu"] - b["cpu"]) / n,
                     1e3 * r["server_cpu"] / n, p["start_span"], b["start_span"]])
    head = ["tasks", "wall (Prefect)", "wall (plain)", "flow CPU ms/task over plain",
            "server CPU ms/task", "last start - first (Prefect)", "(plain)"]
    return "\n".join([
        f"Prefect per-task cost: N async tasks sleeping {out['args']['sleep']:g} s, gathered "
        "in one flow, running prefect server (SQLite) on the same machine",
        h.table(rows, head), out["load_at_end"]])


if __name__ == "__main__":
    sys.exit(main())
