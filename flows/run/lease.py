"""A run's ownership in PostgreSQL (STORYREEL_DB_URL): one row per run, a short lease.

The file lock of flows/run/lock.py needs every owner on one machine; workers in separate
containers share only the database. So a run is owned by whoever holds its row in
`storyreel_runs` with a live lease:

- take: a conditional write in one transaction (the row locked FOR UPDATE): insert the row,
  or overwrite it only when its lease has lapsed (`lease_until <= now()`, the database's
  clock, so hosts need not agree on the time). Otherwise the caller is told who owns it.
- renew: a heartbeat thread moves `lease_until` to now + the lease (STORYREEL_LEASE_S, 30 s
  by default) every third of it, `WHERE token = <ours>`: an owner whose row was taken over
  learns it (the renewal changes no row) and stops renewing.
- a dead owner (SIGKILL, a lost container) stops renewing, so its lease lapses within one
  lease period and the next owner takes over; `storyreel run --wait` waits for that.
- release: the lease ends now; the row stays, naming the last owner.

The token also fences the journal: flows/money/journal_pg.py writes the intent row that
precedes every paid submit only while the token still owns the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from flows.money.journal_pg import open_db
from flows.money.window_sql import PostgresStore, Tx

log = logging.getLogger("storyreel.lease")

_TOKENS: dict[str, str] = {}  # run key -> the token this process holds it with
_GUARD = threading.Lock()


def lease_s() -> float:
    """How long a run stays owned without a heartbeat (STORYREEL_LEASE_S, default 30 s)."""
    return max(0.5, float(os.environ.get("STORYREEL_LEASE_S", "30")))


def owner_name() -> str:
    """Who this owner is, for the message a refused caller prints: pid, host and, in a
    Prefect flow run, its id (the process worker sets PREFECT__FLOW_RUN_ID)."""
    name = f"pid {os.getpid()} on {socket.gethostname()}"
    flow_run = os.environ.get("PREFECT__FLOW_RUN_ID")
    return f"{name} (flow run {flow_run})" if flow_run else name


def token_for(run_key: str) -> str | None:
    """The lease token this process holds the run with, if any (the journal's fence)."""
    with _GUARD:
        return _TOKENS.get(run_key)


@dataclass
class Held:
    """A lease this process holds; `release()` ends it."""

    run_key: str
    token: str
    store: PostgresStore
    took_over: str | None  # the owner whose lapsed lease this one replaced
    lease_s: float
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _beat: threading.Thread | None = None

    def start(self) -> None:
        with _GUARD:
            _TOKENS[self.run_key] = self.token
        self._beat = threading.Thread(target=self._loop, name="run-lease", daemon=True)
        self._beat.start()

    def renew(self) -> bool:
        """Extend the lease; False when another owner has taken the run."""
        def step(tx: Tx) -> int:
            tx.execute("UPDATE storyreel_runs SET heartbeat_at = now(), "
                       "lease_until = now() + make_interval(secs => ?) "
                       "WHERE run_key = ? AND token = ?", (self.lease_s, self.run_key, self.token))
            return tx.rowcount()

        return self.store.atomic(step) == 1

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    self.lost.set()
                    log.error("run %s: the lease was taken over by another owner; this one "
                              "submits nothing more", self.run_key)
                    return
            except Exception as exc:  # a database blip: the next beat tries again
                log.warning("run %s: lease renewal failed: %s", self.run_key, exc)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        with _GUARD:
            if _TOKENS.get(self.run_key) == self.token:
                del _TOKENS[self.run_key]
        try:
            with contextlib.suppress(Exception):  # unreachable: the lease lapses by itself
                self.store.atomic(lambda tx: tx.execute(
                    "UPDATE storyreel_runs SET lease_until = now() WHERE run_key = ? AND token = ?",
                    (self.run_key, self.token)))
        finally:
            self.store.close()


def take(url: str, run_key: str) -> Held | str:
    """The run's lease (its heartbeat started), or a description of the live owner."""
    store = open_db(url)
    token, seconds, me = secrets.token_hex(16), lease_s(), owner_name()

    def step(tx: Tx) -> tuple[bool, Any]:
        rows = tx.execute("SELECT owner, lease_until <= now(), taken_at, "
                          "EXTRACT(EPOCH FROM now() - heartbeat_at), "
                          "EXTRACT(EPOCH FROM lease_until - now()) "
                          "FROM storyreel_runs WHERE run_key = ? FOR UPDATE", (run_key,))
        if rows and not rows[0][1]:
            owner, _, since, beat, left = rows[0]
            return False, (f"{owner} since {since.isoformat(timespec='seconds')} (heartbeat "
                           f"{float(beat):.0f} s ago; its lease lapses in {float(left):.0f} s "
                           "unless renewed)")
        if rows:
            tx.execute("UPDATE storyreel_runs SET owner = ?, token = ?, taken_at = now(), "
                       "heartbeat_at = now(), lease_until = now() + make_interval(secs => ?) "
                       "WHERE run_key = ?", (me, token, seconds, run_key))
            return True, rows[0][0]
        done = tx.execute("INSERT INTO storyreel_runs (run_key, owner, token, taken_at, "
                          "heartbeat_at, lease_until) VALUES (?, ?, ?, now(), now(), "
                          "now() + make_interval(secs => ?)) ON CONFLICT (run_key) DO NOTHING "
                          "RETURNING token", (run_key, me, token, seconds))
        return (True, None) if done else (False, "another owner that has just taken it")

    try:
        ok, info = store.atomic(step)
    except BaseException:
        store.close()
        raise
    if not ok:
        store.close()
        return str(info)
    held = Held(run_key, token, store, info, seconds)
    held.start()
    if info is not None:
        log.warning("run %s: took over from %s (its lease lapsed)", run_key, info)
    return held
