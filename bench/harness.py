"""Shared benchmark machinery: the vendor emulator in this process, storyboards, measured child
processes (the real CLI, the floor scripts), a Prefect server, and how results are printed.

Clocks: every process on the machine shares CLOCK_MONOTONIC, so the emulator's job timestamps
(this process), the floor's and the CLI's own stamps (children) compare directly. Files'
mtimes are wall-clock and are converted with one offset taken here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:  # `python bench/pX.py` puts bench/ first, not the project
    sys.path.insert(0, str(ROOT))

FAL_MODEL = "fal-ai/kling-video/v2.5-turbo/pro/text-to-video"
WALL_OFFSET = time.time() - time.monotonic()  # wall = monotonic + WALL_OFFSET


def mono_of_mtime(path: Path) -> float:
    return path.stat().st_mtime - WALL_OFFSET


# -- the machine ---------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024**2:.1f} GiB"
    from importlib.metadata import version

    from flows.media.ffmpeg_exec import ffmpeg_exe

    ff = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return {"cpu": cpu, "cores": os.cpu_count(), "mem": mem, "os": platform.platform(),
            "python": platform.python_version(), "prefect": version("prefect"),
            "ffmpeg": ff.split("\n", 1)[0].split(" Copyright")[0],
            "load_at_start": os.getloadavg()}


def busy_note() -> str:
    """What else is running: the 2 cores are shared with other work, so say how busy."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def wait_quiet(max_load: float = 1.0, timeout: float | None = None) -> None:
    """Give other work on the machine a moment to finish before a timed run (bounded by
    BENCH_QUIET_S seconds, default 20; 0 = do not wait)."""
    if timeout is None:
        timeout = float(os.environ.get("BENCH_QUIET_S", "20"))
    end = time.monotonic() + timeout
    while os.getloadavg()[0] > max_load and time.monotonic() < end:
        time.sleep(2)


# -- the emulator --------------------------------------------------------------------------

_served = itertools.count()


def _unique_clips() -> None:
    """Make every clip the emulator serves unique. It renders one MP4 per (duration, size), so
    every job of a run would download the same bytes, and storyreel's conform cache (keyed
    by the bytes) would encode one clip and copy the rest: a vendor never does that. A
    trailing MP4 'free' box (skipped by every reader) with a serial number differs each time."""
    from tests.emulator import media

    if getattr(media.clip_bytes, "unique", False):
        return
    original = media.clip_bytes

    def clip_bytes(*args: Any, **kwargs: Any) -> bytes:
        tag = f"storyreel-bench {next(_served)} {time.monotonic_ns()}".encode()
        return original(*args, **kwargs) + struct.pack(">I", 8 + len(tag)) + b"free" + tag

    clip_bytes.unique = True  # type: ignore[attr-defined]
    media.clip_bytes = clip_bytes


def start_emulator(latency: float, jitter: float, media_size: tuple[int, int] | None = (320, 180),
                   seed: int = 0) -> Any:
    """The vendor emulator on 127.0.0.1, in a thread of this process, remembering when each
    clip was downloaded (the end of "generation") and serving a unique file each time."""
    from tests.emulator.core import Emulator

    _unique_clips()

    class BenchEmulator(Emulator):
        def reset(self) -> None:
            super().reset()
            self.download_times: list[float] = []

        def count(self, vendor: str, what: str, n: int = 1) -> None:
            super().count(vendor, what, n)
            if what == "downloads":
                self.download_times.append(time.monotonic())

    return BenchEmulator(latency=latency, jitter=jitter, media_size=media_size, seed=seed).start()


def warm_media(emu: Any, duration: float, aspect: str = "16:9", resolution: str = "1080p") -> None:
    """Make the emulator's clip for these parameters now, so no run pays ffmpeg's first render."""
    from tests.emulator import media
    from tests.emulator.core import dimensions

    w, h = dimensions(aspect, resolution)
    if emu.media_size:
        w, h = media.fit_size(emu.media_size, w, h)
    media.clip_bytes(duration, w, h)


