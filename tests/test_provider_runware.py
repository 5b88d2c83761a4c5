"""Runware adapter against the emulator over real sockets (REST task protocol)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    UnconfirmedSubmitError,
)
from providers.runware import class_for_code
from providers.types import Job
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = "test-runware-key"




async def test_text_to_video_task_and_cost(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        req = request_for("runware", duration=10, width=1920, height=1080,
                          negative_prompt="blurry")
        job = await p.submit(req)
        done = await p.wait(job)
        clip = await p.fetch(job, done, tmp_path / "r.mp4")
    assert_mp4(clip.path)
    [emu_job] = emu.jobs("runware")
    # we choose the taskUUID (a UUID v4) and it is the job id
    assert uuid.UUID(job.job_id).version == 4 and emu_job.id == job.job_id
    assert emu_job.request == {
        "taskType": "videoInference", "taskUUID": job.job_id, "positivePrompt": req.prompt,
        "model": "klingai:6@1", "duration": 10, "width": 1920, "height": 1080,
        "deliveryMethod": "async", "includeCost": True, "numberResults": 1,
        "negativePrompt": "blurry", "seed": 7,
    }
    assert type(emu_job.request["duration"]) is int
    # `cost` from the finished task (includeCost) is the actual charge
    assert clip.cost_usd == pytest.approx(emu_job.price_usd) == pytest.approx(0.70)
    assert emu.stats("runware")["polls"] >= 1


async def test_image_to_video_frame_images(emu, tmp_path: Path) -> None:
    image = tmp_path / "first.png"
    Image.new("RGB", (64, 36), (10, 120, 200)).save(image)
    url = "https://cdn.example.com/first.jpg"
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        clip = await run_job(p, request_for("runware", image=image, width=1920, height=1080),
                             tmp_path / "a.mp4")
        await run_job(p, request_for("runware", image=url, width=1920, height=1080),
                      tmp_path / "b.mp4")
    assert_mp4(clip.path)
    local, remote = (j.request["frameImages"] for j in emu.jobs("runware"))
    assert len(local) == 1 and local[0]["frame"] == "first"
    assert local[0]["inputImage"].startswith("data:image/png;base64,")
    assert remote == [{"inputImage": url, "frame": "first"}]


async def test_catalog_params_fix_hailuo_dimensions(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        await run_job(p, request_for("runware", model="hailuo-2.3", width=1280, height=720),
                      tmp_path / "h.mp4")
    sent = emu.jobs("runware")[0].request
    assert (sent["model"], sent["width"], sent["height"], sent["duration"]) == (
        "minimax:4@1", 1366, 768, 6)


async def test_lost_submit_answer_keeps_the_task_uuid(emu) -> None:
    """The job exists though its answer was lost: poll it by our taskUUID, never resend."""
    emu.inject("runware", "submit", "drop_response")
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        with pytest.raises(UnconfirmedSubmitError) as info:
            await p.submit(request_for("runware"))
        task_uuid = info.value.job_id
        assert task_uuid and emu.get_job("runware", task_uuid) is not None
        done = await p.wait(Job(provider="runware", job_id=task_uuid))
    assert done.state == "succeeded" and done.video_url
    assert emu.stats("runware")["submits"] == 1


async def test_failed_task_is_job_failed(emu) -> None:
    emu.inject("runware", "job", "fail", message="Provider did not respond")
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        job = await p.submit(request_for("runware"))
        done = await p.wait(job)
    assert done.state == "failed" and isinstance(done.error, JobFailedError)
    text = str(done.error)
    assert "runware" in text and job.job_id in text and "inferenceError" in text
    assert done.cost_usd is None and emu.stats("runware")["charged_usd"] == 0


async def test_policy_task_is_content_policy(emu) -> None:
    emu.inject("runware", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        done = await p.wait(await p.submit(request_for("runware")))
    assert isinstance(done.error, ContentPolicyError)
    assert "contentPolicyViolation" in str(done.error)


async def test_bad_key_is_auth_error_without_the_key(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client, key="rw-wrong-key-77")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("runware"))
    assert "invalidApiKey" in str(info.value) and "rw-wrong-key-77" not in str(info.value)


async def test_insufficient_credits(emu) -> None:
    emu.inject("runware", "submit", "http", status=402, message="Insufficient credits")
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("runware"))
    assert "insufficientCredits" in str(info.value) and KEY not in str(info.value)
    assert emu.stats("runware")["requests"] == 1


async def test_unknown_model_and_unknown_task(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runware", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("runware", vendor_model="klingai:999@9"))
        assert "invalidModel" in str(info.value)
        with pytest.raises(NotFoundError):
            await p.poll(Job(provider="runware", job_id=str(uuid.uuid4())))


def test_error_codes_classified_like_the_sdk() -> None:
    assert class_for_code("providerContentPolicyViolation") is ContentPolicyError
    assert class_for_code("insufficientCredits") is InsufficientCreditError
    assert class_for_code("invalidApiKey") is AuthError
    assert class_for_code("taskFailedOrNotFound") is NotFoundError
    assert class_for_code("timeoutProvider") is None  # left to the HTTP status / job failure
