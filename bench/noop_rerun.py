"""NOOP: the no-op rerun table: the demo's first run, a new folder with every clip cached, and
nothing to do (`storyreel run` again on a finished folder, storyboard unchanged).

    python bench/noop_rerun.py [--spec specs/demo.yaml] [--repeat 5] [--before PATH] [--before-repeat 2]

Every run is a fresh process of the real CLI with no PREFECT_API_URL, as a user types it:
  first (cold)    a fresh STORYREEL_HOME: storyreel starts its background Prefect server and
                  creates its database (the first run on a machine)
  first (warm)    another new folder and clip cache: the server is reused
  cached folder   another new folder, same clip cache: every clip from the cache
  no-op           the first folder again, `--repeat` times
Baselines, timed in the same run and interleaved with the no-op runs: `python -c pass` (the
interpreter alone) and `python -c "import flows.storyboard.plan"` (the bare import of what
reading and planning a storyboard needs). It also lists what the no-op run imported of
prefect, pandas and PyAV (`-X importtime`). The server is stopped at the end.

--before PATH: the same rows with the code of another checkout (a worktree of the commit before
this change), which let Prefect start a temporary server in every run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness as h


def env_for(work: Path, checkout: Path, api: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STORYREEL_"))}
    env.update({"PYTHONPATH": str(checkout), "PREFECT_HOME": str(work / "ph"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
                "STORYREEL_CACHE_DIR": str(work / "cache"), "STORYREEL_HOME": str(work / "home"),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})
    if api:
        env["PREFECT_API_URL"] = api
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    return time.monotonic() - t, proc


def heavy_imports(checkout: Path, spec: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", "run", str(spec),
                           "--out", str(out)], env=env, cwd=checkout, capture_output=True,
                          text=True, timeout=900)
    tops: dict[str, float] = {}
    names: set[str] = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cum, name = line.split("|")
            if not cum.strip().isdigit():
                continue  # the header line
            names.add(name.strip().split(".")[0])
            if not name[1:].startswith(" "):  # top level: one space after the bar
                tops[name.strip()] = int(cum) / 1e6
    heavy = sorted(names & {"prefect", "pandas", "av"})
    return {"heavy": heavy, "import_s": round(sum(tops.values()), 3), "modules": len(tops)}


def series(checkout: Path, spec: Path, work: Path, repeat: int, base: dict[str, list[float]] | None
           ) -> dict[str, list[float]]:
    """The four rows for one checkout (see the module docstring)."""
    env = env_for(work, checkout, None)
    env["STORYREEL_SERVER"] = "local"
    cli = [sys.executable, "-m", "flows.cli", "run", str(spec)]
    runs: dict[str, list[float]] = {}

    def one(name: str, out: Path, cache: str, noop: bool = False) -> None:
        h.wait_quiet()
        wall, proc = timed([*cli, "--out", str(out)], {**env, "STORYREEL_CACHE_DIR": cache},
                           checkout)
        if proc.returncode != 0 or (noop and "up to date" not in proc.stdout
                                    and checkout == h.ROOT):
            raise RuntimeError(f"{name}: {proc.stdout[-500:]} {proc.stderr[-2000:]}")
        runs.setdefault(name, []).append(wall)

    one("first (cold)", work / "a", str(work / "cache-a"))
    one("first (warm)", work / "b", str(work / "cache-b"))
    one("cached folder", work / "c", str(work / "cache-a"))
    for _ in range(repeat):
        if base is not None:
            base.setdefault("python -c pass", []).append(
                timed([sys.executable, "-c", "pass"], env, h.ROOT)[0])
            base.setdefault("import plan", []).append(
                timed([sys.executable, "-c", "import flows.storyboard.plan"], env, h.ROOT)[0])
        one("no-op", work / "a", str(work / "cache-a"), noop=True)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=h.ROOT / "specs" / "demo.yaml")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before", type=Path, help="another checkout, for the before figures")
    ap.add_argument("--before-repeat", type=int, default=2)
    args = ap.parse_args()
    spec = args.spec.resolve()
    work = h.workdir("noop")
    base: dict[str, list[float]] = {}
    res: dict[str, Any] = {"machine": h.machine(),
                           "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        res["now"] = series(h.ROOT, spec, work / "now", args.repeat, base)
        res["imports"] = heavy_imports(h.ROOT, spec, work / "now" / "a",
                                       env_for(work / "now", h.ROOT, None))
    finally:
        subprocess.run([sys.executable, "-m", "flows.cli", "server", "stop"],
                       env=env_for(work / "now", h.ROOT, None), cwd=h.ROOT,
                       capture_output=True, timeout=120)
    if args.before:
        res["before"] = series(args.before.resolve(), spec, work / "before",
                               args.before_repeat, None)
    res["baselines"] = base
    res["load_at_end"] = h.busy_note()
    print(report(res))
    h.save("noop", res)
    return 0


def report(res: dict[str, Any]) -> str:
    base = {k: statistics.median(v) for k, v in res["baselines"].items()}
    rows = [[k, len(res["baselines"][k]), v, v / base["python -c pass"], v / base["import plan"]]
            for k, v in base.items()]
    for who in ("before", "now"):
        for k, v in res.get(who, {}).items():
            m = statistics.median(v)
            rows.append([f"{who}: {k}", len(v), m, m / base["python -c pass"],
                         m / base["import plan"]])
    imp = res["imports"]
    return "\n".join([
        f"NOOP {Path(res['args']['spec']).name}: first run, cached folder, no-op rerun "
        "(seconds, fresh processes, medians)",
        h.table(rows, ["what", "runs", "wall", "vs python -c pass", "vs import plan"]),
        f"the no-op run imported {imp['modules']} top-level modules, {imp['import_s']:.2f} s of "
        f"import (-X importtime); prefect/pandas/PyAV among them: {imp['heavy'] or 'none'}",
        f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; {res['load_at_end']}"])


if __name__ == "__main__":
    sys.exit(main())
