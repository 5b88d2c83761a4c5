"""One owner per run folder: an OS file lock held for the whole run (early submits included);
with STORYREEL_DB_URL, a lease in that database instead (flows/run/lease.py), same rules.

Two runs on one folder would work one journal with two ledgers, each with the whole cap, and
could submit a shot twice. `own(run_dir)` takes an exclusive `flock` on `<run_dir>/.lock` and
writes who holds it (pid, host, start time) for the message a second run prints. It is
released by the kernel when the process dies, so a `kill -9` never leaves a stale lock.
flock needs a local filesystem: keep run folders (the SQLite journal) off NFS/SMB.

One process may host several owners (a worker serving flow runs, a test, a library caller),
so the process does not own the folder: the owner does. The owner is the execution context
that took the lock (a contextvars.ContextVar: the thread or asyncio task, and the tasks and
`asyncio.run` it starts, which copy its context). Only the owner re-enters (the CLI takes
the lock before its early submits, the flow it runs takes it again); any other caller in the
process is refused exactly like another process (BusyError naming the holder), or waits with
`wait`. The kernel alone would refuse it too (flock locks belong to an open file
description, and each `own` opens its own), but the lock is kept open by the owner, so the
process-wide table below answers first.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.run.journals import check_place, run_key
from providers.errors import BusyError

_HELD: dict[Any, list[Any]] = {}  # lock path or ("db", run key) -> [handle, depth], per process
_GUARD = threading.Lock()  # _HELD is read and changed by every thread
_MINE: contextvars.ContextVar[frozenset[Any]] = contextvars.ContextVar(
    "storyreel_run_folders", default=frozenset())  # the runs the current owner holds


@contextlib.contextmanager
def own(run_dir: Path, *, wait: bool = False, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the run for this owner; BusyError (or wait, with `wait`) if another, in this
    process or any other, has it. With STORYREEL_DB_URL the run is held by a lease in that
    database (flows/run/lease.py), not by a file lock: owners on other machines see it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    url = check_place(run_dir)
    slot: Any = ("db", run_key(run_dir, record=True)) if url else (run_dir / ".lock").resolve()
    holder = ""
    while True:
        with _GUARD:
            held = _HELD.get(slot)
            if held is not None and slot in _MINE.get():
                held[1] += 1  # the owner again (the flow after the CLI's early submits)
                handle = None
                break
            if held is None:
                handle, holder = _take_lease(url, slot[1]) if url else _take(slot)
            else:
                handle, holder = None, ""
            if handle is not None:
                _HELD[slot] = [handle, 1]
                break
        if not wait:
            who = holder or (_holder(slot) if not url else "another run in this process")
            raise BusyError(f"run folder {run_dir} is in use by {who}; wait "
                            "for it (storyreel run --wait) or use another --out")
        time.sleep(poll_s)
    if handle is None:
        try:
            yield
        finally:
            with _GUARD:
                if slot in _HELD:  # (the owner's first `own` may have ended first)
                    _HELD[slot][1] -= 1
        return
    token = _MINE.set(_MINE.get() | {slot})
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # left in another context than it was entered
            _MINE.reset(token)
        with _GUARD:
            del _HELD[slot]
        handle.release()


class _FileLock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def _take_lease(url: str, key: str) -> tuple[Any, str]:
    from flows.run.lease import take

    got = take(url, key)
    return (None, got) if isinstance(got, str) else (got, "")


def _take(path: Path) -> tuple[_FileLock | None, str]:
    """The lock file's descriptor, locked and stamped with this owner, or None if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, ""
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return _FileLock(fd), ""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        here = " (another run in this process)" if info["pid"] == os.getpid() \
            and info["host"] == socket.gethostname() else ""
        return f"pid {info['pid']} on {info['host']} since {info['started_at']}{here}"
    except (OSError, ValueError, KeyError):
        return "another storyreel run"
