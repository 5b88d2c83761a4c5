"""Child processes for tests, and a throw-away PostgreSQL cluster (initdb + postgres on a free
port of 127.0.0.1, as an unprivileged user when the tests run as root), started once per
session (`pg_server`, ~5-10 s) and shared: the Prefect server test and the spend-window tests
each take fresh databases in it.

Debian's postgresql package puts initdb/postgres in /usr/lib/postgresql/<version>/bin, not on
PATH: both places are searched. `.ci/run` installs the package when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """A child in its own session (pid == process group id), output to a log file."""
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal the child's whole process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (postgres backends, flow runs)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def pg_binaries() -> tuple[str, str] | None:
    """(initdb, postgres): on PATH, else the newest /usr/lib/postgresql/<v>/bin; None if absent."""
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return initdb, postgres
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                         else 0, reverse=True):
        i, p = Path(folder) / "initdb", Path(folder) / "postgres"
        if i.exists() and p.exists():
            return str(i), str(p)
    return None


def missing_postgres(why: str) -> None:
    """In CI (CI=true) a test needing PostgreSQL fails; on a developer's machine it skips."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why} (CI must run this test: .ci/run installs postgresql)")
    pytest.skip(why)


def _pg_user() -> pwd.struct_passwd | None:
    """postgres refuses to run as root: run it as `postgres` (or `nobody`) then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    missing_postgres("running as root with no unprivileged user for postgres")
    return None


@contextlib.contextmanager
def pg_cluster(initdb: str, postgres: str) -> Iterator[str]:
    """A fresh cluster; yields postgresql://postgres@127.0.0.1:PORT/postgres (trust auth)."""
    user = _pg_user()
    tmp = Path(tempfile.mkdtemp(prefix="storyreel-pg-"))  # not under pytest's 0700 root dir
    as_user: dict[str, Any] = {}
    if user is not None:
        os.chown(tmp, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = None
    try:
        subprocess.run([initdb, "-D", str(tmp / "data"), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True,
                       timeout=120, cwd=tmp, **as_user)
        port = free_port()
        log = tmp / "postgres.log"
        proc = start([postgres, "-D", str(tmp / "data"), "-p", str(port), "-k", str(tmp),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                      "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                      "-c", "max_connections=200"],
                     log, cwd=tmp, **as_user)
        deadline = time.monotonic() + 60
        while "ready to accept connections" not in tail(log, 100_000):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"postgres did not start:\n{tail(log)}")
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if proc is not None:
            stop(proc, signal.SIGINT)  # "fast" shutdown; SIGTERM would wait for clients
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The session's PostgreSQL cluster: postgresql://postgres@127.0.0.1:PORT/postgres."""
    found = pg_binaries()
    if found is None:
        missing_postgres("PostgreSQL server binaries (initdb, postgres) not found")
    assert found is not None
    with pg_cluster(*found) as url:
        yield url


def fresh_pg_database(server: str, prefix: str = "w") -> str:
    """A new, empty database in the cluster `server` names; returns its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"
