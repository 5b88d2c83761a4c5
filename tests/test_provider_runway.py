"""RunwayProvider against the emulator's Runway API over real sockets."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from providers import runway as runway_mod
from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
)
from tests.emulator.core import FAKE_KEYS, Emulator
from tests.emulator.vendors import runway as runway_emu
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = FAKE_KEYS["runway"]




def png(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    Image.new("RGB", (64, 36), (200, 80, 40)).save(path)
    return path


def assert_clean(exc: BaseException, job_id: str | None = None) -> None:
    text = str(exc)
    assert "runway" in text and KEY not in text
    if job_id:
        assert job_id in text


async def test_text_to_video_wire_format_and_actual_cost(emu: Emulator, tmp_path: Path) -> None:
    emu.configure(price_multiplier={"runway": 1.5})  # the vendor's bill differs from our estimate
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        req = request_for("runway", duration=5, negative_prompt="blurry")
        clip = await run_job(p, req, tmp_path / "t2v.mp4")
    assert_mp4(clip.path)
    [job] = emu.jobs("runway")
    assert job.data["endpoint"] == "/runway/v1/text_to_video"
    assert job.data["headers"]["authorization"] == f"Bearer {KEY}"
    assert job.data["headers"]["x-runway-version"] == "2024-11-06"
    # camelCase, "W:H" pixel ratio, int duration, seed (gen4.5 takes one), no negativePrompt
    assert job.request == {"model": "gen4.5", "promptText": req.prompt, "ratio": "1280:720",
                           "duration": 5, "seed": 7}
    assert type(job.request["duration"]) is int
    # 12 credits/s x 5 s x 1.5 = 90 credits = $0.90, reported by the task itself
    assert clip.cost_usd == pytest.approx(0.90)
    assert emu.stats("runway")["charged_usd"] == pytest.approx(0.90)


async def test_veo_fields_ratio_and_no_seed(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        req = request_for("runway", model="veo3.1", duration=8, resolution="1080p",
                          aspect_ratio="9:16", negative_prompt="text", params={"audio": False})
        job = await p.submit(req)
    emu_job = emu.get_job("runway", job.job_id)
    assert emu_job is not None
    assert emu_job.request == {"model": "veo3.1", "promptText": req.prompt, "ratio": "1080:1920",
                               "duration": 8, "negativePrompt": "text", "audio": False}
    assert job.data["estimated_credits"] == 160  # 20 credits/s without audio (40 with)


async def test_image_to_video_local_file_as_data_uri(emu: Emulator, tmp_path: Path) -> None:
    image = png(tmp_path)
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        clip = await run_job(p, request_for("runway", image=image), tmp_path / "i2v.mp4")
    assert_mp4(clip.path)
    [job] = emu.jobs("runway")
    assert job.data["endpoint"] == "/runway/v1/image_to_video"
    uri = job.request["promptImage"]
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == image.read_bytes()


async def test_image_urls_pass_through_and_http_is_refused(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        url = "https://cdn.example.com/frame.jpg"
        job = await p.submit(request_for("runway", model="gen4-turbo", image=url))
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("runway", image="http://cdn.example.com/frame.jpg"))
    assert emu.get_job("runway", job.job_id).request["promptImage"] == url  # type: ignore[union-attr]
    assert "promptImage" in str(info.value) and "Only HTTPS URLs" in str(info.value)


async def test_large_local_image_goes_through_an_ephemeral_upload(emu: Emulator,
                                                                   tmp_path: Path) -> None:
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG" + os.urandom(600 * 1024))  # past the 256 KiB inline size
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        await p.submit(request_for("runway", image=big))
    [job] = emu.jobs("runway")
    assert job.request["promptImage"].startswith("runway://")
    assert job.data["images"]["promptImage[0]"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert emu.stats("runway")["uploads"] == 1


async def test_version_header_is_required(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"model": "gen4.5", "promptText": "x", "ratio": "1280:720", "duration": 5}
    async with httpx.AsyncClient() as client:
        raw = await client.post(f"{emu.base_url('runway')}/v1/text_to_video", json=body,
                                headers={"Authorization": f"Bearer {KEY}"})
        assert raw.status_code == 400 and "X-Runway-Version" in raw.json()["error"]
        monkeypatch.setattr(runway_mod, "API_VERSION", "2024-09-13")
        p = make_provider("runway", emu, client)
        with pytest.raises(InvalidRequestError, match="X-Runway-Version"):
            await p.submit(request_for("runway"))
    assert emu.stats("runway")["submits"] == 0


async def test_throttled_is_queued_and_cancel_stops_billing(emu: Emulator) -> None:
    emu.configure(latency=5.0)
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        jobs = [await p.submit(request_for("runway", shot_id=f"s{i}"))
                for i in range(runway_emu.THROTTLE_AT + 1)]
        first, last = await p.poll(jobs[0]), await p.poll(jobs[-1])
        assert (first.state, first.raw["status"]) == ("queued", "PENDING")
        assert (last.state, last.raw["status"]) == ("queued", "THROTTLED")
        assert all([await p.cancel(job) for job in jobs])
        after = await p.poll(jobs[0])
    assert after.state == "canceled" and isinstance(after.error, JobFailedError)
    assert after.cost_usd == 0
    stats = emu.stats("runway")
    assert stats["cancels"] == len(jobs) and stats["charged_usd"] == 0


async def test_safety_failure_is_content_policy(emu: Emulator, tmp_path: Path) -> None:
    emu.inject("runway", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        job = await p.submit(request_for("runway"))
        done = await p.wait(job)
    assert done.state == "failed" and isinstance(done.error, ContentPolicyError)
    assert "SAFETY.INPUT.TEXT" in str(done.error) and done.cost_usd == 0
    assert_clean(done.error, job.job_id)
    assert emu.stats("runway")["charged_usd"] == 0


async def test_internal_failure_is_job_failed(emu: Emulator, tmp_path: Path) -> None:
    emu.inject("runway", "job", "fail", message="An unexpected error occurred.")
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        with pytest.raises(JobFailedError) as info:
            await run_job(p, request_for("runway"), tmp_path / "x.mp4")
    assert "INTERNAL.BAD_OUTPUT" in str(info.value)
    assert_clean(info.value, emu.jobs("runway")[0].id)


async def test_bad_key_is_auth_error(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client, key="test-wrong-runway-key")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("runway"))
    assert "test-wrong-runway-key" not in str(info.value) and "runway" in str(info.value)
    assert emu.stats("runway")["submits"] == 0


async def test_not_enough_credits_is_insufficient_credit(emu: Emulator) -> None:
    emu.inject("runway", "submit", "http", status=400,
               message="You do not have enough credits to run this task.")
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("runway"))
    assert_clean(info.value)
    assert emu.stats("runway")["requests"] == 1  # not retried


async def test_expired_output_url_is_refreshed_by_polling_again(emu: Emulator,
                                                                 tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        job = await p.submit(request_for("runway"))
        done = await p.wait(job)
        polls = emu.stats("runway")["polls"]
        emu.inject("runway", "download", "expired")
        clip = await p.fetch(job, done, tmp_path / "late.mp4")
    assert_mp4(clip.path)
    assert emu.stats("runway")["polls"] == polls + 1
    assert clip.cost_usd == done.cost_usd


async def test_params_pass_through_and_unknown_fields_are_refused(emu: Emulator) -> None:
    moderation = {"publicFigureThreshold": "low"}
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        job = await p.submit(request_for("runway", params={"contentModeration": moderation}))
        with pytest.raises(InvalidRequestError, match="Unrecognized key"):
            await p.submit(request_for("runway", params={"fps": 30}))
    assert emu.get_job("runway", job.job_id).request["contentModeration"] == moderation  # type: ignore[union-attr]


async def test_cancel_leaves_a_finished_task_alone(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        job = await p.submit(request_for("runway"))
        await p.wait(job)
        assert await p.cancel(job) is False
        again = await p.poll(job)  # DELETE would have removed it (and its paid output)
    assert again.state == "succeeded" and again.video_url
    assert emu.stats("runway")["cancels"] == 0
