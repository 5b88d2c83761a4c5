"""review.html: written by every run, self-contained, escaped, and checked in a real browser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests import browser
from tests.storyboards import cost_rows, write_board

HOSTILE = "<script>alert(1)</script> & \"quoted\" <img src=x onerror=alert(2)>"


def _attempt(**kw: Any) -> Any:
    from flows.money.journal import Attempt

    base = dict(id=1, run_id="r", shot_id="a", attempt=1, provider="fal", model="m",
                cache_key=None, job_id="j", job_data=None, status="failed", failure_reason=None,
                estimated_usd=0.5, reserved_usd=0.5, actual_usd=0.0, cost_source="none",
                clip_path=None, conformed_path=None, queued_s=None, generation_s=None,
                download_s=None, started_at="t", finished_at=None, updated_at="t", take=1)
    base.update(kw)
    return Attempt(**base)


def test_page_escapes_every_user_and_vendor_text() -> None:
    from flows.review.page import render_page, shot_views

    plan = {"title": f"Title {HOSTILE}", "estimated_usd": 0.5, "shots": [
        {"id": "a", "prompt": f"A kite {HOSTILE}", "duration": 5, "seed": 7,
         "options": [{"provider": "fal", "model": "m", "estimate_usd": 0.5, "seed": "none"}]}]}
    views = shot_views(plan, [_attempt(failure_reason=f"content_policy: {HOSTILE}")], {})
    page = render_page(plan, views, spent_usd=0.0, cap_usd=1.0, final=None, final_poster=None)
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4  # title x2, prompt, reason
    assert "missing from the cut" in page
    assert "seed 7 (not sent: fal:m takes none)" in page  # the catalog says it takes no seed


@pytest.mark.e2e
async def test_review_page_in_a_real_browser(review_run, emu_env, tmp_path: Path
                                             ) -> None:
    emu = emu_env
    emu.inject("fal", "job", "policy", message="the vendor refused it")
    shots = [
        {"id": "refused", "prompt": "A red kite over the sea", "duration": 5, "retries": 0},
        # on runway, so the fal fault above can only meet `refused` (shots start together)
        {"id": "harbour", "prompt": f"The harbour at night {HOSTILE}", "duration": 5,
         "provider": "runway", "model": "gen4.5"},
        {"id": "lamp", "prompt": "Close-up of the lamp", "duration": 5, "provider": "runway",
         "model": "gen4.5"},
    ]
    spec = write_board(tmp_path, shots, title="Review page test",
                       defaults={"provider": "fal", "model": "kling-2.5-turbo-pro"},
                       budget={"max_usd": 4})
    out = tmp_path / "out"
    result = await review_run(spec, out)
    assert result["failed"] == ["refused"]
    page = out / "review.html"
    assert page.is_file()

    report = await browser.aload(page)
    assert report.errors == []
    # the cut and one take for each shot that was made, every one playable
    labels = [v["label"] for v in report.videos]
    assert labels == ["the cut", "harbour take 1", "lamp take 1"]
    for v in report.videos:
        assert v["error"] is None and v["readyState"] >= 1, v
        assert v["width"] > 0 and v["poster"], v
    assert (out / report.videos[1]["poster"]).is_file()
    # a take in the cut plays from the cut, where the storyboard puts it: the refused shot's
    # slate holds 0-5 s, harbour 5-10 s, lamp 10-15 s (hard cuts); the browser starts there
    assert [v["src"] for v in report.videos[1:]] == ["final.mp4#t=5,10", "final.mp4#t=10,15"]
    assert [round(v["currentTime"]) for v in report.videos[1:]] == [5, 10]
    # every link is relative: the page works when the folder moves
    assert not re.search(r'(src|poster|href)="(/|[a-z]+:)', report.html)
    text = report.text
    for s in shots:
        assert s["id"] in text
    assert f"The harbour at night {HOSTILE}" in text  # shown as text, never as markup
    assert "<script" not in report.html.split("<body", 1)[1]
    assert "the vendor refused it" in text and "missing from the cut" in text
    assert "seed " in text and "fal:kling-2.5-turbo-pro" in text and "runway:gen4.5" in text
    spent = sum(float(r["actual_usd"]) for r in cost_rows(out))
    assert f"${spent:.2f} spent of $4.00" in text
    assert report.html.count("<svg") >= 2  # the spend meter and the cost chart
    (tmp_path / "review.png").write_bytes(report.screenshot)


async def test_the_page_follows_a_run_without_piling_up_writes() -> None:
    import asyncio

    from flows.review.page import PageRefresher, render_page

    writes: list[float] = []

    async def write() -> None:
        writes.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)

    page = PageRefresher(write, every=0.3)
    for _ in range(5):  # five shots finish at once: one write
        page.poke()
    await asyncio.sleep(0.1)
    assert len(writes) == 1
    page.poke()  # a later shot: written again, but not before `every` has passed
    await asyncio.sleep(0.5)
    assert len(writes) == 2 and writes[1] - writes[0] >= 0.29
    page.poke()
    await page.close()  # the final page follows: a pending refresh is dropped
    assert len(writes) == 2
    running = render_page({"title": "t", "shots": []}, [], spent_usd=0, cap_usd=None,
                          final=None, final_poster=None, running=True)
    assert '<meta http-equiv="refresh"' in running and "no cut yet" in running
