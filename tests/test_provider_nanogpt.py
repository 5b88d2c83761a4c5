"""NanoGPT adapter against the emulator over real sockets (protocol: docs.nano-gpt.com "Video Generation")."""

from __future__ import annotations

import base64
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
)
from providers.types import Job
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = "test-nanogpt-key"




def png(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    Image.new("RGB", (64, 36), (200, 80, 20)).save(path)
    return path


async def test_text_to_video_kling_wire_and_upfront_cost(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        req = request_for("nanogpt", duration=10, negative_prompt="blur")
        clip = await run_job(p, req, tmp_path / "k.mp4")
    assert_mp4(clip.path)
    [job] = emu.jobs("nanogpt")
    assert job.request == {"model": "kling-video-v2", "prompt": req.prompt, "duration": "10",
                           "aspect_ratio": "16:9", "negative_prompt": "blur", "seed": 7}
    assert job.data["auth_header"] == "x-api-key"  # the documented header, not Bearer
    # the submit's `cost` (paymentSource USD) is the actual charge
    assert clip.cost_usd == pytest.approx(job.price_usd) == pytest.approx(2.8)


async def test_veo_duration_has_an_s(emu, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        await run_job(p, request_for("nanogpt", model="veo2-video", duration=6),
                      tmp_path / "v.mp4")
    assert emu.jobs("nanogpt")[0].request["duration"] == "6s"


async def test_image_to_video_inline_data_url(emu, tmp_path: Path) -> None:
    image = png(tmp_path)
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        clip = await run_job(p, request_for("nanogpt", model="kling-v21-standard", image=image),
                             tmp_path / "i.mp4")
    assert_mp4(clip.path)
    sent = emu.jobs("nanogpt")[0].request
    prefix = "data:image/png;base64,"
    assert sent["imageDataUrl"].startswith(prefix) and "imageUrl" not in sent
    assert base64.b64decode(sent["imageDataUrl"][len(prefix):]) == image.read_bytes()


async def test_image_url_passes_through_and_seedance_drops_aspect(emu, tmp_path: Path) -> None:
    url = "https://assets.example.com/ref.jpg"
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        await run_job(p, request_for("nanogpt", model="seedance-video", image=url,
                                     resolution="1080p"), tmp_path / "s.mp4")
    sent = emu.jobs("nanogpt")[0].request
    assert sent["imageUrl"] == url and "imageDataUrl" not in sent
    assert "aspect_ratio" not in sent  # Seedance takes aspect_ratio for text-to-video only
    assert sent["resolution"] == "1080p" and sent["duration"] == "5"


async def test_inline_image_over_4mb_is_refused_before_paying(emu, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (4 * 1024 * 1024 + 1))
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("nanogpt", model="kling-v21-pro", image=big))
    assert "4 MB" in str(info.value)
    assert emu.stats("nanogpt")["requests"] == 0


async def test_poll_needs_the_model_slug(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        job = await p.submit(request_for("nanogpt"))
        assert job.data["model"] == "kling-video-v2" and job.data["payment_source"] == "USD"
        wrong = Job(provider="nanogpt", job_id=job.job_id, data={"model": "veo2-video"})
        with pytest.raises(InvalidRequestError) as info:
            await p.poll(wrong)
        assert "modelSlug" in str(info.value)
        assert (await p.poll(job)).state in ("queued", "running")


async def test_xno_cost_is_not_reported_as_usd(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        job = await p.submit(request_for("nanogpt"))
        job.data["payment_source"] = "XNO"
        done = await p.wait(job)
    assert done.state == "succeeded" and done.cost_usd is None


async def test_kling_21_without_image_is_invalid(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("nanogpt", model="kling-v21-standard"))
    assert "requires an input image" in str(info.value)


async def test_failed_run_stays_charged(emu) -> None:
    emu.inject("nanogpt", "job", "fail", message="Upstream provider error")
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        job = await p.submit(request_for("nanogpt"))
        done = await p.wait(job)
    assert isinstance(done.error, JobFailedError)
    assert "nanogpt" in str(done.error) and job.job_id in str(done.error)
    # deducted at submit; a refund is not documented, so the cost is still reported
    assert done.cost_usd == pytest.approx(1.4)
    assert emu.stats("nanogpt")["charged_usd"] == pytest.approx(1.4)


async def test_nsfw_failure_is_content_policy(emu) -> None:
    emu.inject("nanogpt", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        done = await p.wait(await p.submit(request_for("nanogpt")))
    assert isinstance(done.error, ContentPolicyError)
    assert "Content flagged as inappropriate" in str(done.error)


async def test_submit_content_policy_shape(emu) -> None:
    emu.inject("nanogpt", "submit", "http", status=400,
               message="Your prompt was blocked due to safety concerns. Please modify your prompt.")
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        with pytest.raises(ContentPolicyError) as info:
            await p.submit(request_for("nanogpt"))
    assert "CONTENT_POLICY_VIOLATION" in str(info.value)


async def test_insufficient_balance(emu) -> None:
    emu.inject("nanogpt", "submit", "http", status=402, message="Insufficient balance")
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("nanogpt"))
    assert "Insufficient balance" in str(info.value) and KEY not in str(info.value)
    assert emu.stats("nanogpt")["requests"] == 1


async def test_bad_key_is_auth_error_without_the_key(emu) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("nanogpt", emu, client, key="nano-wrong-9876")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("nanogpt"))
    assert "nanogpt" in str(info.value) and "nano-wrong-9876" not in str(info.value)
