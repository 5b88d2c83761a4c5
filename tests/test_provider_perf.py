"""Perf adapter against the emulator over real sockets (protocol: docs.withperf.pro "Video Generation")."""

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
    NotFoundError,
)
from providers.types import Job
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = "test-perf-key"




async def test_text_to_video_wire_and_cost(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        req = request_for("perf", duration=8, resolution="1080p", aspect_ratio="9:16")
        clip = await run_job(p, req, tmp_path / "a.mp4")
    assert_mp4(clip.path)
    [job] = emu.jobs("perf")
    assert job.request == {"prompt": req.prompt, "model": "runway-gen3",
                           "duration_seconds": 8, "resolution": "1080p",
                           "aspect_ratio": "9:16"}
    assert type(job.request["duration_seconds"]) is int  # a JSON number, not "8"
    assert job.id.startswith("job_vid_") and clip.job_id == job.id
    # the vendor's perf.cost_usd is the actual cost: $0.10/s x 8 s
    assert clip.cost_usd == pytest.approx(0.80) == job.price_usd
    assert emu.stats("perf")["charged_usd"] == pytest.approx(0.80)


async def test_submit_keeps_estimate_and_poll_reports_progress(emu) -> None:
    emu.configure(latency=1.0)
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        job = await p.submit(request_for("perf", model="pika", duration=4))
        assert job.data["estimated_cost_usd"] == pytest.approx(0.268)
        first = await p.poll(job)
        assert first.state == "queued"
        emu.advance(0.35)
        running = await p.poll(job)
    assert running.state == "running"
    assert 0 < running.progress < 1
    # estimated_remaining_seconds becomes the next-poll hint, capped at the poll max
    assert running.poll_after is not None and 0 < running.poll_after <= p.poll_settings.max


async def test_duration_over_model_max_is_invalid_and_not_retried(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("perf", duration=20))
    assert "exceeds maximum of 16 for runway-gen3" in str(info.value)
    assert emu.stats("perf")["requests"] == 1 and emu.stats("perf")["jobs"] == 0


async def test_params_pass_through_last(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        req = request_for("perf", params={"resolution": "1080p"})
        await run_job(p, req, tmp_path / "p.mp4")
    assert emu.jobs("perf")[0].request["resolution"] == "1080p"


async def test_failed_job_is_job_failed_without_cost(emu) -> None:
    emu.inject("perf", "job", "fail", message="GPU worker crashed")
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        job = await p.submit(request_for("perf"))
        done = await p.wait(job)
    assert done.state == "failed" and done.cost_usd is None
    assert isinstance(done.error, JobFailedError)
    text = str(done.error)
    assert "perf" in text and job.job_id in text and "GPU worker crashed" in text
    assert emu.stats("perf")["charged_usd"] == 0


async def test_content_policy_failure(emu) -> None:
    emu.inject("perf", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        job = await p.submit(request_for("perf"))
        done = await p.wait(job)
    assert isinstance(done.error, ContentPolicyError)
    assert "Content policy violation" in str(done.error)


async def test_bad_key_is_auth_error_without_the_key(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client, key="pk_live_wrong_1234")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("perf"))
    assert "perf" in str(info.value) and "pk_live_wrong_1234" not in str(info.value)
    assert emu.stats("perf")["auth_failures"] == 1


async def test_credit_error(emu) -> None:
    emu.inject("perf", "submit", "http", status=402, message="Insufficient credits")
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("perf"))
    assert "Insufficient credits" in str(info.value) and KEY not in str(info.value)
    assert emu.stats("perf")["requests"] == 1  # never retried


async def test_image_is_refused_before_any_request(emu, tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    image.write_bytes(b"\x89PNG fake")
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        with pytest.raises(InvalidRequestError):
            await p.submit(request_for("perf", image=image))
    assert emu.stats("perf")["requests"] == 0


async def test_unknown_job_is_not_found(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("perf", emu, client)
        with pytest.raises(NotFoundError) as info:
            await p.poll(Job(provider="perf", job_id="job_vid_missing"))
    assert "Video generation job not found" in str(info.value)
