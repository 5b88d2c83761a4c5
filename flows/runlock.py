"""One owner per run folder: an OS file lock held for the whole run (early submits included).

Two runs on one folder would work one journal with two ledgers, each with the whole cap, and
could submit a shot twice. `own(run_dir)` takes an exclusive `flock` on `<run_dir>/.lock` and
writes who holds it (pid, host, start time) for the message a second run prints. The lock is
re-entrant inside one process (the CLI takes it before early submits, the flow again) and is
released by the kernel when the process dies, so a `kill -9` never leaves a stale lock.
flock needs a local filesystem: keep run folders (the SQLite journal) off NFS/SMB.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from providers.errors import BusyError

_HELD: dict[Path, list[int]] = {}  # resolved lock path -> [fd, depth]


@contextlib.contextmanager
def own(run_dir: Path, *, wait: bool = False, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the run folder for this process; BusyError (or wait, with `wait`) if another has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = (run_dir / ".lock").resolve()
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise BusyError(f"run folder {run_dir} is in use by {_holder(path)}; wait "
                                    "for it (storyreel run --wait) or use another --out") from None
                time.sleep(poll_s)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[path] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[path]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['started_at']}"
    except (OSError, ValueError, KeyError):
        return "another storyreel run"