@dataclass
class GenTimes:
    """What the emulator saw of one run."""

    jobs: int
    first_submit: float
    last_submit: float
    vendor_done: float  # when the last job could first be seen finished (created + ready)
    last_download: float
    requests: int
    polls: int
    results: int
    downloads: int

    @property
    def per_job(self) -> dict[str, float]:
        n = max(1, self.jobs)
        return {"requests": self.requests / n, "polls": self.polls / n,
                "results": self.results / n, "downloads": self.downloads / n}


def gen_times(emu: Any, vendor: str = "fal") -> GenTimes:
    jobs = emu.jobs(vendor)
    st = emu.stats(vendor)
    if not jobs:
        raise RuntimeError("the emulator saw no job")
    return GenTimes(jobs=len(jobs), first_submit=min(j.created for j in jobs),
                    last_submit=max(j.created for j in jobs),
                    vendor_done=max(j.created + j.ready_after for j in jobs),
                    last_download=max(emu.download_times, default=float("nan")),
                    requests=st["requests"], polls=st["polls"], results=st["results"],
                    downloads=st["downloads"])


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v) - idle) / tick, sum(v) / tick


class CpuWindow:
    """CPU seconds spent during a window: by the whole machine, by this process (the emulator
    lives here) and by an optional Prefect server; the rest is the child and outsiders."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> CpuWindow:
        import resource

        self._sys = system_cpu()
        u = resource.getrusage(resource.RUSAGE_SELF)
        self._me = u.ru_utime + u.ru_stime
        self._srv = tree_cpu(self.server_pid) if self.server_pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        import resource

        busy, total = system_cpu()
        u = resource.getrusage(resource.RUSAGE_SELF)
        self.machine_busy = busy - self._sys[0]
        self.machine_total = total - self._sys[1]
        self.harness = u.ru_utime + u.ru_stime - self._me
        self.server = (tree_cpu(self.server_pid) - self._srv) if self.server_pid else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"machine_busy": self.machine_busy, "machine_total": self.machine_total,
                "harness": self.harness, "server": self.server}


# -- storyboards ---------------------------------------------------------------------------

def storyboard(path: Path, n: int, *, provider: str = "fal", model: str = "kling-2.5-turbo-pro",
               duration: float = 5, size: str = "320x180", fps: int = 24, tag: str = "",
               transition: dict | None = None, prompts: dict[int, str] | None = None) -> Path:
    """n shots on one model; prompts are unique (and `tag`ged) so nothing comes from a cache
    unless the caller wants it to."""
    shots = []
    for i in range(n):
        prompt = (prompts or {}).get(i, f"bench shot {i:04d} {tag}".strip())
        shot: dict[str, Any] = {"id": f"s{i:04d}", "prompt": prompt}
        if transition and i < n - 1:
            shot["transition"] = transition
        shots.append(shot)
    board = {"version": 1, "title": "bench", "output": {"size": size, "fps": fps},
             "budget": {"max_usd": 100000},
             "defaults": {"provider": provider, "model": model, "duration": duration},
             "shots": shots}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(board, indent=1))  # JSON is YAML
    return path


# -- measured child processes --------------------------------------------------------------

@dataclass
class Proc:
    """A finished child: wall time, its own report (if it wrote one) and its rusage tree."""

    argv: list[str]
    returncode: int
    started: float  # monotonic
    ended: float
    tree_cpu_s: float  # the child and every descendant it waited for (ffmpeg, servers)
    tree_maxrss_mb: float  # the largest single process of that tree
    report: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def self_cpu_s(self) -> float:
        r = self.report.get("self", {})
        return r.get("utime", float("nan")) + r.get("stime", float("nan"))

    @property
    def children_cpu_s(self) -> float:
        r = self.report.get("children", {})
        return r.get("utime", float("nan")) + r.get("stime", float("nan"))


def run_child(argv: list[str], *, env: dict[str, str], report: Path | None = None,
              timeout: float = 1800, cwd: Path | None = None,
              on_start: Callable[[int], None] | None = None) -> Proc:
    """Run argv (bounded by `timeout`), collecting its rusage with wait4."""
    err = tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd or ROOT, stdout=subprocess.DEVNULL,
                            stderr=err, start_new_session=True)
    if on_start is not None:
        on_start(proc.pid)
    timer = threading.Timer(timeout, lambda: _kill_group(proc.pid))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    ended = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    tail = err.read().decode(errors="replace")[-4000:]
    err.close()
    data: dict[str, Any] = {}
    if report is not None and report.exists():
        data = json.loads(report.read_text())
    return Proc(argv, proc.returncode, started, ended, usage.ru_utime + usage.ru_stime,
                usage.ru_maxrss / 1024, data, tail)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # our own child's session: bounded benchmarks


def cli_argv(report: Path, *args: str) -> list[str]:
    """`storyreel ARGS`, run in-process by bench/_measure.py so it can report its own rusage."""
    return [sys.executable, str(BENCH / "_measure.py"), str(report), "cli", *args]


def base_env(emu: Any, work: Path, *, prefect_home: Path, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "STORYREEL_")) and k not in ("FAL_KEY",)}
    env.update(emu.env())
    env.update({"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false", "STORYREEL_CACHE_DIR": str(work / "cache"),
                "PYTHONPATH": str(ROOT), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                # no benchmark leaves storyreel's background server behind (P0 `reused` asks)
                "STORYREEL_SERVER": "ephemeral"})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


# -- a Prefect server ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        stats[int(d.name)] = fields
        kids.setdefault(int(fields[1]), []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            f = stats[p]
            total += (int(f[11]) + int(f[12])) / tick  # utime, stime
        todo.extend(kids.get(p, []))
    return total


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                raw = (d / "stat").read_text()
                kids.setdefault(int(raw[raw.rindex(")") + 2:].split()[1]), []).append(int(d.name))
    return kids


def _rss_mb(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**2


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(the process's own RSS, the sum of its live descendants' RSS) in MB."""
    kids = _children_map()
    total, todo = 0.0, list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        total += _rss_mb(p)
        todo.extend(kids.get(p, []))
    return _rss_mb(pid), total


