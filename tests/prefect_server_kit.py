"""A `prefect server start` on the session's PostgreSQL cluster, for the tests of the
production shape (tests/test_prefect_server.py, tests/test_many_workers.py). One per test
session, not per module: it takes ~10-20 CPU-seconds to start and migrate on 2 cores, and
tests/schedule.py hands both modules to the same xdist worker. Every process started here runs
in its own session and is killed by process group in a finalizer, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pg import free_port, fresh_pg_database, missing_postgres, pg_binaries, start, stop, tail

ROOT = Path(__file__).resolve().parent.parent


# -- PostgreSQL ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> str | None:
    """A fresh database in the session's PostgreSQL cluster (tests/pg.py); None (SQLite)
    without the binaries, which fails in CI (.ci/run installs them)."""
    if pg_binaries() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            missing_postgres("PostgreSQL binaries (initdb, postgres) not installed")
        return None
    url = fresh_pg_database(request.getfixturevalue("pg_server"), "prefect")
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


# -- Prefect server --------------------------------------------------------------------------

@dataclass
class Server:
    url: str  # .../api
    env: dict[str, str]  # for CLI subprocesses: PREFECT_API_URL and a private PREFECT_HOME
    log: Path
    database_url: str | None
    startup_s: float


@pytest.fixture(scope="session")
def server(database_url: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_LOGGING_LEVEL="INFO",
               # a run waiting for a vendor slot retries after at most this long (default 30 s,
               # fine for minutes-long vendor jobs, slow for the emulator's 1.5 s ones)
               PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="1")
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    log = home / "server.log"
    t0 = time.monotonic()
    proc = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)], log, env=env, cwd=home)
    try:
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        startup = time.monotonic() - t0
        print(f"\nprefect server ({'PostgreSQL' if database_url else 'SQLite'}) healthy "
              f"after {startup:.1f} s")
        yield Server(url, {**env, "PREFECT_API_URL": url}, log, database_url, startup)
    finally:
        stop(proc)


def client(server: Server) -> Any:
    from prefect.client.orchestration import PrefectClient

    return PrefectClient(server.url)


def prefect_cli(server: Server, *args: str, cwd: Path = ROOT, timeout: float = 180,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env=env or server.env)


async def wait_for(probe_fn: Any, timeout: float, what: str, logs: Sequence[Path] = (),
                   every: float = 0.5) -> Any:
    """probe_fn's first truthy answer; on timeout, fail with the tails of `logs`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe_fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + "".join(f"\n{tail(p)}" for p in logs))
        await asyncio.sleep(every)


