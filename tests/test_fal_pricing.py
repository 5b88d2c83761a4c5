"""fal is priced from fal's own numbers: the Platform API's unit prices (providers/fal_pricing.py)
times the result's `x-fal-billable-units`, against the emulator over real sockets. Expected
money comes from the emulator's counters and the unit prices a test sets, never the catalog."""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.storyboard.plan import LIVE_SOURCE
from providers.fal import billable_units
from providers.fal_pricing import (
    PriceLookup,
    UnitPrice,
    fetch_unit_prices,
    parse_price,
    units_per_shot,
)
from tests.emulator.core import FAKE_KEYS, Emulator
from tests.emulator.vendors import fal as emu_fal
from tests.provider_kit import make_provider, request_for, run_job
from tests.storyboards import charged, cost_rows, write_board

KEY = FAKE_KEYS["fal"]
KLING3 = "fal-ai/kling-video/v3/pro/text-to-video"
KLING25 = "fal-ai/kling-video/v2.5-turbo/pro/text-to-video"


def platform(emu: Emulator) -> str:
    return emu.env()["STORYREEL_FAL_PLATFORM_URL"]


async def lookup(emu: Emulator, ids: list[str], cache: Path | None, **kw: Any) -> PriceLookup:
    kw.setdefault("key", KEY)
    return await fetch_unit_prices(ids, base_url=platform(emu), cache_dir=cache, **kw)


def listed(emu: Emulator, endpoint: str) -> tuple[str, float]:
    found = emu_fal.account_price(emu, endpoint)
    assert found is not None
    return found


# -- the pricing client ---------------------------------------------------------------------

async def test_more_than_50_ids_are_asked_in_chunks(emu: Emulator, tmp_path: Path) -> None:
    known = sorted(emu_fal.MODELS)
    unknown = [f"fal-ai/no-such-model-{i:02d}" for i in range(50)]
    found = await lookup(emu, known + unknown, tmp_path)
    # the emulator refuses more than 50 ids a call, as fal does: one call would find nothing
    assert set(found.prices) == set(known)
    for eid in known:
        unit, price = listed(emu, eid)
        assert found.prices[eid] == UnitPrice(eid, price, unit, "USD")
    assert found.fetched == 2  # 66 ids: two calls of at most 50
    assert "no price for fal-ai/no-such-model" in (found.problem or "")


