"""Run the real CLI in this process with the end of a run traced: every call of the functions
named in TRACED (and every ffmpeg) gets a start and an end stamp, every shot event its stamp.

    python bench/_trace.py TRACE.json run spec.yaml --out DIR

The functions are wrapped as their modules are imported (an import hook), in the defining
module and in every flows.* module that imported them by name, so nothing is imported
earlier than the CLI itself imports it. At exit (after Prefect's own exit handlers) TRACE.json
gets the spans, the events and the process's start and end (CLOCK_MONOTONIC, shared with the
bench process).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.monotonic()
spans: list[tuple[str, float, float]] = []
procs: list[tuple[str, float, float]] = []  # ffmpeg from its slot granted (spawned) to its end
_granted: dict[int, float] = {}  # id(task) -> when its ffmpeg slot was granted
events: list[tuple[float, str, int, str]] = []

TRACED = {
    "flows.cli.commands": ["_run"],
    "flows.orchestration.flow": ["run_plan", "_artifacts"],
    "flows.run.session": ["finish", "_reports", "write_run_json", "close_window"],
    "flows.run.finish": ["finish_cut", "draw_contact_sheet", "_take_previews", "_write_page",
                         "record_storyboard"],
    "flows.run.deliverable": ["cut_for"],
    "flows.run.uptodate": ["done_clips", "write_record"],
    "flows.media.finishing": ["make_cut"],
    "flows.media.assemble": ["assemble", "layout", "segments_list", "verify_cut", "_verify"],
    "flows.media.aac": ["encode", "_splice"],
    "flows.media.aac_early": ["_prime", "take", "complete"],
    "flows.media.contact_sheet": ["contact_sheet"],
    "flows.media.ffmpeg_exec": ["run_ffmpeg"],
    "flows.media.conform": ["conform", "conform_measured"],
    "flows.run.shot": ["render_shot", "_fetch_verified"],
}
_wrapped: dict[int, Any] = {}  # id(original) -> wrapper


def _label(name: str, args: tuple[Any, ...]) -> str:
    if name.endswith("run_ffmpeg") and args and isinstance(args[0], list):
        argv = [str(a) for a in args[0]]
        outs = [a for a in argv if "/" in a][-1:]
        return f"ffmpeg {Path(outs[0]).name if outs else ''}"
    if name.endswith("run_ffmpeg") and args and callable(args[0]):  # a conform: by its source
        argv = [str(a) for a in args[0](1)]
        return f"ffmpeg < {Path(argv[argv.index('-i') + 1]).stem}" if "-i" in argv else "ffmpeg"
    if name.endswith("run_ffmpeg"):
        return "ffmpeg"
    if name.endswith(("_fetch_verified", "conform_measured")):  # by the raw clip's name
        raw = args[3] if name.endswith("_fetch_verified") else args[0]
        return f"{name} {Path(str(raw)).stem}"
    if name.endswith("render_shot") and len(args) > 1:
        return f"render_shot {getattr(args[1], 'shot_id', '')}"
    return name


def _wrap(name: str, fn: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def aw(*a: Any, **k: Any) -> Any:
            t = time.monotonic()
            try:
                return await fn(*a, **k)
            finally:
                spans.append((_label(name, a), t, time.monotonic()))
                if name.endswith("run_ffmpeg"):
                    granted = _granted.pop(id(asyncio.current_task()), None)
                    if granted is not None:
                        procs.append((spans[-1][0], granted, spans[-1][2]))
        return aw

    @functools.wraps(fn)
    def w(*a: Any, **k: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            spans.append((_label(name, a), t, time.monotonic()))
    return w


def _patch(mod: Any) -> None:
    for fname in TRACED.get(mod.__name__, []):
        fn = getattr(mod, fname, None)
        if fn is not None and id(fn) not in _wrapped:
            w = _wrap(f"{mod.__name__.rsplit('.', 1)[-1]}.{fname}", fn)
            _wrapped[id(fn)] = w
            setattr(mod, fname, w)
    for k, v in list(vars(mod).items()):  # names imported from a traced module
        if callable(v) and id(v) in _wrapped:
            setattr(mod, k, _wrapped[id(v)])
    if mod.__name__ == "flows.media.ffmpeg_exec":
        slots = mod.SLOTS
        acquire = slots.acquire

        async def granted(*a: Any, **k: Any) -> None:
            await acquire(*a, **k)
            _granted[id(asyncio.current_task())] = time.monotonic()
        slots.acquire = granted
    if mod.__name__ == "flows.run.progress":
        orig = mod.Progress.event

        def event(self: Any, ev: Any) -> None:
            events.append((time.monotonic(), ev.shot_id, ev.take, ev.state))
            orig(self, ev)
        mod.Progress.event = event


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if not name.startswith("flows."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def main() -> int:
    trace, *args = sys.argv[1:]

    def write() -> None:
        Path(trace).write_text(json.dumps({"start": T0, "end": time.monotonic(),
                                           "spans": spans, "events": events, "procs": procs}))

    atexit.register(write)  # registered first: runs after Prefect's exit handlers
    # STORYREEL_BENCH_ROOT: another checkout's code (a "before" in the same bench run)
    root = Path(os.environ.get("STORYREEL_BENCH_ROOT") or Path(__file__).resolve().parent.parent)
    sys.path[:0] = [str(root), str(root / "bench")]
    sys.meta_path.insert(0, _Finder())
    from flows.cli.commands import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
