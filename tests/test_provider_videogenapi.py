"""VideoGenAPI adapter against the emulator over real sockets (protocol: videogenapi.com API docs)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
)
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = "test-videogenapi-key"




async def test_text_to_video_wire(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        req = request_for("videogenapi", duration=7, resolution="1080p")
        job = await p.submit(req)
        done = await p.wait(job)
        clip = await p.fetch(job, done, tmp_path / "t.mp4")
    assert_mp4(clip.path)
    [emu_job] = emu.jobs("videogenapi")
    assert emu_job.request == {"model": "seedance_lite", "prompt": req.prompt, "duration": 7,
                               "resolution": "1080p", "aspect_ratio": "16:9", "seed": 7}
    assert type(emu_job.request["duration"]) is int
    assert job.job_id.startswith("gen_") and job.data["status_url"] == f"/v1/status/{job.job_id}"
    assert clip.cost_usd is None  # the vendor reports no cost
    assert emu.stats("videogenapi")["polls"] >= 1


async def test_image_url_switches_mode_and_drops_aspect(emu, tmp_path: Path) -> None:
    url = "https://example.com/images/my-dog.jpg"
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        await run_job(p, request_for("videogenapi", model="kling_21", image=url),
                      tmp_path / "i.mp4")
    sent = emu.jobs("videogenapi")[0].request
    assert sent["image_url"] == url and "aspect_ratio" not in sent


async def test_local_image_is_refused_before_any_request(emu, tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    image.write_bytes(b"\x89PNG fake")
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("videogenapi", image=image))
    assert "URL" in str(info.value)
    assert emu.stats("videogenapi")["requests"] == 0


async def test_4k_is_spelled_upper_case(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        await run_job(p, request_for("videogenapi", model="kling_21", resolution="4k"),
                      tmp_path / "k.mp4")
    assert emu.jobs("videogenapi")[0].request["resolution"] == "4K"


async def test_long_prompt_is_refused_before_any_request(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("videogenapi", prompt="x" * 1001))
    assert "1000" in str(info.value)
    assert emu.stats("videogenapi")["requests"] == 0


async def test_monthly_limit_429_is_quota_not_retried(emu) -> None:
    emu.inject("videogenapi", "submit", "http", status=429,
               message="Monthly usage limit exceeded")
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("videogenapi"))
    assert "Monthly usage limit" in str(info.value) and KEY not in str(info.value)
    assert emu.stats("videogenapi")["requests"] == 1


async def test_rate_limit_429_is_retried(emu) -> None:
    emu.inject("videogenapi", "submit", "http", status=429, retry_after=0)
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        job = await p.submit(request_for("videogenapi"))
    assert job.job_id and emu.stats("videogenapi")["requests"] == 2
    assert emu.stats("videogenapi")["jobs"] == 1


async def test_unsupported_resolution_is_invalid(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("videogenapi", model="hailuo_2", resolution="4k"))
    assert "not supported by hailuo_2" in str(info.value)


async def test_failed_and_policy_jobs(emu) -> None:
    emu.inject("videogenapi", "job", "fail", message="Generation timed out upstream")
    emu.inject("videogenapi", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client)
        failed_job = await p.submit(request_for("videogenapi"))
        policy_job = await p.submit(request_for("videogenapi"))
        failed, policy = await p.wait(failed_job), await p.wait(policy_job)
    assert isinstance(failed.error, JobFailedError)
    assert failed_job.job_id in str(failed.error) and "videogenapi" in str(failed.error)
    assert "Generation timed out upstream" in str(failed.error)
    assert isinstance(policy.error, ContentPolicyError)


async def test_bad_key_is_auth_error_without_the_key(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("videogenapi", emu, client, key="lt_wrong_key_42")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("videogenapi"))
    assert "videogenapi" in str(info.value) and "lt_wrong_key_42" not in str(info.value)
