"""Catalog prices are dated upper bounds: every paid model says when its price was checked
(price_as_of), estimates bill the units the vendor counts (frames at the native rate,
minimum and whole-step seconds, audio on by default), and `storyreel providers --stale DAYS`
lists the prices older than DAYS days.

Expectations below come from the vendors' published rules, written here, not from the
catalog's numbers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from providers.catalog import ModelInfo, Price, find_model, load_catalog
from tests.cli_kit import Ran, storyreel
from tests.storyboards import write_board

PAID_ENTRY: dict[str, Any] = {"vendor_model": "v", "durations": [5], "price": {"per_second": 0.1},
                              "price_as_of": "2026-12-01"}


# -- validation ------------------------------------------------------------------------------

def test_every_paid_model_is_dated_and_no_date_is_in_the_future() -> None:
    today = dt.date.today()
    for provider, cat in load_catalog().items():
        for key, info in cat.models.items():
            if info.free:
                continue
            assert isinstance(info.price_as_of, dt.date), f"{provider}:{key}"
            assert info.price_as_of <= today, f"{provider}:{key} is dated {info.price_as_of}"
            assert info.price_source, f"{provider}:{key} says nowhere where its price is from"


@pytest.mark.parametrize("as_of, ok", [
    ("2026-12-01", True), (dt.date(2026, 12, 1), True), (None, False), ("2026-13-01", False),
    ("yesterday", False), ("12/01/2026", False), (1764547200, False),
    (dt.datetime(2026, 12, 1, 10, 0), False)])
def test_price_as_of_is_a_calendar_day_required_for_paid_models(as_of: Any, ok: bool) -> None:
    entry = {**PAID_ENTRY, "price_as_of": as_of}
    if ok:
        assert ModelInfo.model_validate(entry).price_as_of == dt.date(2026, 12, 1)
    else:
        with pytest.raises(ValidationError, match="price_as_of"):
            ModelInfo.model_validate(entry)
    # a free model needs no date
    free = {**entry, "free": True, "price": {"per_video": 0}, "price_as_of": None}
    assert ModelInfo.model_validate(free).price_as_of is None


def test_a_catalog_file_without_price_as_of_does_not_load(tmp_path: Path) -> None:
    doc = {"provider": "x", "vendor": "X", "default_model": "m",
           "models": {"m": {k: v for k, v in PAID_ENTRY.items() if k != "price_as_of"}}}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValidationError, match="price_as_of"):
        load_catalog(tmp_path)


@pytest.mark.parametrize("price", [
    {"per_second": 0.1, "step_seconds": 0},
    {"per_second": 0.1, "step_seconds": -1},
    {"per_second": 0.1, "min_seconds": float("nan")},
    {"per_second": 0.1, "min_seconds": -2},
    {"per_second": 0.1, "fps": 0},
    {"per_second": 0.1, "fps": 16.5},
    {"per_second": 0.1, "extra_frames": 1},  # frames without a frame rate
    {"per_second": 0.1, "fps": 16, "extra_frames": -1},
    {"per_second": 0.1, "audio_surcharge_per_second": -0.05},
    {"per_second": 0.1, "audio_surcharge_per_second": float("inf")},
    {"per_second": 0.1, "audio_param": "generate_audio"},  # a switch for no surcharge
    {"per_second": 0.1, "per_video": 0.5},  # two shapes
    {"per_second": 0.1, "per_extra_second": 0.2},  # a base part without the base
    {"per_second_by_resolution": {}},
    {"per_second": 0.1, "seconds_billed": 5},  # unknown field
])
def test_bad_price_rules_are_refused(price: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Price.model_validate(price)


def test_a_bad_billing_rule_in_a_storyboard_override_is_a_spec_error(tmp_path: Path) -> None:
    from flows.storyboard.plan import make_plan
    from providers.errors import SpecError

    spec = write_board(tmp_path, [{"id": "a", "prompt": "a kite", "provider": "fal",
                                   "model": "kling-2.5-turbo-pro", "duration": 5}],
                       pricing={"fal:kling-2.5-turbo-pro": {"per_second": 0.1, "fps": -16}})
    with pytest.raises(SpecError) as err:
        make_plan(spec)
    assert any(p.startswith("pricing.fal:kling-2.5-turbo-pro") for p, _ in err.value.issues)


# -- billed units, from the vendors' published rules -----------------------------------------

def test_frames_at_the_native_rate() -> None:
    # fal, Wan 2.2 A14B: "$0.08 per video second for 720p ... Video seconds are calculated at
    # 16 frames per second"; 5 s is num_frames 81 (fal's default): 81 / 16 video seconds
    rule = Price(per_second=0.08, fps=16, extra_frames=1)
    assert rule.billed_seconds(5) == 81 / 16
    assert rule.estimate(5, "720p") == pytest.approx(0.405)
    assert rule.billed_seconds(5.01) == 82 / 16  # a part frame is a whole frame
    wan = find_model("fal", "wan-2.2-a14b")
    assert wan is not None and wan.estimate(5, "720p") >= 81 / 16 * 0.08 - 1e-9
    assert wan.estimate(5, "480p") >= 81 / 16 * 0.04 - 1e-9
    hf = find_model("huggingface", "wan-2.2-a14b")  # the router passes fal's price through
    assert hf is not None and hf.estimate(5, "720p") >= 81 / 16 * 0.08 - 1e-9


def test_minimum_and_whole_step_seconds() -> None:
    # Runway bills whole credits per second: a 4.2 s request bills 5 s (12 credits/s)
    assert Price(per_second=0.12, step_seconds=1).estimate(4.2, "720p") == pytest.approx(0.60)
    assert Price(per_second=0.12, step_seconds=1).estimate(4.0, "720p") == pytest.approx(0.48)
    # "Minimum charge: 5 seconds ... billed duration rounded up" (Kling 2.5 Turbo, $0.07/s)
    rule = Price(per_second=0.07, min_seconds=5, step_seconds=1)
    assert rule.estimate(3, "1080p") == pytest.approx(0.35)
    assert rule.estimate(6.5, "1080p") == pytest.approx(0.49)
    # steps of 5 s (a vendor billing per started 5 s block)
    assert Price(per_second=0.1, step_seconds=5).estimate(5.5, "720p") == pytest.approx(1.0)


def test_audio_on_by_default_costs_the_surcharge_until_the_request_turns_it_off() -> None:
    # fal, Veo 3.1: "$0.20 without audio or $0.40 with audio for 720p or 1080p" (8 s)
    veo = find_model("fal", "veo-3.1")
    assert veo is not None
    assert veo.estimate(8, "1080p") >= 8 * 0.40 - 1e-9  # generate_audio defaults to true
    silent = veo.estimate(8, "1080p", {"generate_audio": False})
    assert 8 * 0.20 - 1e-9 <= silent < 8 * 0.40
    # Runway, Veo 3.1: 40 credits/s with audio (its default), 20 without; 1 credit = $0.01
    rw = find_model("runway", "veo3.1")
    assert rw is not None and rw.estimate(8, "720p") >= 3.20 - 1e-9
    assert 1.60 - 1e-9 <= rw.estimate(8, "720p", {"audio": False}) < 3.20
    # fal, Kling 3 Pro: $0.112/s audio off (what the catalog sends), $0.168/s on
    k3 = find_model("fal", "kling-3-pro")
    assert k3 is not None and k3.estimate(5, "1080p") >= 5 * 0.112 - 1e-9
    assert k3.estimate(5, "1080p", {"generate_audio": True}) >= 5 * 0.168 - 1e-9


def test_planning_prices_a_shot_with_its_own_params(tmp_path: Path) -> None:
    """A shot that turns Kling 3's audio back on is planned at the audio rate."""
    from flows.storyboard.plan import make_plan

    shots = [{"id": "quiet", "prompt": "a kite", "provider": "fal", "model": "kling-3-pro",
              "duration": 5},
             {"id": "loud", "prompt": "a kite", "provider": "fal", "model": "kling-3-pro",
              "duration": 5, "params": {"generate_audio": True}}]
    plan = make_plan(write_board(tmp_path, shots, budget={"max_usd": 20}))
    quiet, loud = (s.options[0].estimate_usd for s in plan.shots)
    assert quiet >= 5 * 0.112 - 1e-9 and loud >= 5 * 0.168 - 1e-9 and loud > quiet


