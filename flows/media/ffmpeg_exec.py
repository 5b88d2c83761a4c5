"""Finding and running the ffmpeg binary: argv lists only (never a shell), bounded concurrency.

ffmpeg's exit code is not proof of a good file (docs/ffmpeg-notes.md): callers verify outputs with
`flows.media.probe`. Every process is started with `-threads 1` by the callers that encode, and this
module caps how many run at once (default: one per CPU), which measured ~20% faster on 2 cores
than fewer processes with more threads each (docs/ffmpeg-notes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shlex
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from providers.errors import MediaError

log = logging.getLogger(__name__)

BASE_ARGS = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error"]


@functools.cache
def ffmpeg_exe() -> str:
    """FFMPEG_BINARY, else `ffmpeg` on PATH, else the binary shipped in the imageio-ffmpeg wheel."""
    env = os.environ.get("FFMPEG_BINARY")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise MediaError("no ffmpeg found: set FFMPEG_BINARY or install imageio-ffmpeg") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def font_file() -> str | None:
    """A TrueType file for drawtext: the one shipped in flows/media/fontfiles (a pip-only install
    has no system fonts), else DejaVu Sans through fontconfig; None when there is none."""
    bundled = Path(__file__).resolve().parent / "fontfiles" / "DejaVuSans.ttf"
    if bundled.is_file():
        return str(bundled)
    fc = shutil.which("fc-match")
    if not fc:
        return None
    try:
        out = subprocess.run(
            [fc, "-f", "%{file}", "DejaVu Sans"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return path if out.returncode == 0 and path and Path(path).is_file() else None


def filter_path(p: str | os.PathLike[str]) -> str:
    """Escape a path for use as a filter option value inside a filter graph: two levels, the
    option value's and the graph's (https://ffmpeg.org/ffmpeg-filters.html#Notes-on-filtergraph-escaping)."""
    v = "".join("\\" + c if c in "\\':" else c for c in str(p))  # level 1: option value
    return "".join("\\" + c if c in "\\'[],;" else c for c in v)  # level 2: filter graph


class _Slots:
    """A counting limit shared by every thread and event loop in the process.

    asyncio.Semaphore binds to one loop; Prefect may run tasks on several loops in worker
    threads, and the CPU is what we are sharing, so the limit must be process-wide. Waiters
    are served in order, background ones (review previews) only when nobody else waits.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._free = self.size
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._background: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def __call__(self, background: bool = False) -> _Slot:
        return _Slot(self, background)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    async def acquire(self, background: bool = False) -> None:
        loop = asyncio.get_running_loop()
        queue = self._background if background else self._waiters
        with self._lock:
            if self._free > 0 and not self._waiters and not self._background:
                self._free -= 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            queue.append((loop, fut))
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if (loop, fut) in queue:
                    queue.remove((loop, fut))
                    raise
            # A slot was already handed to us: give it back (or let _grant do so).
            if fut.done() and not fut.cancelled():
                self._release()
            else:
                fut.cancel()
            raise

    def threads(self) -> int:
        """Decoder threads for a process that holds a slot: every core when it runs alone
        with nobody waiting (the edited shot of the producer's loop), else one (one process
        per core is faster than fewer with more threads each, docs/ffmpeg-notes.md). A limit below
        the core count is kept as asked. For decoders only: decoding gives the same frames
        whatever the thread count, x264 does not (a resumed run must cut the same frames as
        an uninterrupted one, tests/test_kill_resume.py)."""
        cores = os.cpu_count() or 1
        with self._lock:
            if self._waiters or self._background or self.size < cores:
                return 1
            return max(1, cores // max(1, self.size - self._free))

    def _release(self) -> None:
        with self._lock:
            for queue in (self._waiters, self._background):
                while queue:
                    loop, fut = queue.popleft()
                    if loop.is_closed():
                        continue
                    loop.call_soon_threadsafe(self._grant, fut)
                    return
            self._free += 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # its waiter was cancelled meanwhile: pass the slot on
            self._release()
        else:
            fut.set_result(None)


class _Slot:
    def __init__(self, slots: _Slots, background: bool) -> None:
        self.slots, self.background = slots, background

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.background)

    async def __aexit__(self, *exc: object) -> None:
        self.slots._release()


def _default_jobs() -> int:
    try:
        return int(os.environ.get("STORYREEL_FFMPEG_JOBS", "")) or (os.cpu_count() or 1)
    except ValueError:
        return os.cpu_count() or 1


SLOTS = _Slots(_default_jobs())


def _nice() -> int:
    try:
        return int(os.environ.get("STORYREEL_FFMPEG_NICE", "10"))
    except ValueError:
        return 10


def _lower_priority(pid: int) -> None:
    """Encodes yield the CPU to the orchestrator: a poll or download that waits behind ffmpeg
    delays a whole shot, an encode that waits a few ms delays nothing (bench/README.md P1).
    Set right after the spawn, before ffmpeg starts its threads (they inherit it)."""
    with contextlib.suppress(OSError):  # the process may already be gone
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + _nice()))


async def _drain(stream: asyncio.StreamReader, sink: bytearray) -> None:
    while chunk := await stream.read(65536):
        sink += chunk
        if len(sink) > 1_000_000:  # keep the tail only: errors are at the end
            del sink[:-200_000]


async def run_ffmpeg(args: Sequence[str] | Callable[[int], Sequence[str]], *,
                     timeout: float = 600, loglevel: str = "error",
                     background: bool = False) -> str:
    """Run ffmpeg with `args`; raise MediaError on a non-zero exit or after `timeout` seconds.
    Returns the tail of its stderr: with loglevel="info", what filters print (loudnorm's JSON).
    `args` may be a function of the decoder threads it may use (`_Slots.threads`), asked once
    the process has its slot. `background`: work nobody waits for (previews) yields its turn
    to conforms and the cut."""
    base = BASE_ARGS if loglevel == "error" else [*BASE_ARGS[:-1], loglevel, "-nostats"]
    async with SLOTS(background):
        argv = [ffmpeg_exe(), *base, *(args(SLOTS.threads()) if callable(args) else args)]
        log.debug("ffmpeg: %s", shlex.join(argv))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _lower_priority(proc.pid)
        err = bytearray()
        assert proc.stderr is not None
        drain = asyncio.ensure_future(_drain(proc.stderr, err))
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
            await drain
        except BaseException as exc:  # timeout, cancellation: never leave ffmpeg running
            if proc.returncode is None:
                proc.kill()
            await asyncio.shield(proc.wait())
            drain.cancel()
            if isinstance(exc, TimeoutError):
                raise MediaError(
                    f"ffmpeg did not finish within {timeout:g} s", argv, err.decode(errors="replace")
                ) from None
            raise
    if proc.returncode != 0:
        raise MediaError(
            f"ffmpeg failed (exit code {proc.returncode})", argv, err.decode(errors="replace")
        )
    return err.decode(errors="replace")


def run_ffmpeg_sync(args: Sequence[str], *, timeout: float = 600) -> None:
    """Blocking variant for tests and tools (no concurrency limit)."""
    argv = [ffmpeg_exe(), *BASE_ARGS, *args]
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if exc.stderr else ""
        raise MediaError(f"ffmpeg did not finish within {timeout:g} s", argv, stderr) from None
    if out.returncode != 0:
        raise MediaError(
            f"ffmpeg failed (exit code {out.returncode})", argv, out.stderr.decode(errors="replace")
        )
