"""Spend windows: daily and monthly caps per scope, shared by every run on every worker.

A window is one row per (scope, period, start): `day 2026-12-01` and `month 2026-12`, calendar
ones in the scope's time zone, with integer micro-dollars spent and reserved. Every money
reservation a run's ledger makes (flows/money/ledger.py) first reserves here, in ONE transaction
of conditional updates `reserved += x WHERE spent + reserved + x <= limit` on its day and month
rows (flows/money/window_sql.py says why that is atomic on SQLite and on PostgreSQL); so
spent + reserved never passes a limit whatever number of runs, processes or hosts reserve at
once. A refusal is a BudgetError naming the window, handled like the run's own cap
(`budget.on_exhausted`).

Each reservation is a row too: one job, identified once committed by (run id, shot, take,
attempt) (attempts are numbered per take, so the take is part of it), with an owner (host,
pid), a lease renewed by a heartbeat thread while the run lives, and a state:
    open      -> counts as reserved
    settled   -> counts as spent, at the vendor's actual cost
    released  -> counts nothing (the vendor surely did not charge)
    abandoned -> counts as spent at the estimate (the vendor may have charged; nobody knows)
A reservation is *committed* right before its submit leaves the machine (Ledger.commit, before
the journal's intent row). That is what makes a dead run safe to clean up:
- lease expired (kill -9, a lost host): the next reserve in the scope, or `storyreel budget`,
  releases uncommitted reservations (nothing was sent) and abandons committed ones
  (unconfirmed, in flight, lost: never released, counted at their estimate);
- its run folder resumed (`storyreel run --out` again, same run id): the new ledger adopts the
  reservations of jobs still at a vendor (hold, by the job's identity: holding a job twice,
  as a retried task does, adopts the same reservation), settles what its journal knows was
  charged, releases what never reached a vendor, and abandons what may have;
- `storyreel reconcile DIR`: whatever their state, the reservations whose journal rows now
  have the vendor's final answer are settled (or released), lease or no lease;
- the run's end: what is still open (unconfirmed submits, lost jobs) is abandoned.
Every transition recomputes the window rows from the reservation's old and new state, so a
repeated or late settle/release (an expired lease, a resumed run) never counts twice.

Lease times come from each host's clock: keep hosts NTP-synced; the lease (60 s,
STORYREEL_WINDOW_LEASE_S) dwarfs ordinary skew. Tests inject `clock`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from flows.money.status import SUCCEEDED, Status
from flows.money.usd import to_money, usd
from flows.money.window_sql import Store, Tx
from providers.errors import BudgetError

log = logging.getLogger("storyreel.window")

MICRO = 1_000_000
PERIODS = ("day", "month")
Clock = Callable[[], datetime]


def micros(amount: Decimal | float) -> int:
    return int(to_money(amount) * MICRO)


def dollars(n: int | None) -> Decimal | None:
    return None if n is None else to_money(Decimal(int(n)) / MICRO)


def utc_now() -> datetime:
    return datetime.now(UTC)


def lease_seconds() -> float:
    return float(os.environ.get("STORYREEL_WINDOW_LEASE_S", "60"))


@dataclass(frozen=True)
class WindowSpec:
    """The limits in force for one scope, and where they came from."""

    scope: str
    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    timezone: str = "UTC"
    source: str = "storyboard"  # or the operators' budgets file

    def periods(self, now: datetime) -> list[tuple[str, str, int | None]]:
        """[(period, start, limit in micro-dollars or None)] of the windows `now` falls in."""
        local = now.astimezone(ZoneInfo(self.timezone))
        return [("day", local.date().isoformat(), _lim(self.daily_usd)),
                ("month", f"{local:%Y-%m}", _lim(self.monthly_usd))]


def _lim(value: Decimal | None) -> int | None:
    return None if value is None else micros(value)


class _Attempt(Protocol):  # flows.money.journal.Attempt, as far as recovery reads it
    shot_id: str
    take: int
    attempt: int
    status: str
    actual_usd: float | None


Key = tuple[str, int, int]  # (shot, take, attempt): with the run id, a reservation's identity


def _by_key(attempts: Iterable[_Attempt]) -> dict[Key, _Attempt]:
    return {(a.shot_id, a.take, a.attempt): a for a in attempts}


# -- transitions (inside a transaction) ------------------------------------------------------

def _weight(state: str, amount: int, actual: int | None) -> tuple[int, int]:
    """What a reservation in `state` adds to its windows: (reserved, spent)."""
    if state == "open":
        return amount, 0
    if state == "settled":
        return 0, actual or 0
    if state == "abandoned":
        return 0, amount
    return 0, 0


def _shift(tx: Tx, scope: str, day: str, month: str, reserved: int, spent: int) -> None:
    if reserved == 0 and spent == 0:
        return
    for period, start in (("day", day), ("month", month)):  # always this order: no deadlocks
        tx.execute("UPDATE spend_windows SET reserved_micros = reserved_micros + ?, "
                   "spent_micros = spent_micros + ? WHERE scope = ? AND period = ? AND start = ?",
                   (reserved, spent, scope, period, start))


def _move(tx: Tx, rid: str, state: str, actual: int | None = None, now: float = 0.0) -> None:
    """Put reservation `rid` in `state` and shift its windows by the difference."""
    rows = tx.execute("SELECT state, amount_micros, actual_micros, scope, day, month "
                      "FROM spend_reservations WHERE id = ?" + tx.for_update, (rid,))
    if not rows:
        return
    old, amount, old_actual, scope, day, month = rows[0]
    new_actual = actual if state == "settled" else None
    r0, s0 = _weight(old, amount, old_actual)
    r1, s1 = _weight(state, amount, new_actual)
    tx.execute("UPDATE spend_reservations SET state = ?, actual_micros = ?, updated_at = ? "
               "WHERE id = ?", (state, new_actual, now, rid))
    _shift(tx, scope, day, month, r1 - r0, s1 - s0)


def sweep(tx: Tx, now: float, scope: str | None = None) -> int:
    """Open reservations whose lease has expired: released if never committed (nothing was
    sent), abandoned if committed (counted as spent at the estimate). Returns how many."""
    where = "state = 'open' AND lease_until < ?" + (" AND scope = ?" if scope else "")
    args: tuple[Any, ...] = (now, scope) if scope else (now,)
    rows = tx.execute(f"SELECT id, committed FROM spend_reservations WHERE {where} ORDER BY id"
                      + tx.for_update, args)
    for rid, committed in rows:
        _move(tx, rid, "abandoned" if committed else "released", now=now)
    return len(rows)


def _ensure(tx: Tx, spec: WindowSpec, periods: list[tuple[str, str, int | None]]) -> None:
    for period, start, limit in periods:
        tx.execute("INSERT INTO spend_windows (scope, period, start, timezone, limit_micros, "
                   "spent_micros, reserved_micros) VALUES (?, ?, ?, ?, ?, 0, 0) "
                   "ON CONFLICT (scope, period, start) DO NOTHING",
                   (spec.scope, period, start, spec.timezone, limit))


# journal statuses in which the vendor's answer is known and booked: what the row's
# actual_usd says was charged is all that ever will be
_ANSWERED = SUCCEEDED | {Status.FAILED, Status.CANCELED, Status.SKIPPED}


def _final(a: _Attempt | None) -> tuple[str, int | None] | None:
    """The state the journal row's final answer puts its reservation in (settled at what was
    charged, released when nothing was), or None while the outcome is unknown."""
    if a is None or a.status not in _ANSWERED:
        return None
    if a.actual_usd:
        return "settled", micros(a.actual_usd)
    return "released", None


def _truth(a: _Attempt | None) -> tuple[str, int | None]:
    """The state a dead run's reservation belongs in, by its journal row (None: no row)."""
    if a is None:  # no intent row: the submit never left (the intent precedes it)
        return "released", None
    # otherwise intent, unconfirmed, or at a vendor / lost / abandoned at its deadline: it
    # may be charged and nobody knows what, so it is counted at the estimate
    return _final(a) or ("abandoned", None)