@pytest.mark.parametrize("provider, model, seconds, resolution, public", [
    # runware.ai/docs/models/minimax-hailuo-2-3: 768p 6 s $0.28, 10 s $0.56
    ("runware", "hailuo-2.3", 6, "768p", 0.28),
    ("runware", "hailuo-2.3", 10, "768p", 0.56),
    # Gemini API Veo 3.1 Fast after Google's 2026-04-07 cut: $0.10/s 720p, $0.12/s 1080p
    ("gemini", "veo-3.1-fast", 8, "720p", 0.80),
    ("gemini", "veo-3.1-fast", 8, "1080p", 0.96),
    ("gemini", "veo-3.1", 8, "4k", 4.80),  # $0.60/s at 4k
    # fal, Wan 2.7: $0.10/s at 720p, $0.15/s at 1080p
    ("fal", "wan-2.7", 10, "1080p", 1.50),
    # fal, Kling 2.5 Turbo Pro: $0.35 per 5 s + $0.07 per extra second
    ("fal", "kling-2.5-turbo-pro", 10, "1080p", 0.70),
    # Luma Ray 2, 5 s: $1.00 at 720p (seed list; fal's ray-2 $0.50 at 540p, 720p x2)
    ("luma", "ray-2", 5, "720p", 1.00),
])
def test_estimates_are_at_or_above_the_public_price(provider: str, model: str, seconds: float,
                                                    resolution: str, public: float) -> None:
    info = find_model(provider, model)
    assert info is not None
    assert info.estimate(seconds, resolution) >= public - 1e-9


