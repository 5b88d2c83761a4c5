"""The run's money: a hard cap that holds under any concurrency.

A shot *reserves* its estimated cost before it submits; when the vendor's job
ends the reservation is either *settled* (it becomes spend, at the actual
cost) or *released* (nothing was charged). A reservation is refused when
settled + reserved + asked would pass the run's cap, or the shot's own
settled + reserved + asked would pass the per-shot cap. So, as long as each
settle is at most what was reserved, settled + reserved <= cap at every moment.

A vendor may charge more than we estimated. That money is gone: spend may then
pass the cap, and from then on every reservation is refused (except for zero-cost
work).

A resumed run books, per shot, what earlier sessions of its folder spent (`book`)
and holds what is still at a vendor (`hold`), so the run cap and the per-shot cap
count money across sessions.

Amounts are Decimal inside, rounded to 1e-6 USD, so sums have no float noise.
One ledger serves one run on one asyncio event loop; a threading lock also
guards the state so that settle/release from a worker thread stay consistent.

With a spend window (flows/money/window.py: daily/monthly caps shared by every run), each
reservation is also made there, after the run's own caps allow it. The window's calls may wait
on a database shared with other processes or hosts, so none runs on the event loop or under
the threading lock: reserve and commit await them on the window's worker thread (holding only
the asyncio lock, which orders this run's reserves); settle and release queue them on that same
FIFO thread and return at once (they are sync and called from the loop). A queued call lost
in a crash is safe: the window's lease sweep counts committed money as spent.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from flows.money.usd import ZERO, to_money, usd
from providers.errors import BudgetError

if TYPE_CHECKING:
    from flows.money.window import SpendWindow

_ZERO = ZERO


@dataclass
class Reservation:
    """Money held for one attempt of one shot. `state`: open -> settled | released."""

    id: int
    shot_id: str
    amount: Decimal
    state: str = "open"
    actual: Decimal | None = None
    window_id: str | None = None  # its twin in the spend window, if the run has one
    job: tuple[int, int] | None = None  # (take, attempt) once committed to a journal attempt

    @property
    def amount_usd(self) -> float:
        return float(self.amount)


@dataclass
class _Shot:
    settled: Decimal = _ZERO
    reserved: Decimal = _ZERO


class Ledger:
    """Reservations and spend for one run, against an optional run cap and per-shot cap."""

    def __init__(
        self,
        cap_usd: float | None,
        per_shot_cap_usd: float | None = None,
        window: SpendWindow | None = None,
    ) -> None:
        self.window = window
        self.cap = _cap(cap_usd)
        self.per_shot_cap = _cap(per_shot_cap_usd)
        for name, value in (("cap_usd", self.cap), ("per_shot_cap_usd", self.per_shot_cap)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self._settled: Decimal = _ZERO
        self._reserved: Decimal = _ZERO
        self._shots: dict[str, _Shot] = {}
        self._open: dict[int, Reservation] = {}
        self._held: dict[int, Reservation] = {}  # by journal row: jobs already at a vendor
        self._rows: dict[int, Reservation] = {}  # every hold by its journal row (never popped)
        self.stop_reason: str | None = None
        self._ids = itertools.count(1)
        self._alock = asyncio.Lock()
        self._tlock = threading.Lock()

    # -- reading ---------------------------------------------------------------
    @property
    def spent_usd(self) -> float:
        return float(self._settled)

    @property
    def reserved_usd(self) -> float:
        return float(self._reserved)

    @property
    def remaining_usd(self) -> float | None:
        """What may still be reserved; None without a cap; never negative."""
        left = self._left()
        return None if left is None else float(max(left, _ZERO))

    def shot_spent_usd(self, shot_id: str) -> float:
        """Settled spend of one shot (earlier sessions of the folder included)."""
        shot = self._shots.get(shot_id)
        return float(shot.settled) if shot else 0.0

    def _left(self) -> Decimal | None:
        if self.cap is None:
            return None
        return self.cap - self._settled - self._reserved

    def _shot_left(self, shot_id: str) -> Decimal | None:
        if self.per_shot_cap is None:
            return None
        shot = self._shots.get(shot_id, _Shot())
        return self.per_shot_cap - shot.settled - shot.reserved

    def _refusal(self, shot_id: str, amount: Decimal) -> str | None:
        """Why `amount` cannot be reserved for `shot_id` now, or None if it can."""
        if self.stop_reason is not None:
            return f"run stopped ({self.stop_reason}); shot {shot_id} asked {usd(amount)}"
        if amount == 0:
            return None  # free work (the local renderer) never touches the cap
        left = self._left()
        if left is not None and amount > left:
            return (
                f"budget cap {usd(self.cap)} reached: {usd(max(left, _ZERO))} left "
                f"(spent {usd(self._settled)}, reserved {usd(self._reserved)}); "
                f"shot {shot_id} asked {usd(amount)}"
            )
        shot_left = self._shot_left(shot_id)
        if shot_left is not None and amount > shot_left:
            return (
                f"shot {shot_id}: per-shot cap {usd(self.per_shot_cap)} reached: "
                f"{usd(max(shot_left, _ZERO))} left; asked {usd(amount)}"
            )
        return None

    # -- changing --------------------------------------------------------------
    async def reserve(self, shot_id: str, amount: float) -> Reservation:
        """Hold `amount` for one attempt of `shot_id`, or raise BudgetError saying why not."""
        money = _amount(amount)
        async with self._alock:
            with self._tlock:
                why = self._refusal(shot_id, money)
                if why is not None:
                    raise BudgetError(why)
            wid = None
            if self.window is not None and money:  # settle/release only lower what was checked
                wid = await asyncio.wrap_future(self.window.later(self.window.reserve, shot_id,
                                                                  money))
            with self._tlock:
                r = Reservation(id=next(self._ids), shot_id=shot_id, amount=money, window_id=wid)
                self._reserved += money
                self._shots.setdefault(shot_id, _Shot()).reserved += money
                self._open[r.id] = r
                return r

    async def commit(self, r: Reservation, attempt: int, *, take: int = 1) -> None:
        """The submit for `r` (journal attempt `attempt` of the shot's `take`) is about to
        leave: tell the spend window, so that a dead run's reservation is counted, not given
        back (BudgetError when its lease lapsed: do not submit)."""
        r.job = (take, attempt)
        if self.window is not None and r.window_id is not None:
            await asyncio.wrap_future(self.window.later(self.window.commit, r.window_id, take,
                                                        attempt))

    def hold(self, shot_id: str, amount: float, row: int | None = None,
             attempt: int | None = None, *, take: int = 1) -> Reservation:
        """Reserve money already committed at a vendor (a resumed in-flight job), with no cap
        check: refusing it would not un-spend it, only hide it from the cap. With `row` (its
        journal row) the hold is kept for `held(row)`: holds are made when the ledger is, so
        that no other shot can reserve that money first.
        Idempotent per job: while this ledger still has that journal row's money open (held
        for `row`, or reserved and committed for the same take and attempt of the shot), that
        reservation is returned instead of a second one (a retried task holds its job again)."""
        money = _amount(amount)
        with self._tlock:
            same = self._rows.get(row) if row is not None else None
            if same is None and attempt is not None:
                same = next((r for r in self._open.values() if r.shot_id == shot_id
                             and r.job == (take, attempt)), None)
            if same is not None and same.state == "open":
                if row is not None:
                    self._rows[row] = same
                return same
        # sync window call: holds are made while the run starts, before any shot runs (or
        # when a retried task resumes a job); the window adopts its reservation for that job
        wid = self.window.hold(shot_id, take, attempt, money) \
            if self.window is not None and money else None
        with self._tlock:
            r = Reservation(id=next(self._ids), shot_id=shot_id, amount=money, window_id=wid,
                            job=None if attempt is None else (take, attempt))
            self._reserved += money
            self._shots.setdefault(shot_id, _Shot()).reserved += money
            self._open[r.id] = r
            if row is not None:
                self._held[row] = r
                self._rows[row] = r
            return r

    def book(self, shot_id: str, amount: float) -> None:
        """Count money an earlier session of this run already spent on `shot_id` (or may
        have: unconfirmed and at-risk attempts are booked at their estimate)."""
        money = _amount(amount)
        with self._tlock:
            self._settled += money
            self._shots.setdefault(shot_id, _Shot()).settled += money

    def held(self, row: int) -> Reservation | None:
        """The hold made for journal row `row` (once: it is handed over)."""
        with self._tlock:
            return self._held.pop(row, None)

    def settle(self, r: Reservation, actual_usd: float) -> None:
        """The attempt was charged `actual_usd`: the reservation becomes spend at that price."""
        actual = _amount(actual_usd)
        with self._tlock:
            self._close(r, "settled")
            r.actual = actual
            self._settled += actual
            self._shots.setdefault(r.shot_id, _Shot()).settled += actual
        if self.window is not None and r.window_id is not None:
            self.window.later_logged(self.window.settle, r.window_id, actual)

    def release(self, r: Reservation) -> None:
        """The attempt was not charged: drop the reservation."""
        with self._tlock:
            self._close(r, "released")
        if self.window is not None and r.window_id is not None:
            self.window.later_logged(self.window.release, r.window_id)

    def _close(self, r: Reservation, state: str) -> None:
        if self._open.pop(r.id, None) is not r:
            raise ValueError(
                f"reservation {r.id} for shot {r.shot_id} is {r.state}, not open (cannot {state})"
            )
        r.state = state
        self._reserved -= r.amount
        self._shots[r.shot_id].reserved -= r.amount

    def stop(self, reason: str) -> None:
        """on_exhausted: stop -- refuse every further reservation; open ones may still settle."""
        with self._tlock:
            if self.stop_reason is None:
                self.stop_reason = reason

    def stopped(self) -> bool:
        return self.stop_reason is not None

    def __repr__(self) -> str:
        cap = "none" if self.cap is None else usd(self.cap)
        return (
            f"Ledger(cap={cap}, spent={usd(self._settled)}, reserved={usd(self._reserved)}, "
            f"open={len(self._open)}, stopped={self.stopped()})"
        )


def _amount(value: float) -> Decimal:
    money = to_money(value)
    if money < 0:
        raise ValueError(f"amount must be >= 0, got {value!r}")
    return money


def _cap(value: float | None) -> Decimal | None:
    return None if value is None else to_money(value)