def reconcile_run(store: Store, run_id: str, attempts: Iterable[_Attempt],
                  now: datetime | None = None) -> int:
    """After `storyreel reconcile` settled a run folder's jobs in its journal: every
    reservation of that run whose journal row now has a final answer is settled at what the
    vendor charged (or released when it charged nothing), whatever state it is in, in
    whatever window: abandoned (counted at its estimate), or still open under the lease of a
    run killed moments ago (which the sweep would otherwise abandon at its estimate). Rows
    without a final answer are left alone, so a run still working its jobs is undisturbed
    (the run folder's lock keeps reconcile and a live run apart anyway). Returns how many
    changed."""
    journal = _by_key(attempts)
    ts = (now or utc_now()).timestamp()

    def step(tx: Tx) -> int:
        rows = tx.execute("SELECT id, state, actual_micros, shot_id, take, attempt FROM "
                          "spend_reservations WHERE run_id = ? AND committed = 1 ORDER BY id"
                          + tx.for_update, (run_id,))
        changed = 0
        for rid, state, old_actual, shot_id, take, attempt in rows:
            final = _final(journal.get((shot_id, take, attempt)))
            if final is not None and final != (state, old_actual):
                _move(tx, rid, *final, now=ts)
                changed += 1
        return changed

    return store.atomic(step)


