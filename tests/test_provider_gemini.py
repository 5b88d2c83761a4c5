"""GeminiProvider (Veo long-running operations) against the emulator over real sockets."""

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
    RateLimitedError,
)
from providers.types import Job, Poll
from tests.emulator.core import FAKE_KEYS, Emulator
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

KEY = FAKE_KEYS["gemini"]




def png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (20, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def assert_clean(exc: BaseException, job_id: str | None = None) -> None:
    text = str(exc)
    assert "gemini" in text and KEY not in text
    if job_id:
        assert job_id in text


async def test_text_to_video_wire_format(emu: Emulator, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        req = request_for("gemini", duration=4, negative_prompt="text overlays")
        job = await p.submit(req)
        first = await p.poll(job)
        done = await p.wait(job)
        clip = await p.fetch(job, done, tmp_path / "veo.mp4")
    assert_mp4(clip.path)
    # the operation has no `done` at all until it is finished
    assert first.state == "running" and "done" not in first.raw
    [emu_job] = emu.jobs("gemini")
    assert emu_job.model == "veo-3.1-fast-generate-001"
    assert job.data["operation"] == f"models/veo-3.1-fast-generate-001/operations/{job.job_id}"
    # no seed: the Developer API refuses it, even though the shot has one
    assert emu_job.request == {
        "instances": [{"prompt": req.prompt}],
        "parameters": {"aspectRatio": "16:9", "durationSeconds": 4, "resolution": "720p",
                       "sampleCount": 1, "negativePrompt": "text overlays"},
    }
    headers, query = emu_job.data["headers"], emu_job.data["query"]
    assert headers["x-goog-api-key"] == KEY and "authorization" not in headers
    assert KEY not in query
    stats = emu.stats("gemini")
    assert stats["downloads"] == 1 and stats["auth_failures"] == 0  # the key went with the GET
    assert clip.cost_usd is None  # Google reports no cost: the estimate stands
    # Veo 3.1 Fast at 720p: $0.10/s since Google's 2026-04-07 cut (Gemini API pricing)
    assert stats["charged_usd"] == pytest.approx(0.40)


async def test_image_to_video_inlines_local_and_url_images(emu: Emulator, tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(png_bytes())
    seen: list[httpx.Request] = []

    def image_host(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"\xff\xd8jpeg-bytes",
                              headers={"content-type": "image/jpeg"})

    # the third-party image host is mocked; the vendor is the real emulator socket
    mounts = {"https://images.example.com": httpx.MockTransport(image_host)}
    async with httpx.AsyncClient(mounts=mounts) as client:
        p = make_provider("gemini", emu, client)
        clip = await run_job(p, request_for("gemini", image=image), tmp_path / "i2v.mp4")
        await p.submit(request_for("gemini", image="https://images.example.com/a.jpg"))
    assert_mp4(clip.path)
    local, remote = (j.request["instances"][0]["image"] for j in emu.jobs("gemini"))
    assert local == {"bytesBase64Encoded": base64.b64encode(image.read_bytes()).decode(),
                     "mimeType": "image/png"}
    assert remote == {"bytesBase64Encoded": base64.b64encode(b"\xff\xd8jpeg-bytes").decode(),
                      "mimeType": "image/jpeg"}
    assert "x-goog-api-key" not in seen[0].headers  # the key never leaves for other hosts


async def test_rai_filtered_operation_is_content_policy_not_success(emu: Emulator,
                                                                   tmp_path: Path) -> None:
    emu.inject("gemini", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        with pytest.raises(ContentPolicyError) as info:
            await run_job(p, request_for("gemini"), tmp_path / "never.mp4")
    assert "You will not be charged" in str(info.value)
    assert_clean(info.value, emu.jobs("gemini")[0].id)
    assert not (tmp_path / "never.mp4").exists()
    stats = emu.stats("gemini")
    assert stats["downloads"] == 0 and stats["charged_usd"] == 0


async def test_operation_error_is_job_failed(emu: Emulator, tmp_path: Path) -> None:
    emu.inject("gemini", "job", "fail", message="Internal error encountered.")
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        with pytest.raises(JobFailedError, match=r"code 13.*Internal error") as info:
            await run_job(p, request_for("gemini"), tmp_path / "x.mp4")
    assert_clean(info.value, emu.jobs("gemini")[0].id)


async def test_bad_and_missing_keys_are_auth_errors(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        wrong = make_provider("gemini", emu, client, key="test-wrong-gemini-key")
        with pytest.raises(AuthError, match="API_KEY_INVALID") as info:  # a 400, not a 401
            await wrong.submit(request_for("gemini"))
        assert info.value.status_code == 400
        assert "test-wrong-gemini-key" not in str(info.value)
        missing = make_provider("gemini", emu, client, key="")
        with pytest.raises(AuthError, match="PERMISSION_DENIED"):
            await missing.submit(request_for("gemini"))
    assert emu.stats("gemini")["submits"] == 0


async def test_video_download_needs_the_key(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        done = await p.wait(await p.submit(request_for("gemini")))
        assert done.video_url and ":download" in done.video_url
        anonymous = await client.get(done.video_url)
    assert anonymous.status_code == 403
    assert anonymous.json()["error"]["status"] == "PERMISSION_DENIED"


async def test_key_is_not_sent_to_foreign_video_hosts(emu: Emulator, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def storage(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"\x00\x00\x00\x18ftypmp42",
                              headers={"content-type": "video/mp4"})

    mounts = {"https://storage.example.com": httpx.MockTransport(storage)}
    async with httpx.AsyncClient(mounts=mounts) as client:
        p = make_provider("gemini", emu, client)
        done = Poll(state="succeeded", video_url="https://storage.example.com/v.mp4")
        await p.fetch(Job("gemini", "op1", {}), done, tmp_path / "v.mp4")
    assert "x-goog-api-key" not in seen[0].headers


async def test_rate_limit_delay_comes_from_retry_info(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        job = await p.submit(request_for("gemini"))
        emu.inject("gemini", "poll", "http", status=429, retry_after=0.05, times=10,
                   message="Resource has been exhausted (e.g. check quota).")
        with pytest.raises(RateLimitedError, match="RESOURCE_EXHAUSTED") as info:
            await p.poll(job)
    assert info.value.retry_after == pytest.approx(0.05)  # from the body: no Retry-After header


async def test_prepaid_credit_exhaustion_is_not_retried(emu: Emulator) -> None:
    emu.inject("gemini", "submit", "http", status=429,
               message="Your prepayment credits are depleted. Please go to AI Studio to manage "
                       "your project and billing.")
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("gemini"))
    assert_clean(info.value)
    assert emu.stats("gemini")["requests"] == 1


async def test_params_pass_through_and_vertex_only_fields_are_dropped(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        job = await p.submit(request_for("gemini", model="veo-3.1", duration=8,
                                         resolution="1080p", aspect_ratio="9:16",
                                         params={"personGeneration": "allow_adult", "seed": 3}))
        with pytest.raises(InvalidRequestError, match="Unknown name"):
            await p.submit(request_for("gemini", params={"quality": "max"}))
    params = emu.get_job("gemini", job.job_id).request["parameters"]  # type: ignore[union-attr]
    assert params == {"aspectRatio": "9:16", "durationSeconds": 8, "resolution": "1080p",
                      "sampleCount": 1, "personGeneration": "allow_adult"}


async def test_high_resolution_needs_eight_seconds(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        with pytest.raises(InvalidRequestError, match="8 s"):
            await p.submit(request_for("gemini", duration=4, resolution="4k"))
    assert emu.stats("gemini")["requests"] == 0


async def test_shut_down_preview_model_is_invalid_request(emu: Emulator) -> None:
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        with pytest.raises(InvalidRequestError, match="no longer available"):
            await p.submit(request_for("gemini", model="veo-3.1-fast-preview"))
    assert emu.stats("gemini")["submits"] == 0
