"""storyreel's own local Prefect server: started once in the background, reused by later runs.

Without PREFECT_API_URL, Prefect would start a temporary server inside every run (7-25 s on 2
cores, bench/README.md P0), on the user's wall each time. Instead `storyreel run` starts
`prefect server start` once, as a background process of its own session, and later runs find
it (a health check) and point PREFECT_API_URL at it. `storyreel server status|stop` manage it.

Where it keeps things: $STORYREEL_HOME/server (default ~/.storyreel/server): `server.json` (pid,
port, URL), `server.log`, `lock`, and `prefect/`, the server's own PREFECT_HOME, which holds
its SQLite database `prefect/prefect.db` (flow runs, task runs, artifacts, logs). Deleting
the folder after `storyreel server stop` forgets them. PREFECT_SERVER_* settings in the
environment of the run that starts it apply (e.g. a PostgreSQL
PREFECT_SERVER_DATABASE_CONNECTION_URL).

Off switch: `storyreel run --ephemeral-server` or STORYREEL_SERVER=ephemeral (Prefect's
temporary server per run, nothing left behind); the default when CI is set. Two storyreel
processes starting at once start one server: a file lock covers find-or-start until the
server is healthy.

This module never imports prefect: it runs `python -m prefect server start`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from providers.errors import OrchestratorError as ServerError
from providers.errors import SpecError

MODES = ("local", "ephemeral")
_OFF = {"ephemeral", "off", "temporary", "0", "false", "no"}
_ON = {"local", "on", "1", "true", "yes"}
_STARTED: list[subprocess.Popen[bytes]] = []  # keep the handle: no ResourceWarning at exit


def home() -> Path:
    """$STORYREEL_HOME/server, default ~/.storyreel/server."""
    base = os.environ.get("STORYREEL_HOME") or "~/.storyreel"
    return Path(base).expanduser() / "server"


def mode(ephemeral_flag: bool = False) -> str:
    """'local' (reuse storyreel's background server) or 'ephemeral' (a temporary server per
    run); the flag wins, then STORYREEL_SERVER, then 'ephemeral' under CI, else 'local'."""
    if ephemeral_flag:
        return "ephemeral"
    raw = os.environ.get("STORYREEL_SERVER", "").strip().lower()
    if raw in _OFF:
        return "ephemeral"
    if raw in _ON:
        return "local"
    if raw:
        raise SpecError([("STORYREEL_SERVER", f"'{raw}' is not one of: local, ephemeral")])
    ci = os.environ.get("CI", "").strip().lower()
    return "ephemeral" if ci and ci not in ("0", "false", "no") else "local"


# -- state -------------------------------------------------------------------------------

def _state_path() -> Path:
    return home() / "server.json"


def read_state() -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "pid" in data and "url" in data else None


def _write_state(state: dict[str, Any]) -> None:
    path = _state_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _clear_state() -> None:
    with contextlib.suppress(FileNotFoundError):
        _state_path().unlink()


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:  # noqa: S310
            return resp.status == 200
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    """True for a live process (a zombie child of ours is reaped and counts as dead)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