def run_sampled(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800,
                every: float = 0.05) -> tuple[Proc, dict[str, float]]:
    """run_child, also sampling RSS every `every` s: peaks of the whole tree (summed), of the
    process alone and of its descendants (summed; ffmpeg for the media benchmarks)."""
    peak = {"tree_mb": 0.0, "self_mb": 0.0, "children_mb": 0.0}
    stop = threading.Event()

    def sample(pid: int) -> None:
        while not stop.is_set():
            own, kids = tree_rss_mb(pid)
            peak["tree_mb"] = max(peak["tree_mb"], own + kids)
            peak["self_mb"] = max(peak["self_mb"], own)
            peak["children_mb"] = max(peak["children_mb"], kids)
            stop.wait(every)

    def start(pid: int) -> None:
        threading.Thread(target=sample, args=(pid,), daemon=True).start()

    try:
        proc = run_child(argv, env=env or dict(os.environ), timeout=timeout, on_start=start)
    finally:
        stop.set()
    return proc, peak


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[tuple[str, int]]:
    """`prefect server start` on a free port of 127.0.0.1 (SQLite in `home`); yields (API URL,
    pid) once healthy; stopped (its own process group) on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"})
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    prefect = shutil.which("prefect") or "prefect"
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        end = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: see {home / 'server.log'}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > end:
                raise RuntimeError("prefect server did not become healthy in 180 s")
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
        log.close()


def settle_server(pid: int, quiet_s: float = 2.0, timeout: float = 300) -> float:
    """Wait until the server's CPU use stops growing (it ingests task-run events after a flow
    returns); return its CPU seconds then."""
    end = time.monotonic() + timeout
    last = tree_cpu(pid)
    still = 0.0
    while time.monotonic() < end and still < quiet_s:
        time.sleep(0.5)
        now = tree_cpu(pid)
        still = still + 0.5 if now - last < 0.05 else 0.0
        last = now
    return last


# -- output --------------------------------------------------------------------------------

def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"storyreel-bench-{name}-"))


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[_fmt(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w)
                       for j, (c, w) in enumerate(zip(r, widths, strict=True))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def save(name: str, data: dict[str, Any]) -> Path:
    """bench/results/<name>.json: the figures behind the README (latest run wins)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path
