"""Run the real CLI (or another bench driver) in this process and report what it cost it.

    python bench/_measure.py REPORT.json cli run spec.yaml --out DIR
    python bench/_measure.py REPORT.json plain spec.yaml DIR

At exit (after Prefect's own exit handlers, which were registered later and run first) the
report gets: this process's CPU (user, system) and peak RSS, its reaped children's CPU
(ffmpeg, an ephemeral Prefect server), and monotonic stamps: start, when `prefect` began to
import, when flows.orchestration.flow was ready, end.
"""

from __future__ import annotations

import atexit
import json
import resource
import sys
import threading
import time
from pathlib import Path

T0 = time.monotonic()
stamps: dict[str, float] = {"start": T0}


def _watch_imports() -> None:
    """Note when prefect starts importing and when the flow module is ready (5 ms grain)."""
    while "pipeline_ready" not in stamps:
        mods = sys.modules
        if "prefect_import" not in stamps and "prefect" in mods:
            stamps["prefect_import"] = time.monotonic()
        pipe = mods.get("flows.orchestration.flow")
        if pipe is not None and hasattr(pipe, "run_plan"):
            stamps["pipeline_ready"] = time.monotonic()
        if time.monotonic() - T0 > 600:
            return
        time.sleep(0.005)


def _usage(who: int) -> dict[str, float]:
    u = resource.getrusage(who)
    return {"utime": u.ru_utime, "stime": u.ru_stime, "maxrss_mb": u.ru_maxrss / 1024}


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    report, mode, *args = sys.argv[1:]

    def write() -> None:
        stamps["end"] = time.monotonic()
        data = {"stamps": stamps, "self": _usage(resource.RUSAGE_SELF),
                "children": _usage(resource.RUSAGE_CHILDREN), "peak_rss_mb": _peak_rss_mb()}
        Path(report).write_text(json.dumps(data))

    atexit.register(write)
    if mode == "cli":  # it stops once the flow module is imported; `plain` never imports it
        threading.Thread(target=_watch_imports, daemon=True).start()
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root), str(root / "bench")]
    if mode == "cli":
        from flows.cli.commands import main as cli_main

        return cli_main(args)
    if mode == "plain":
        from _plain import main as plain_main

        return plain_main(args)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