# -- `storyreel providers` -------------------------------------------------------------------

def _cli(*args: str) -> Ran:
    return storyreel("providers", *args)


def test_providers_stale_lists_the_prices_older_than_days() -> None:
    today = dt.date.today()
    ages = {(p, k): (today - m.price_as_of).days for p, c in load_catalog().items()
            for k, m in c.models.items() if m.price_as_of is not None}
    assert len(set(ages.values())) >= 2, "the catalog's prices all have one date"
    days = sorted(set(ages.values()))[0]  # the newest prices stay off the list
    proc = _cli("--stale", str(days), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {(r["provider"], r["model"]) for r in rows} == {k for k, a in ages.items() if a > days}
    row = rows[0]
    assert set(row) == {"provider", "model", "price_as_of", "age_days", "source"}
    assert row["age_days"] == (today - dt.date.fromisoformat(row["price_as_of"])).days > days
    text = _cli("--stale", str(days))
    assert text.returncode == 0 and f"{len(rows)} catalog price(s) older than {days}" in text.stdout
    for r in rows:
        assert f"{r['price_as_of']}  {r['age_days']:>4} d" in text.stdout
    # nothing is older than the oldest
    none = _cli("--stale", str(max(ages.values())))
    assert none.returncode == 0 and none.stdout.startswith("0 catalog price(s)")


@pytest.mark.parametrize("bad", ["-1", "soon", "1.5"])
def test_providers_stale_refuses_what_is_not_days(bad: str) -> None:
    proc = _cli("--stale", bad)
    assert proc.returncode == 2 and "number of days" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_providers_listing_shows_price_as_of() -> None:
    proc = _cli()
    assert proc.returncode == 0, proc.stderr
    veo = find_model("gemini", "veo-3.1-fast")
    assert veo is not None
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("veo-3.1-fast ")
                and "0.12" in ln)
    assert f"as of {veo.price_as_of}" in line
