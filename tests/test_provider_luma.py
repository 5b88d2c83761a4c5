"""Luma Dream Machine adapter against the emulated API, over real sockets."""

from __future__ import annotations

from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
)
from tests.emulator.core import FAKE_KEYS
from tests.provider_kit import make_provider, request_for, run_job

KEY = FAKE_KEYS["luma"]
IMAGE_URL = "https://cdn.example.test/frames/lighthouse.jpg"


def video_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        return float(container.duration / av.time_base)


async def test_text_to_video_wire_and_real_mp4(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        req = request_for("luma", negative_prompt="blurry")  # Luma video has no such field
        clip = await run_job(p, req, tmp_path / "out.mp4")
    assert video_seconds(clip.path) == pytest.approx(5.0, abs=0.2)
    assert clip.cost_usd is None  # Luma reports no per-generation cost
    (job,) = emu.jobs("luma")
    assert job.data["path"] == "/luma/dream-machine/v1/generations/video"
    assert job.data["content_type"] == "application/json"
    assert job.request == {"generation_type": "video", "model": "ray-flash-2",
                           "prompt": req.prompt, "aspect_ratio": "16:9", "duration": "5s",
                           "resolution": "720p"}
    assert emu.stats("luma")["charged_usd"] == pytest.approx(0.4)


async def test_nine_seconds_1080p_and_params_pass_through(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        req = request_for("luma", model="ray-2", duration=9.0, resolution="1080p",
                          aspect_ratio="9:16", params={"loop": True})
        clip = await run_job(p, req, tmp_path / "out.mp4")
    body = emu.jobs("luma")[0].request
    assert body["duration"] == "9s" and body["resolution"] == "1080p"
    assert body["model"] == "ray-2" and body["aspect_ratio"] == "9:16" and body["loop"] is True
    with av.open(str(clip.path)) as container:
        stream = container.streams.video[0]
        assert stream.height > stream.width  # 9:16 came back portrait


async def test_image_url_becomes_keyframe_frame0(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        await run_job(p, request_for("luma", image=IMAGE_URL), tmp_path / "out.mp4")
    body = emu.jobs("luma")[0].request
    assert body["keyframes"] == {"frame0": {"type": "image", "url": IMAGE_URL}}


async def test_local_image_is_refused_before_anything_is_sent(emu, tmp_path):
    png = tmp_path / "ref.png"
    Image.new("RGB", (64, 36)).save(png)
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("luma", image=png, shot_id="s7"))
    text = str(info.value)
    assert "URL" in text and "luma" in text and "s7" in text
    assert not p.accepts_local_images
    assert emu.stats("luma")["requests"] == 0  # nothing reached the vendor, nothing paid


async def test_duration_must_be_a_string(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("luma", params={"duration": 5}))
    assert "duration" in str(info.value)
    assert emu.stats("luma")["submits"] == 0


async def test_moderation_failure_is_content_policy_error(emu, tmp_path):
    emu.inject("luma", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(ContentPolicyError) as info:
            await run_job(p, request_for("luma"), tmp_path / "out.mp4")
    job_id = emu.jobs("luma")[0].id
    text = str(info.value)
    assert "moderation" in text and "luma" in text and job_id in text and KEY not in text


async def test_failed_generation_is_job_failed_error_with_reason(emu, tmp_path):
    emu.inject("luma", "job", "fail", message="Internal rendering error")
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(JobFailedError) as info:
            await run_job(p, request_for("luma"), tmp_path / "out.mp4")
    assert "Internal rendering error" in str(info.value)
    assert info.value.job_id == emu.jobs("luma")[0].id
    assert not isinstance(info.value, ContentPolicyError)


async def test_moderation_refusal_at_submit_is_content_policy_error(emu):
    emu.inject("luma", "submit", "http", status=400,
               message="Prompt not allowed: advanced moderation failed")
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(ContentPolicyError):
            await p.submit(request_for("luma"))


async def test_bad_key_is_auth_error_without_the_key(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client, key="luma-wrong-key-123")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("luma"))
    text = str(info.value)
    assert "luma" in text and "Invalid API key" in text and "luma-wrong-key-123" not in text


@pytest.mark.parametrize("status", [400, 402])
async def test_credit_exhaustion_is_insufficient_credit(emu, status):
    emu.inject("luma", "submit", "http", status=status,
               message="Insufficient credits to create this generation")
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("luma"))
    assert "Insufficient credits" in str(info.value)
    assert emu.stats("luma")["submits"] == 0


async def test_cancel_is_not_supported_and_sends_nothing(emu):
    emu.configure(latency=5.0)
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        job = await p.submit(request_for("luma"))
        before = emu.stats("luma")["requests"]
        assert not p.supports_cancel
        assert await p.cancel(job) is False
        status = await p.poll(job)  # the record is still there to poll on a resume
    assert status.state == "queued"
    stats = emu.stats("luma")
    assert stats["cancels"] == 0 and stats["requests"] == before + 1