# -- one run's side of a window --------------------------------------------------------------

class SpendWindow:
    """The window hooks of one run's ledger. Calls are synchronous and may wait on the
    database; the Ledger runs them on `later`'s single worker thread (FIFO: a settle never
    overtakes the reserve it follows), so the event loop never waits on another host."""

    def __init__(self, store: Store, spec: WindowSpec, run_id: str, *, clock: Clock = utc_now,
                 lease_s: float | None = None, host: str | None = None,
                 pid: int | None = None) -> None:
        self.store, self.spec, self.run_id = store, spec, run_id
        self.clock = clock
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="spend-window")
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._adopted: set[str] = set()
        self.closed = False

    def _now(self) -> float:
        return self.clock().timestamp()

    def later(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run a hook on this window's worker thread, in call order."""
        return self._worker.submit(fn, *args)

    def _logged(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a settle the window missed: the lease sweep counts it
            log.warning("spend window %s: %s failed: %s", self.spec.scope, fn.__name__, exc)

    def later_logged(self, fn: Callable[..., Any], *args: Any) -> None:
        """Fire and forget (settle, release): a failure is logged; the reservation then stays
        open until its lease lapses and is abandoned, i.e. counted, never lost."""
        self._worker.submit(self._logged, fn, *args)

    # -- hooks -------------------------------------------------------------------------------
    def reserve(self, shot_id: str, amount: Decimal) -> str:
        """Reserve `amount` in every window of the scope now, or raise BudgetError why not."""
        need = micros(amount)
        rid = uuid.uuid4().hex

        def step(tx: Tx) -> str:
            now = self.clock()
            ts = now.timestamp()
            sweep(tx, ts, self.spec.scope)
            periods = self.spec.periods(now)
            _ensure(tx, self.spec, periods)
            for period, start, limit in periods:
                key = (self.spec.scope, period, start)
                if limit is None:
                    tx.execute("UPDATE spend_windows SET reserved_micros = reserved_micros + ?, "
                               "limit_micros = NULL, timezone = ? "
                               "WHERE scope = ? AND period = ? AND start = ?",
                               (need, self.spec.timezone, *key))
                    continue
                tx.execute("UPDATE spend_windows SET reserved_micros = reserved_micros + ?, "
                           "limit_micros = ?, timezone = ? "
                           "WHERE scope = ? AND period = ? AND start = ? "
                           "AND spent_micros + reserved_micros + ? <= ?",
                           (need, limit, self.spec.timezone, *key, need, limit))
                if tx.rowcount() != 1:
                    spent, held = tx.execute(
                        "SELECT spent_micros, reserved_micros FROM spend_windows "
                        "WHERE scope = ? AND period = ? AND start = ?", key)[0]
                    left = max(limit - spent - held, 0)
                    raise BudgetError(
                        f"spend window {self.spec.scope} {period} {start} ({self.spec.timezone}) "
                        f"limit {usd(dollars(limit))} reached: {usd(dollars(left))} left (spent "
                        f"{usd(dollars(spent))}, reserved {usd(dollars(held))} by all runs); "
                        f"shot {shot_id} asked {usd(amount)}")
            day, month = periods[0][1], periods[1][1]
            tx.execute("INSERT INTO spend_reservations (id, scope, day, month, amount_micros, "
                       "state, committed, run_id, shot_id, host, pid, lease_until, created_at, "
                       "updated_at) VALUES (?, ?, ?, ?, ?, 'open', 0, ?, ?, ?, ?, ?, ?, ?)",
                       (rid, self.spec.scope, day, month, need, self.run_id, shot_id, self.host,
                        self.pid, ts + self.lease_s, ts, ts))
            return rid

        out = self.store.atomic(step)
        self._heartbeat()
        return out

    def commit(self, rid: str, take: int, attempt: int) -> None:
        """The submit of the shot's `take`, journal `attempt`, is about to leave: from now on
        the money may be charged, so a lapsed lease abandons (counts) it instead of releasing
        it. Refuses a reservation whose lease already lapsed (it was given back: submitting
        now could pass the limit)."""
        def step(tx: Tx) -> None:
            ts = self._now()
            tx.execute("UPDATE spend_reservations SET committed = 1, take = ?, attempt = ?, "
                       "lease_until = ?, updated_at = ? WHERE id = ? AND state = 'open'",
                       (take, attempt, ts + self.lease_s, ts, rid))
            if tx.rowcount() != 1:
                raise BudgetError(f"spend window {self.spec.scope}: the reservation's lease "
                                  f"({self.lease_s:g} s) lapsed before its submit; not sent")

        self.store.atomic(step)

    def hold(self, shot_id: str, take: int, attempt: int | None, amount: Decimal) -> str:
        """Money already at a vendor (a resumed job, or a retried task's): adopt this run's
        reservation for that (shot, take, attempt), re-opened if a lapsed lease abandoned it,
        so holding the same job twice counts it once; or reserve anew without a limit check
        (refusing would not un-spend it). Without `attempt` (unknown) it always reserves."""
        need = micros(amount)

        def step(tx: Tx) -> str:
            now = self.clock()
            ts = now.timestamp()
            found = tx.execute("SELECT id, state FROM spend_reservations WHERE run_id = ? AND "
                               "shot_id = ? AND take = ? AND attempt = ? AND committed = 1 "
                               "ORDER BY created_at DESC LIMIT 1",
                               (self.run_id, shot_id, take, attempt)) \
                if attempt is not None else []
            if found:
                rid, state = found[0]
                if state in ("open", "abandoned"):
                    _move(tx, rid, "open", now=ts)
                tx.execute("UPDATE spend_reservations SET host = ?, pid = ?, lease_until = ? "
                           "WHERE id = ?", (self.host, self.pid, ts + self.lease_s, rid))
                return str(rid)
            rid = uuid.uuid4().hex
            periods = self.spec.periods(now)
            _ensure(tx, self.spec, periods)
            day, month = periods[0][1], periods[1][1]
            tx.execute("INSERT INTO spend_reservations (id, scope, day, month, amount_micros, "
                       "state, committed, run_id, shot_id, take, attempt, host, pid, "
                       "lease_until, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, 'open', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (rid, self.spec.scope, day, month, need, self.run_id, shot_id, take,
                        attempt, self.host, self.pid, ts + self.lease_s, ts, ts))
            _shift(tx, self.spec.scope, day, month, need, 0)
            return rid

        rid = self.store.atomic(step)
        self._adopted.add(rid)
        self._heartbeat()
        return rid

    def settle(self, rid: str, actual: Decimal) -> None:
        self.store.atomic(lambda tx: _move(tx, rid, "settled", micros(actual), self._now()))

    def release(self, rid: str) -> None:
        self.store.atomic(lambda tx: _move(tx, rid, "released", now=self._now()))

    # -- a run's start and end ----------------------------------------------------------------
    def recover(self, attempts: Iterable[_Attempt]) -> None:
        """A resumed run folder: put this run's earlier reservations (those `hold` did not
        adopt) in the state its journal proves. Call after the holds."""
        journal = _by_key(attempts)

        def step(tx: Tx) -> None:
            ts = self._now()
            rows = tx.execute("SELECT id, state, committed, shot_id, take, attempt FROM "
                              "spend_reservations WHERE run_id = ? AND state IN "
                              "('open', 'abandoned') ORDER BY id" + tx.for_update, (self.run_id,))
            for rid, state, committed, shot_id, take, attempt in rows:
                if rid in self._adopted:
                    continue
                new, actual = _truth(journal.get((shot_id, take, attempt)) if committed
                                     else None)
                if (new, state) != ("abandoned", "abandoned"):
                    _move(tx, rid, new, actual, ts)

        self.store.atomic(step)

    def close(self, end_run: bool = True) -> None:
        """Finish the queued hooks and stop renewing leases. `end_run`: what this process still
        holds is abandoned if committed (unconfirmed, lost: counted at the estimate) or
        released if not; otherwise (the early-submit step handing over to the flow in the same
        process) it stays open for the next ledger of the run to adopt."""
        if self.closed:
            return
        self.closed = True
        self._worker.shutdown(wait=True)
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        if not end_run:
            return

        def step(tx: Tx) -> None:
            ts = self._now()
            rows = tx.execute("SELECT id, committed FROM spend_reservations WHERE run_id = ? "
                              "AND host = ? AND pid = ? AND state = 'open' ORDER BY id"
                              + tx.for_update, (self.run_id, self.host, self.pid))
            for rid, committed in rows:
                _move(tx, rid, "abandoned" if committed else "released", now=ts)

        self.store.atomic(step)

    # -- leases --------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        if self._beat is None and not self.closed:
            self._beat = threading.Thread(target=self._beat_loop, name="spend-window-lease",
                                          daemon=True)
            self._beat.start()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except Exception as exc:  # the next beat tries again; a lapse is safe (see top)
                log.warning("spend window %s: lease renewal failed: %s", self.spec.scope, exc)

    def renew(self) -> None:
        def step(tx: Tx) -> None:
            ts = self._now()
            tx.execute("UPDATE spend_reservations SET lease_until = ? WHERE run_id = ? AND "
                       "host = ? AND pid = ? AND state = 'open'",
                       (ts + self.lease_s, self.run_id, self.host, self.pid))

        self.store.atomic(step)

    # -- reading -------------------------------------------------------------------------------
    def usage(self) -> list[dict[str, Any]]:
        """Per window this run touched (and the current ones): what the run spent and still
        holds, and where the window stands."""
        def step(tx: Tx) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            mine = tx.execute("SELECT day, month, state, amount_micros, actual_micros FROM "
                              "spend_reservations WHERE run_id = ? AND scope = ?",
                              (self.run_id, self.spec.scope))
            rows = tx.execute("SELECT period, start, timezone, limit_micros, spent_micros, "
                              "reserved_micros FROM spend_windows WHERE scope = ?",
                              (self.spec.scope,))
            return mine, rows

        mine, rows = self.store.atomic(step)
        # the windows it is in now, even when every reservation was refused
        used: dict[tuple[str, str], list[int]] = {
            (period, start): [0, 0] for period, start, _ in self.spec.periods(self.clock())}
        for day, month, state, amount, actual in mine:
            held, spent = _weight(state, amount, actual)
            for key in (("day", day), ("month", month)):
                acc = used.setdefault(key, [0, 0])
                acc[0] += spent
                acc[1] += held
        out = []
        for period, start, tz, limit, spent, held in rows:
            if (period, start) not in used:
                continue
            run_spent, run_held = used[(period, start)]
            out.append({"scope": self.spec.scope, "period": period, "start": start,
                        "timezone": tz, "limit_usd": _f(limit),
                        "run_spent_usd": _f(run_spent), "run_held_usd": _f(run_held),
                        "window_spent_usd": _f(spent), "window_reserved_usd": _f(held),
                        "remaining_usd": None if limit is None else _f(max(limit - spent - held,
                                                                              0))})
        return sorted(out, key=lambda w: (PERIODS.index(w["period"]), w["start"]))


def _f(n: int | None) -> float | None:
    d = dollars(n)
    return None if d is None else float(d)


# -- what `storyreel budget` and `storyreel plan` show ---------------------------------------

def status(store: Store, specs: Iterable[WindowSpec] = (), now: datetime | None = None,
           everything: bool = False) -> list[dict[str, Any]]:
    """Every current window (or all with `everything`): limit, spent, reserved, remaining and
    the runs holding reservations in it. Expired leases are swept first, so the numbers are
    those the next reservation would see."""
    now = now or utc_now()
    ts = now.timestamp()
    specs = list(specs)

    def step(tx: Tx) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        sweep(tx, ts)
        for spec in specs:
            _ensure(tx, spec, spec.periods(now))
        windows = tx.execute("SELECT scope, period, start, timezone, limit_micros, spent_micros, "
                             "reserved_micros FROM spend_windows ORDER BY scope, period, start")
        holders = tx.execute("SELECT scope, day, month, run_id, host, pid, amount_micros, "
                             "lease_until FROM spend_reservations WHERE state = 'open'")
        return windows, holders

    windows, holders = store.atomic(step)
    declared = {s.scope: s for s in specs}
    out = []
    for scope, period, start, tz, limit, spent, held in windows:
        spec = declared.get(scope)
        if spec is not None:  # the limits in force now, not the last run's
            limit = dict((p, lim) for p, _, lim in spec.periods(now))[period]
            tz = spec.timezone
        current = WindowSpec(scope, timezone=tz).periods(now)
        if not everything and (period, start) not in {(p, s) for p, s, _ in current}:
            continue
        runs: dict[tuple[str, str, int], list[Any]] = {}
        for h_scope, day, month, run_id, host, pid, amount, lease in holders:
            if h_scope == scope and start == (day if period == "day" else month):
                acc = runs.setdefault((run_id, host, pid), [0, 0, 0.0])
                acc[0] += 1
                acc[1] += amount
                acc[2] = max(acc[2], lease)
        out.append({
            "scope": scope, "period": period, "start": start, "timezone": tz,
            "limit_usd": _f(limit), "spent_usd": _f(spent), "reserved_usd": _f(held),
            "remaining_usd": None if limit is None else _f(max(limit - spent - held, 0)),
            "source": spec.source if spec else None,
            "runs": [{"run_id": r, "host": h, "pid": p, "reservations": n, "reserved_usd": _f(a),
                      "lease_s": round(lease - ts, 1)}
                     for (r, h, p), (n, a, lease) in sorted(runs.items())],
        })
    return out


def remaining(store: Store, spec: WindowSpec, now: datetime | None = None) -> Decimal | None:
    """What one more reservation could take from the scope now (the tighter of day and
    month); None when neither has a limit."""
    rows = [w for w in status(store, [spec], now) if w["scope"] == spec.scope]
    left = [Decimal(str(w["remaining_usd"])) for w in rows if w["remaining_usd"] is not None]
    return min(left) if left else None