async def test_pages_are_followed_with_next_cursor(emu: Emulator, tmp_path: Path) -> None:
    known = sorted(emu_fal.MODELS)
    assert len(known) > emu_fal.PRICING_PAGE  # else this test shows nothing
    last = known[-1]  # on the last page
    emu.configure(unit_prices={"fal": {last: 0.0777}})
    found = await lookup(emu, known, tmp_path)
    assert found.problem is None and set(found.prices) == set(known)
    assert found.prices[last].unit_price == 0.0777
    pages = -(-len(known) // emu_fal.PRICING_PAGE)
    assert emu.stats("fal")["price_lookups"] == pages and found.fetched == 1


async def test_a_day_of_cache_then_ask_again(emu: Emulator, tmp_path: Path) -> None:
    first = await lookup(emu, [KLING3, KLING25], tmp_path)
    assert first.fetched == 1 and set(first.prices) == {KLING3, KLING25}
    asked = emu.stats("fal")["price_lookups"]
    again = await lookup(emu, [KLING25, KLING3], tmp_path)
    assert again.prices == first.prices and again.fetched == 0
    assert emu.stats("fal")["price_lookups"] == asked  # no request at all
    # a cached answer works with no network at all
    async with _dead_client() as dead:
        offline = await fetch_unit_prices([KLING3], key=KEY, base_url=platform(emu),
                                          cache_dir=tmp_path, client=dead)
    assert offline.prices == {KLING3: first.prices[KLING3]}
    later = await lookup(emu, [KLING3], tmp_path, now=time.time() + 25 * 3600)
    assert later.fetched == 1 and emu.stats("fal")["price_lookups"] == asked + 1
    text = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert KEY not in text and KLING3 in text


async def test_the_cache_is_not_shared_between_keys(emu: Emulator, tmp_path: Path) -> None:
    assert (await lookup(emu, [KLING3], tmp_path)).prices
    other = await lookup(emu, [KLING3], tmp_path, key="test-other-account-key")
    # another account's key is not served this account's prices: it asks, and is refused
    assert other.prices == {} and other.fetched == 1
    assert "HTTP 401" in (other.problem or "")


@pytest.mark.parametrize("fault", [
    {"kind": "http", "status": 500},
    {"kind": "http", "status": 403},
    {"kind": "accept_then_garbage"},
    {"kind": "reset"},
])
async def test_a_failed_lookup_gives_no_price_and_caches_nothing(
        emu: Emulator, tmp_path: Path, fault: dict[str, Any], caplog) -> None:
    caplog.set_level(logging.DEBUG)
    emu.inject("fal", "pricing", **fault)
    failed = await lookup(emu, [KLING3], tmp_path)
    assert failed.prices == {} and failed.problem
    assert KEY not in failed.problem and KEY not in caplog.text
    assert not list(tmp_path.rglob("*.json"))
    healed = await lookup(emu, [KLING3], tmp_path)  # the next lookup asks again
    assert healed.prices[KLING3].unit_price == listed(emu, KLING3)[1]


async def test_no_key_bad_key_offline_and_slow_are_no_price(emu: Emulator,
                                                            tmp_path: Path) -> None:
    assert (await lookup(emu, [KLING3], tmp_path, key=None)).problem == "no FAL_KEY"
    bad = await lookup(emu, [KLING3], tmp_path, key="wrong-key-1234")
    assert bad.prices == {} and "401" in (bad.problem or "") and "wrong-key" not in bad.problem
    dead = await fetch_unit_prices([KLING3], key=KEY, base_url="http://127.0.0.1:9/v1",
                                   cache_dir=tmp_path)
    assert dead.prices == {} and "could not be reached" in (dead.problem or "")
    emu.inject("fal", "pricing", "slow", delay=3.0)
    t0 = time.monotonic()
    slow = await lookup(emu, [KLING3], tmp_path, timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert slow.prices == {} and "did not answer within" in (slow.problem or "")


def test_only_usable_prices_are_taken() -> None:
    good = {"endpoint_id": "a/b", "unit_price": 0.05, "unit": "second", "currency": "USD"}
    assert parse_price(good) == UnitPrice("a/b", 0.05, "second", "USD")
    for bad in ({**good, "currency": "EUR"}, {**good, "unit_price": -1},
                {**good, "unit_price": 0}, {**good, "unit_price": float("nan")},
                {**good, "unit_price": "0.05"}, {**good, "unit_price": True},
                {**good, "unit": ""}, {k: v for k, v in good.items() if k != "unit"},
                {"unit_price": 0.05}, "a/b", None):
        assert isinstance(parse_price(bad), str), bad


def test_units_header_is_a_count_or_nothing() -> None:
    assert billable_units("5") == 5.0 and billable_units(" 1.5 ") == 1.5
    assert billable_units("0") == 0.0
    for garbage in ("", "five", "-1", "nan", "inf", "1e999", "5 seconds", None):
        assert billable_units(garbage) is None, garbage


def test_what_a_unit_counts_for_a_clip() -> None:
    assert units_per_shot("second", 7) == 7 and units_per_shot("Video Seconds", 4) == 4
    assert units_per_shot("video", 7) == 1 and units_per_shot("minute", 90) == 1.5
    assert units_per_shot("megapixel", 5) is None and units_per_shot("image", 5) is None


# -- the adapter ----------------------------------------------------------------------------

async def test_a_job_costs_its_billed_units_at_the_accounts_price(emu: Emulator,
                                                                  tmp_path: Path) -> None:
    emu.configure(unit_prices={"fal": {KLING3: 0.15}})
    prices = (await lookup(emu, [KLING3], None)).prices
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        p.use_prices(prices)  # type: ignore[attr-defined]
        job = await p.submit(request_for("fal", model="kling-3-pro", duration=7))
        done = await p.wait(job)
        clip = await p.fetch(job, done, tmp_path / "a.mp4")
    (emu_job,) = emu.jobs("fal")
    assert done.billable_units == emu_job.data["billable_units"]
    assert done.cost_source == "vendor_units"
    assert Decimal(str(done.cost_usd)) == charged(emu, "fal") == Decimal("1.05")  # 7 s x 0.15
    assert clip.cost_usd == done.cost_usd


async def test_without_a_price_for_the_endpoint_used_the_cost_stays_unknown(
        emu: Emulator, tmp_path: Path) -> None:
    # a price for the text-to-video endpoint says nothing about the image-to-video one
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        p.use_prices({KLING3: UnitPrice(KLING3, 0.15, "second")})  # type: ignore[attr-defined]
        clip = await run_job(p, request_for("fal", model="kling-3-pro", duration=5,
                                            image="https://example.com/a.jpg"),
                             tmp_path / "b.mp4")
    assert clip.cost_usd is None


# -- planning and a run ---------------------------------------------------------------------

def fal_shots() -> list[dict[str, Any]]:
    return [{"id": f"k{d}", "prompt": f"a lighthouse, {d} s", "provider": "fal",
             "model": "kling-3-pro", "duration": d} for d in (3, 5, 7)] + [
        {"id": "t10", "prompt": "a harbour at night", "provider": "fal",
         "model": "kling-2.5-turbo-pro", "duration": 10}]


@pytest.fixture
def priced_env(emu_env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.2, unit_prices={"fal": {KLING3: 0.14}})  # catalog: 0.112/s
    return emu_env


async def test_a_run_books_what_fal_charged_at_the_accounts_price(priced_env: Emulator,
                                                                 tmp_path: Path) -> None:
    """Plan with live prices, render each shot on a RunContext (no Prefect), write cost.csv:
    every fal row is the emulator's charge to the cent, labelled vendor_units."""
    from flows.money.report import rows_from_journal, write_cost_csv
    from flows.run.session import RunOptions, new_context, open_journal
    from flows.run.shot import render_shot
    from flows.storyboard.plan import make_plan
    from flows.storyboard.prices import price_plan
    from providers.http import new_client

    spec = write_board(tmp_path, fal_shots(), budget={"max_usd": 10})
    plan = await price_plan(make_plan(spec))
    by_id = {s.shot_id: s for s in plan.shots}
    for d in (3, 5, 7):
        assert by_id[f"k{d}"].primary.price_source == LIVE_SOURCE
        assert by_id[f"k{d}"].estimate_usd == pytest.approx(0.14 * d)
    out = tmp_path / "out"
    journal = open_journal(out)
    try:
        async with new_client() as client:
            ctx = new_context(plan, RunOptions(no_cache=True), out, journal, client,
                              {"fal": KEY}, log=lambda _: None)
            results = [await render_shot(ctx, s) for s in plan.shots]
        assert [r.status for r in results] == ["done"] * 4
        write_cost_csv(rows_from_journal(journal, {}), out / "cost.csv")
    finally:
        journal.close()
    rows = cost_rows(out)
    assert [r["cost_source"] for r in rows] == ["vendor_units"] * 4
    jobs = {j.id: j for j in priced_env.jobs("fal")}
    for r in rows:  # each job at what the emulator charged for it
        assert Decimal(r["actual_usd"]) == Decimal(str(jobs[r["job_id"]].price_usd))
    spent = sum(Decimal(r["actual_usd"]) for r in rows)
    assert spent.quantize(Decimal("0.01")) == charged(priced_env, "fal").quantize(Decimal("0.01"))
    kling3 = [r for r in rows if r["shot_id"].startswith("k")]
    assert sum(Decimal(r["actual_usd"]) for r in kling3) == Decimal("2.10")  # 15 s x 0.14


def test_plan_shows_live_prices_and_json_names_the_source(priced_env: Emulator, tmp_path: Path,
                                                          capsys) -> None:
    from flows.cli.commands import main

    spec = write_board(tmp_path, fal_shots())
    assert main(["plan", "--json", str(spec)]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["shots"][0]["options"][0]
    assert first["price_source"] == LIVE_SOURCE and first["estimate_usd"] == pytest.approx(0.42)
    assert main(["plan", str(spec)]) == 0
    assert f"[{LIVE_SOURCE}]" in capsys.readouterr().out


@pytest.mark.parametrize("env", [{"FAL_KEY": None}, {"STORYREEL_FAL_PLATFORM_URL":
                                                     "http://127.0.0.1:9/v1"}])
def test_plan_offline_or_without_key_labels_catalog_estimates(
        priced_env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
        env: dict[str, str | None]) -> None:
    from flows.cli.commands import main

    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    spec = write_board(tmp_path, fal_shots())
    t0 = time.monotonic()
    main(["plan", "--json", str(spec)])  # exits 2 without a key: that is the key check's
    assert time.monotonic() - t0 < 6.0
    data = json.loads(capsys.readouterr().out)
    sources = {o["price_source"] for s in data["shots"] for o in s["options"]}
    assert all(src.startswith("catalog estimate") for src in sources), sources
    assert data["price_note"].startswith("fal live prices:")
    assert priced_env.stats("fal")["price_lookups"] == 0


def test_prices_command_shows_what_differs(priced_env: Emulator, capsys) -> None:
    from flows.cli.commands import main

    assert main(["prices"]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith(KLING3 + " ")]
    assert "$0.1400" in line and "second" in line and "+" in line
    assert "fal endpoints differ from the catalog" in out


def test_prices_command_without_key_says_so_in_one_line(priced_env: Emulator, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.cli.commands import main

    monkeypatch.delenv("FAL_KEY")
    assert main(["prices"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "no FAL_KEY" in captured.err


def _dead_client() -> httpx.AsyncClient:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("offline", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(refuse))
