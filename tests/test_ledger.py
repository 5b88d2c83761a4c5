from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.money.ledger import Ledger, usd
from providers.errors import BudgetError, PlanError


async def test_reserve_settle_release_move_money() -> None:
    led = Ledger(cap_usd=1.0)
    a = await led.reserve("s1", 0.4)
    b = await led.reserve("s2", 0.3)
    assert led.reserved_usd == pytest.approx(0.7) and led.spent_usd == 0
    assert led.remaining_usd == pytest.approx(0.3)
    led.settle(a, 0.35)  # cheaper than estimated
    led.release(b)  # not charged
    assert led.spent_usd == 0.35 and led.reserved_usd == 0
    assert led.remaining_usd == 0.65
    assert a.state == "settled" and b.state == "released"


async def test_refusal_says_what_is_left_and_what_was_asked() -> None:
    led = Ledger(cap_usd=1.0)
    await led.reserve("s1", 0.75)
    with pytest.raises(BudgetError) as err:
        await led.reserve("s2", 0.5)
    msg = str(err.value)
    assert "$0.25 left" in msg and "asked $0.50" in msg and "s2" in msg
    assert isinstance(err.value, PlanError)
    assert led.reserved_usd == 0.75  # a refusal changes nothing
    with pytest.raises(BudgetError):
        await led.reserve("s2", 0.26)
    await led.reserve("s2", 0.25)  # exactly up to the cap is allowed
    assert led.remaining_usd == 0


async def test_per_shot_cap_counts_settled_and_reserved() -> None:
    led = Ledger(cap_usd=None, per_shot_cap_usd=1.0)
    r = await led.reserve("s1", 0.6)
    led.settle(r, 0.6)
    with pytest.raises(BudgetError, match=r"per-shot cap \$1.00.*\$0.40 left; asked \$0.50"):
        await led.reserve("s1", 0.5)
    await led.reserve("s1", 0.4)
    await led.reserve("s2", 1.0)  # another shot has its own allowance
    assert led.remaining_usd is None


async def test_no_cap_is_unlimited_and_already_spent_counts() -> None:
    free = Ledger(cap_usd=None)
    await free.reserve("s", 1e6)
    resumed = Ledger(cap_usd=1.0)
    resumed.book("s", 0.9)
    assert resumed.spent_usd == 0.9 and resumed.remaining_usd == pytest.approx(0.1)
    with pytest.raises(BudgetError):
        await resumed.reserve("s", 0.2)


async def test_booked_spend_counts_against_the_shots_own_cap() -> None:
    """A resumed folder's earlier spend on a shot is part of that shot's allowance."""
    led = Ledger(cap_usd=None, per_shot_cap_usd=1.0)
    led.book("s1", 0.7)
    with pytest.raises(BudgetError, match=r"per-shot cap \$1.00.*\$0.30 left"):
        await led.reserve("s1", 0.5)
    await led.reserve("s1", 0.3)
    await led.reserve("s2", 1.0)


async def test_decimal_sums_have_no_float_noise() -> None:
    led = Ledger(cap_usd=0.3)
    rs = [await led.reserve(f"s{i}", 0.1) for i in range(3)]
    for r in rs:
        led.settle(r, 0.1)
    assert led.spent_usd == 0.3 and led.remaining_usd == 0
    assert usd(0.1 + 0.2) == "$0.30" and usd(0.0000014) == "$0.000001"


async def test_overcharge_is_booked_and_blocks_further_reservations() -> None:
    led = Ledger(cap_usd=1.0)
    r = await led.reserve("s1", 0.9)
    led.settle(r, 1.2)  # the vendor billed more than the estimate: the money is gone
    assert led.spent_usd == 1.2 and led.remaining_usd == 0
    with pytest.raises(BudgetError, match=r"\$0.00 left"):
        await led.reserve("s2", 0.01)
    await led.reserve("local", 0)  # free work still runs


