"""fal.ai adapter against the emulator over real sockets: wire format and fal's traps."""

from __future__ import annotations

from pathlib import Path

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

KEY = FAKE_KEYS["fal"]




@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    Image.new("RGB", (64, 36), (200, 80, 20)).save(path)
    return path


async def test_text_to_video_wire_and_download(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        req = request_for("fal", model="kling-2.5-turbo-pro", duration=5,
                          negative_prompt="blur")
        clip = await run_job(p, req, tmp_path / "a.mp4")
    assert_mp4(clip.path)
    (job,) = emu.jobs("fal")
    assert job.data["path"] == "/fal/fal-ai/kling-video/v2.5-turbo/pro/text-to-video"
    assert job.data["headers"]["authorization"] == f"Key {KEY}"
    assert job.request == {"prompt": req.prompt, "duration": "5", "aspect_ratio": "16:9",
                           "negative_prompt": "blur"}  # Kling takes no seed
    assert clip.job_id == job.id and clip.cost_usd is None  # fal reports no cost
    stats = emu.stats("fal")
    assert stats["results"] == 1 and stats["charged_usd"] == pytest.approx(0.35)


async def test_image_to_video_local_file_is_a_data_uri(emu, tmp_path, png):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        req = request_for("fal", model="kling-2.5-turbo-pro", image=png, duration=10)
        clip = await run_job(p, req, tmp_path / "b.mp4")
    assert_mp4(clip.path)
    (job,) = emu.jobs("fal")
    assert job.data["path"] == "/fal/fal-ai/kling-video/v2.5-turbo/pro/image-to-video"
    assert job.request["image_url"].startswith("data:image/png;base64,")
    assert "aspect_ratio" not in job.request  # Kling image-to-video takes the image's
    assert job.request["duration"] == "10"


async def test_image_url_passes_through_in_the_models_field(emu, tmp_path):
    url = "https://example.com/start.jpg"
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        await p.submit(request_for("fal", model="kling-3-pro", image=url, duration=7))
    (job,) = emu.jobs("fal")
    assert job.data["path"].endswith("/kling-video/v3/pro/image-to-video")
    assert job.request["start_image_url"] == url  # Kling 3 Pro's field, not image_url
    assert job.request["generate_audio"] is False  # the catalog entry's fixed params
    assert job.request["duration"] == "7"


@pytest.mark.parametrize(("model", "field", "value"), [
    ("kling-2.5-turbo-pro", "duration", "5"),
    ("kling-3-pro", "duration", "3"),
    ("veo-3.1", "duration", "4s"),
    ("veo-3.1-fast", "duration", "4s"),
    ("wan-2.2-a14b", "num_frames", 33),  # 2 s at 16 fps
    ("wan-2.7", "duration", 2),
])
async def test_each_catalog_model_spells_duration_its_way(emu, model, field, value):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        await p.submit(request_for("fal", model=model))  # the emulator 422s a wrong type
    (job,) = emu.jobs("fal")
    got = job.request[field]
    assert got == value and type(got) is type(value)


async def test_every_catalog_model_is_known_to_the_emulator(emu):
    for key, info in load_catalog()["fal"].models.items():
        assert emu.model_info("fal", info.vendor_model) is not None, key
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        for key in load_catalog()["fal"].models:
            await p.submit(request_for("fal", model=key, image="https://e.com/i.png"))
    assert emu.stats("fal")["unknown_models"] == []


async def test_followup_urls_come_from_the_submit_answer(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        job = await p.submit(request_for("fal", model="veo-3.1"))
        root = f"{emu.base_url('fal')}/fal-ai/veo3.1/requests/{job.job_id}"
        assert job.data["status_url"] == f"{root}/status"
        # an endpoint path in a follow-up URL is not found (fal names owner/app only)
        job2 = await p.submit(request_for("fal", model="kling-3-pro"))
        assert "v3/pro" not in job2.data["status_url"]
        by_hand = (f"{emu.base_url('fal')}/fal-ai/kling-video/v3/pro/text-to-video"
                   f"/requests/{job2.job_id}/status")
        resp = await client.get(by_hand, headers={"Authorization": f"Key {KEY}"})
        assert resp.status_code == 404


async def test_status_is_202_while_running_and_200_when_complete(emu):
    emu.configure(latency=0.6)
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        job = await p.submit(request_for("fal"))
        headers = {"Authorization": f"Key {KEY}"}
        early = await client.get(job.data["status_url"], headers=headers)
        assert early.status_code == 202 and early.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
        assert (await p.poll(job)).state in ("queued", "running")
        done = await p.wait(job)
        assert done.state == "succeeded" and done.video_url
        late = await client.get(job.data["status_url"], headers=headers)
        assert late.status_code == 200 and late.json()["status"] == "COMPLETED"


async def test_completed_with_error_is_a_failure_from_the_result(emu, tmp_path):
    emu.inject("fal", "job", "fail", message="CUDA out of memory on the runner")
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        job = await p.submit(request_for("fal"))
        done = await p.wait(job)
    assert done.state == "failed"
    err = done.error
    assert isinstance(err, JobFailedError)
    assert "CUDA out of memory" in str(err) and "runner_server_error" in str(err)
    assert err.job_id == job.job_id and "fal" in str(err) and job.job_id in str(err)
    assert KEY not in str(err)
    stats = emu.stats("fal")
    assert stats["results"] == 1  # the result's 500 is the model's answer: not retried
    assert stats["charged_usd"] == 0  # fal bills successes only


async def test_content_policy_comes_from_the_typed_model_error(emu, tmp_path):
    emu.inject("fal", "job", "policy", message="Prompt flagged by the safety checker")
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        with pytest.raises(ContentPolicyError) as info:
            await run_job(p, request_for("fal"), tmp_path / "c.mp4")
    assert "safety checker" in str(info.value) and info.value.job_id
    assert emu.stats("fal")["downloads"] == 0


async def test_completed_without_error_but_result_refused_is_a_failure(emu, tmp_path):
    emu.inject("fal", "result", "http", status=422, message="Generated video failed checks")
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        with pytest.raises(JobFailedError) as info:
            await run_job(p, request_for("fal"), tmp_path / "d.mp4")
    assert "failed checks" in str(info.value)


async def test_cancel_is_a_put_to_cancel_url(emu):
    emu.inject("fal", "job", "never")
    quick = PollSettings(first=0.05, max=0.1, deadline=0.4)
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client, poll=quick)
        job = await p.submit(request_for("fal"))
        with pytest.raises(JobTimeoutError):
            await p.wait(job)
        assert await p.cancel(job) is True
        assert (await p.poll(job)).state == "canceled"
        assert await p.cancel(job) is False  # ALREADY_COMPLETED
    stats = emu.stats("fal")
    assert stats["cancels"] == 2 and stats["charged_usd"] == 0


async def test_bad_key_is_an_auth_error_without_the_key(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client, key="wrong-fal-key-0123")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("fal"))
    assert "wrong-fal-key-0123" not in str(info.value) and "fal" in str(info.value)
    assert emu.stats("fal")["submits"] == 0


async def test_locked_user_is_a_credit_error_and_not_retried(emu):
    emu.inject("fal", "submit", "http", status=403,
               message="User is locked. Reason: Exhausted balance. Top up your balance at "
                       "fal.ai/dashboard/billing.")
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("fal"))
    assert "Exhausted balance" in str(info.value)
    assert emu.stats("fal")["requests"] == 1


async def test_model_validation_422_names_the_field(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        with pytest.raises(InvalidRequestError) as info:  # params override: an int duration
            await p.submit(request_for("fal", params={"duration": 5}))
    assert "duration" in str(info.value) and info.value.status_code == 422
    assert emu.stats("fal")["submits"] == 0


async def test_expired_media_url_is_refreshed_from_the_result(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        job = await p.submit(request_for("fal"))
        done = await p.wait(job)
        emu.inject("fal", "download", "expired")
        clip = await p.fetch(job, done, tmp_path / "e.mp4")
    assert_mp4(clip.path)
    assert emu.stats("fal")["results"] == 2
