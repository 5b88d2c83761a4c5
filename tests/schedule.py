"""The order in which the suite's tests reach pytest-xdist's workers.

`--dist worksteal` hands each worker one contiguous share of the collected tests (the first
len/n, then the next, ...) and later moves tests from the end of the longest queue to an idle
worker. Collected in file order, one share held most of the slow modules and the run waited
on its tail. Here the modules (kept whole where they fit: module fixtures are set up once) are
dealt to the shares slowest first, each to the share with the least time so far, so every
worker starts on its heavy modules and ends on light ones that can move. The modules of the
session's PostgreSQL-backed Prefect server (tests/prefect_server_kit.py) open the first share,
which no steal takes from, so they share one server.

The time of each module comes from tests/timings.json (seconds per module file, from a run
with STORYREEL_TEST_TIMELINE=DIR, then `python -m tests.schedule DIR`); a module it does not
list counts as the median. The order only changes where time goes, never what runs: every
worker collects the same tests in the same order (xdist checks that).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

TIMINGS = Path(__file__).with_name("timings.json")
FIRST = ("tests/test_prefect_server.py", "tests/test_many_workers.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # set by xdist in its workers (which see `--dist no` themselves); the addopts ask worksteal
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        return
    items[:] = arrange(items, workers, _timings())


def _timings() -> dict[str, float]:
    try:
        data = json.loads(TIMINGS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


def shares(total: int, workers: int) -> list[int]:
    """How many tests worksteal's first round gives each worker, in order."""
    sizes, rest = [], total
    for i in range(workers):
        sizes.append(rest // (workers - i))
        rest -= sizes[-1]
    return sizes


def arrange(items: Sequence[pytest.Item], workers: int, seconds: dict[str, float]
            ) -> list[pytest.Item]:
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    default = statistics.median(seconds.values()) if seconds else 1.0
    weight = {m: seconds.get(m, default) for m in modules}
    room = shares(len(items), workers)
    load = [0.0] * workers
    dealt: list[list[pytest.Item]] = [[] for _ in range(workers)]

    def put(share: int, tests: list[pytest.Item], module: str) -> list[pytest.Item]:
        taken = tests[:room[share]]
        dealt[share].extend(taken)
        room[share] -= len(taken)
        load[share] += weight[module] * len(taken) / len(modules[module])
        return tests[len(taken):]

    def spill(tests: list[pytest.Item], module: str) -> None:
        """What no one share can take whole goes where there is most room."""
        while tests:
            tests = put(max(range(workers), key=lambda i: (room[i], -i)), tests, module)

    first = [m for m in FIRST if m in modules]
    for module in first:
        spill(put(0, modules[module], module), module)
    for module in sorted((m for m in modules if m not in first), key=lambda m: (-weight[m], m)):
        fits = [i for i in range(workers) if room[i] >= len(modules[module])]
        if fits:
            put(min(fits, key=lambda i: (load[i], i)), modules[module], module)
        else:
            spill(modules[module], module)
    return [item for share in dealt for item in share]


def main(argv: list[str]) -> int:
    """`python -m tests.schedule DIR`: rewrite tests/timings.json from a timeline folder."""
    if len(argv) != 1:
        print("usage: python -m tests.schedule TIMELINE_DIR", file=sys.stderr)
        return 2
    per: dict[str, float] = {}
    for path in sorted(Path(argv[0]).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            module = row["test"].split("::", 1)[0]
            per[module] = per.get(module, 0.0) + float(row["wall"])
    TIMINGS.write_text(json.dumps({k: round(v, 1) for k, v in sorted(per.items())}, indent=1)
                       + "\n", encoding="utf-8")
    print(f"{TIMINGS}: {len(per)} modules, {sum(per.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