def _is_ours(state: dict[str, Any]) -> bool:
    """Is the recorded pid (still) our `prefect server start` on the recorded port? Guards
    against a recycled pid before anything is signalled."""
    pid = int(state["pid"])
    if not _alive(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the recorded pid
    return (b"prefect" in b" ".join(cmd) and b"server" in cmd and b"start" in cmd
            and str(state.get("port")).encode() in cmd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Lock:
    """The find-or-start lock (flock on $STORYREEL_HOME/server/lock; freed if we die)."""

    def __init__(self) -> None:
        self._fh: IO[bytes] | None = None

    def acquire(self, blocking: bool = True) -> bool:
        home().mkdir(parents=True, exist_ok=True)
        fh = open(home() / "lock", "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> _Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- start, reuse, stop --------------------------------------------------------------------

def running() -> dict[str, Any] | None:
    """The recorded server when it is alive and answers its health check."""
    state = read_state()
    if state and _is_ours(state) and healthy(state["url"]):
        return state
    return None


def _spawn() -> dict[str, Any]:
    root = home()
    prefect_home = root / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = int(os.environ.get("STORYREEL_SERVER_PORT") or _free_port())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")}
    env["PREFECT_HOME"] = str(prefect_home)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    log: IO[bytes] = open(root / "server.log", "wb")  # noqa: SIM115 - the child keeps it
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)  # outlives this run, not its terminal
    finally:
        log.close()
    _STARTED.append(proc)
    state = {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}/api",
             "prefect_home": str(prefect_home), "database": str(prefect_home / "prefect.db"),
             "log": str(root / "server.log"), "started_at": time.time(), "healthy": False}
    _write_state(state)  # before it is healthy, so that `server stop` can always find it
    return state


def _wait_healthy(state: dict[str, Any], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not healthy(state["url"], timeout=2.0):
        if not _alive(int(state["pid"])):
            raise ServerError(f"the local Prefect server exited while starting: see {state['log']}")
        if time.monotonic() > end:
            raise ServerError(f"the local Prefect server was not healthy after {timeout:.0f} s: "
                              f"see {state['log']}")
        time.sleep(0.2)
    state["healthy"] = True
    state["ready_after_s"] = round(time.time() - state["started_at"], 2)
    _write_state(state)


def _timeout() -> float:
    return float(os.environ.get("STORYREEL_SERVER_START_TIMEOUT_S", "180"))


@dataclass
class Pending:
    """A server being found or started; `wait()` returns its API URL once it is healthy.

    Split in two so that the caller can do useful work (early vendor submits) while a server
    boots. While this process starts one it holds the lock; another process waits for it."""

    url: str | None = None
    lock: _Lock | None = None  # held: this process finds or starts the server
    spawned: dict[str, Any] | None = None  # the server this process started

    def wait(self) -> str:
        if self.url is not None:
            return self.url
        lock = self.lock or _Lock()
        if self.lock is None:
            lock.acquire()  # another process was starting one: it is done when we get this
        try:
            if self.spawned is not None:
                _wait_healthy(self.spawned, _timeout())
                state = self.spawned
            else:
                state = running() or _start_locked()
        finally:
            lock.release()
            self.lock = None
        self.url = str(state["url"])
        return self.url


def _start_locked() -> dict[str, Any]:
    """With the lock held: give a recorded server that is alive but not answering a moment
    (its starter may have died), stop it if it stays silent, and start a new one."""
    state = read_state()
    if state and _is_ours(state):
        try:
            _wait_healthy(state, min(_timeout(), 60.0))
            return state
        except ServerError:
            _terminate(int(state["pid"]))
    state = _spawn()
    _wait_healthy(state, _timeout())
    return state


def begin() -> Pending:
    """Find the running server, or start one and return before it is healthy."""
    state = running()
    if state is not None:
        return Pending(url=state["url"])
    lock = _Lock()
    if not lock.acquire(blocking=False):
        return Pending()  # another process is starting it
    try:
        state = running()
        if state is not None:
            lock.release()
            return Pending(url=state["url"])
        old = read_state()
        if old and _is_ours(old):
            return Pending(lock=lock)  # alive, not answering yet: wait() sorts it out
        return Pending(lock=lock, spawned=_spawn())
    except BaseException:
        lock.release()
        raise


def ensure() -> str:
    """The API URL of a healthy local server (started now if need be)."""
    return begin().wait()


def _terminate(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the server's process group (it leads its own session), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not _alive(pid):
                return
            time.sleep(0.1)


def stop() -> dict[str, Any] | None:
    """Stop the recorded server (if any); returns what was recorded."""
    with _Lock():
        state = read_state()
        if state is None:
            return None
        if _is_ours(state):
            _terminate(int(state["pid"]))
        _clear_state()
        return state


def status() -> dict[str, Any]:
    """What `storyreel server status` prints."""
    state = read_state() or {}
    pid = state.get("pid")
    alive = bool(state) and _is_ours(state)
    return {"running": alive, "healthy": alive and healthy(state["url"]),
            "url": state.get("url"), "pid": pid if alive else None, "home": str(home()),
            "database": state.get("database") or str(home() / "prefect" / "prefect.db"),
            "log": state.get("log") or str(home() / "server.log"), "mode": _mode_or_error()}


def _mode_or_error() -> str:
    try:
        return mode()
    except SpecError as exc:
        return f"invalid ({exc})"