async def test_a_reservation_closes_once() -> None:
    led = Ledger(cap_usd=1.0)
    r = await led.reserve("s1", 0.5)
    led.settle(r, 0.5)
    with pytest.raises(ValueError, match="settled, not open"):
        led.settle(r, 0.5)
    with pytest.raises(ValueError):
        led.release(r)
    assert led.spent_usd == 0.5 and led.reserved_usd == 0
    with pytest.raises(ValueError):
        await led.reserve("s1", -0.1)
    with pytest.raises(ValueError):
        led.settle(await led.reserve("s2", 0.1), float("nan"))


async def test_stop_refuses_everything_after() -> None:
    led = Ledger(cap_usd=10.0)
    r = await led.reserve("s1", 1.0)
    led.stop("shot s2 could not reserve $20.00")
    led.stop("second reason is ignored")
    assert led.stopped() and led.stop_reason == "shot s2 could not reserve $20.00"
    with pytest.raises(BudgetError, match="run stopped"):
        await led.reserve("s3", 0.1)
    led.settle(r, 1.0)  # work already in flight still books its cost
    assert led.spent_usd == 1.0


async def test_many_concurrent_reservers_never_pass_the_cap() -> None:
    led = Ledger(cap_usd=1.0)
    granted: list[str] = []

    async def shot(i: int) -> None:
        await asyncio.sleep(random.random() / 1000)
        try:
            await led.reserve(f"s{i}", 0.1)
        except BudgetError:
            return
        granted.append(f"s{i}")

    await asyncio.gather(*(shot(i) for i in range(100)))
    assert len(granted) == 10 and led.reserved_usd == 1.0


op = st.tuples(
    st.integers(min_value=0, max_value=400_000),  # micro-dollars to reserve
    st.one_of(st.none(), st.floats(min_value=0, max_value=1)),  # None: release; else settle share
    st.integers(min_value=0, max_value=3),  # yields before reserving
    st.integers(min_value=0, max_value=3),  # yields while holding
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cap_micro=st.integers(min_value=0, max_value=2_000_000),
    per_shot_micro=st.one_of(st.none(), st.integers(min_value=0, max_value=800_000)),
    tasks=st.lists(st.lists(op, min_size=1, max_size=5), min_size=1, max_size=25),
)
def test_property_cap_holds_under_any_interleaving(cap_micro, per_shot_micro, tasks) -> None:
    cap = Decimal(cap_micro) / 1_000_000
    per_shot = None if per_shot_micro is None else Decimal(per_shot_micro) / 1_000_000
    led = Ledger(cap_usd=float(cap), per_shot_cap_usd=None if per_shot is None else float(per_shot))
    settled: list[Decimal] = []
    shot_total: dict[str, Decimal] = {}
    reservations: list = []

    def check() -> None:
        held = sum((r.amount for r in reservations if r.state == "open"), Decimal(0))
        assert Decimal(str(led.reserved_usd)) == held
        assert Decimal(str(led.spent_usd)) == sum(settled, Decimal(0))
        assert Decimal(str(led.spent_usd)) + Decimal(str(led.reserved_usd)) <= cap
        if per_shot is not None:
            assert all(v <= per_shot for v in shot_total.values())

    async def worker(n: int, ops: list) -> None:
        shot = f"shot{n % 7}"  # several workers share shots, so per-shot caps are contended
        for micro, share, before, holding in ops:
            for _ in range(before):
                await asyncio.sleep(0)
            amount = micro / 1_000_000
            try:
                r = await led.reserve(shot, amount)
            except BudgetError:
                check()
                continue
            reservations.append(r)
            shot_total[shot] = shot_total.get(shot, Decimal(0)) + r.amount
            check()
            for _ in range(holding):
                await asyncio.sleep(0)
            if share is None:
                led.release(r)
                shot_total[shot] -= r.amount
            else:
                actual = int(micro * share) / 1_000_000  # never above what was reserved
                led.settle(r, actual)
                settled.append(Decimal(str(actual)))
                shot_total[shot] += Decimal(str(actual)) - r.amount
            check()

    async def main() -> None:
        await asyncio.gather(*(worker(i, ops) for i, ops in enumerate(tasks)))

    asyncio.run(main())
    check()
    assert led.reserved_usd == 0 and all(r.state != "open" for r in reservations)
