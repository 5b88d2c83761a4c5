"""Hugging Face router adapter (fal-ai route) against the emulator over real sockets."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image

from providers.base import PollSettings
from providers.catalog import load_catalog
from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
)
from tests.emulator.core import FAKE_KEYS
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = FAKE_KEYS["huggingface"]
QUEUE = "?_subdomain=queue"




async def test_text_to_video_through_the_router(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        req = request_for("huggingface", duration=5, resolution="720p",
                          negative_prompt="blurry, low quality")
        clip = await run_job(p, req, tmp_path / "a.mp4")
    assert_mp4(clip.path)
    (job,) = emu.jobs("huggingface")
    assert job.data["path"] == "/huggingface/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video"
    assert job.data["query"] == "_subdomain=queue"
    assert job.data["headers"]["authorization"] == f"Bearer {KEY}"
    assert job.request == {"prompt": req.prompt, "num_frames": 81, "aspect_ratio": "16:9",
                           "resolution": "720p", "seed": 7,
                           "negative_prompt": "blurry, low quality"}  # a string, not a list
    stats = emu.stats("huggingface")
    # fal's price, no markup: $0.08 per video second at 720p, counted as 81 frames / 16 fps
    assert stats["charged_usd"] == pytest.approx(0.08 * 81 / 16)
    assert emu.stats("fal")["requests"] == 0  # nothing went to fal directly


async def test_polls_keep_the_router_prefix_not_fals_urls(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        job = await p.submit(request_for("huggingface"))
        done = await p.wait(job)
    assert done.state == "succeeded"
    # fal's answer named https://queue.fal.run/...; the adapter kept base + /fal-ai, and the
    # base's own path (/huggingface here, a proxy prefix in real life) is not dropped
    root = f"{emu.base_url('huggingface')}/fal-ai/fal-ai/wan/requests/{job.job_id}"
    assert job.data["status_url"] == f"{root}/status{QUEUE}"
    assert job.data["response_url"] == f"{root}{QUEUE}"
    assert job.data["cancel_url"] == f"{root}/cancel{QUEUE}"
    stats = emu.stats("huggingface")
    assert stats["polls"] >= 1 and stats["results"] == 1


async def test_image_to_video_sends_a_data_uri(emu, tmp_path):
    png = tmp_path / "ref.png"
    Image.new("RGB", (48, 48), (10, 120, 200)).save(png)
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        clip = await run_job(p, request_for("huggingface", image=png), tmp_path / "b.mp4")
    assert_mp4(clip.path)
    (job,) = emu.jobs("huggingface")
    assert job.data["path"].endswith("/fal-ai/fal-ai/wan/v2.2-a14b/image-to-video")
    assert job.request["image_url"].startswith("data:image/png;base64,")


async def test_every_catalog_model_routes_and_prices(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        for key, info in load_catalog()["huggingface"].models.items():
            assert info.vendor_model.startswith("fal-ai:"), key
            await p.submit(request_for("huggingface", model=key))
    stats = emu.stats("huggingface")
    assert stats["unknown_models"] == [] and stats["submits"] == 3


async def test_result_http_status_is_checked(emu, tmp_path):
    # the SDK reads the result without looking at its status; a 4xx must be a failure
    emu.inject("huggingface", "result", "http", status=422, message="video failed checks")
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        with pytest.raises(JobFailedError) as info:
            await run_job(p, request_for("huggingface"), tmp_path / "c.mp4")
    assert "failed checks" in str(info.value) and "huggingface" in str(info.value)
    assert emu.stats("huggingface")["downloads"] == 0


async def test_transient_poll_and_result_errors_are_retried(emu, tmp_path):
    emu.inject("huggingface", "poll", "http", status=503, times=2)
    emu.inject("huggingface", "result", "http", status=503)
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        clip = await run_job(p, request_for("huggingface"), tmp_path / "d.mp4")
    assert_mp4(clip.path)
    stats = emu.stats("huggingface")  # injected answers never reach the handlers' counters
    assert stats["errors_injected"] == 3 and stats["results"] == 1


async def test_completed_with_error_fails_and_policy_is_classified(emu):
    emu.inject("huggingface", "job", "fail", message="runner crashed")
    emu.inject("huggingface", "job", "policy", message="NSFW content detected")
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        failed = await p.wait(await p.submit(request_for("huggingface")))
        flagged = await p.wait(await p.submit(request_for("huggingface")))
    assert isinstance(failed.error, JobFailedError) and "runner crashed" in str(failed.error)
    assert isinstance(flagged.error, ContentPolicyError)
    assert failed.error.job_id and KEY not in str(failed.error)
    assert emu.stats("huggingface")["charged_usd"] == 0


async def test_polling_has_a_deadline_and_the_job_can_be_canceled(emu):
    emu.inject("huggingface", "job", "never")
    quick = PollSettings(first=0.05, max=0.1, deadline=0.4)
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client, poll=quick)
        job = await p.submit(request_for("huggingface"))
        with pytest.raises(JobTimeoutError) as info:
            await p.wait(job)
        assert info.value.job_id == job.job_id
        assert await p.cancel(job) is True
        assert (await p.poll(job)).state == "canceled"
    assert emu.stats("huggingface")["charged_usd"] == 0


async def test_only_the_fal_route_is_spoken(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("huggingface", emu, client)
        for bad in ("replicate:tencent/hunyuan-video", "fal-ai/ltx-video"):
            with pytest.raises(InvalidRequestError):
                await p.submit(request_for("huggingface", vendor_model=bad))
    assert emu.stats("huggingface")["requests"] == 0


async def test_router_auth_and_credit_errors(emu):
    async with httpx.AsyncClient() as client:
        bad = make_provider("huggingface", emu, client, key="hf_wrongtoken0123")
        with pytest.raises(AuthError) as info:
            await bad.submit(request_for("huggingface"))
        assert "hf_wrongtoken0123" not in str(info.value)
        emu.inject("huggingface", "submit", "http", status=402,
                   message="You have exceeded your monthly included credits for Inference "
                           "Providers. Subscribe to PRO to get 20x more monthly included credits.")
        p = make_provider("huggingface", emu, client)
        with pytest.raises(InsufficientCreditError) as info2:
            await p.submit(request_for("huggingface"))
    assert "monthly included credits" in str(info2.value)
    assert emu.stats("huggingface")["submits"] == 0
