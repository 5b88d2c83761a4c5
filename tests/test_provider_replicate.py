"""Replicate adapter against the emulated predictions API, over real sockets."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from providers.base import PollSettings
from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
)
from tests.emulator.core import FAKE_KEYS
from tests.emulator.vendors import replicate as emu_replicate
from tests.provider_kit import make_provider, request_for, run_job

KEY = FAKE_KEYS["replicate"]

# Replicate's API schema: data URLs only for files up to 256 kB, a URL (files API) above
DATA_URL_MAX = 256 * 1024


def video_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return float(container.duration / av.time_base)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    Image.new("RGB", (64, 36), (200, 80, 20)).save(path)
    return path


async def test_text_to_video_wire_and_real_mp4(emu, tmp_path):
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        req = request_for("replicate", negative_prompt="blurry", duration=6.0)
        clip = await run_job(p, req, tmp_path / "out.mp4")
    assert video_seconds(clip.path) == pytest.approx(6.0, abs=0.2)
    assert clip.cost_usd is None  # Replicate reports no cost: the estimate stands
    (job,) = emu.jobs("replicate")
    assert job.data["path"] == "/replicate/v1/models/google/veo-3.1-fast/predictions"
    assert job.data["headers"]["cancel-after"] == "20s"  # our deadline, server-side
    assert job.data["headers"]["content-type"] == "application/json"
    assert set(job.request) == {"input"}
    inputs = job.request["input"]
    assert inputs == {"prompt": req.prompt, "duration": 6, "aspect_ratio": "16:9",
                      "resolution": "720p", "negative_prompt": "blurry", "seed": 7,
                      "generate_audio": False}  # catalog's fixed params ride along
    assert type(inputs["duration"]) is int and type(inputs["seed"]) is int
    assert emu.stats("replicate")["charged_usd"] == pytest.approx(0.6)


async def test_local_image_goes_inline_as_data_uri(emu, tmp_path, png):
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        await run_job(p, request_for("replicate", image=png), tmp_path / "out.mp4")
    value = emu.jobs("replicate")[0].request["input"]["image"]
    assert value.startswith("data:image/png;base64,")
    assert base64.b64decode(value.split(",", 1)[1]) == png.read_bytes()
    assert emu.stats("replicate")["uploads"] == 0


@pytest.mark.parametrize(("model", "field"), [("kling-2.5-turbo-pro", "start_image"),
                                               ("hailuo-02", "first_frame_image")])
async def test_image_field_is_per_model_and_urls_pass_through(emu, tmp_path, model, field):
    url = "http://images.example.test/frame.png"
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        await run_job(p, request_for("replicate", model=model, image=url), tmp_path / "o.mp4")
    (job,) = emu.jobs("replicate")
    assert job.request["input"][field] == url
    assert "image" not in job.request["input"]
    if model == "hailuo-02":  # no aspect_ratio, seed or negative_prompt in its schema
        assert set(job.request["input"]) == {"prompt", "duration", "resolution", field}


async def test_large_local_image_is_uploaded_through_files_api(emu, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(DATA_URL_MAX + 1000))
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        await run_job(p, request_for("replicate", image=big), tmp_path / "out.mp4")
    value = emu.jobs("replicate")[0].request["input"]["image"]
    prefix = f"{emu.base_url('replicate')}/v1/files/"
    assert value.startswith(prefix)
    stored = emu_replicate.uploaded(value.removeprefix(prefix))
    assert stored is not None
    assert stored["size"] == big.stat().st_size and stored["content_type"] == "image/png"
    assert stored["name"] == "big.png"
    assert emu.stats("replicate")["uploads"] == 1


async def test_pinned_version_uses_predictions_endpoint_and_list_output(emu, tmp_path):
    version = next(v for v, m in emu_replicate.VERSIONS.items() if m == "google/veo-3.1-fast")
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        req = request_for("replicate", vendor_model=f"google/veo-3.1-fast:{version}")
        job = await p.submit(req)
        done = await p.wait(job)
        clip = await p.fetch(job, done, tmp_path / "out.mp4")
    (emu_job,) = emu.jobs("replicate")
    assert emu_job.data["path"] == "/replicate/v1/predictions"
    assert emu_job.request["version"] == version and "prompt" in emu_job.request["input"]
    assert isinstance(done.raw, dict) and done.video_url
    assert video_seconds(clip.path) > 0


async def test_progress_is_read_from_logs_while_processing(emu):
    emu.configure(latency=1.0)
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        job = await p.submit(request_for("replicate"))
        first = await p.poll(job)
        emu.advance(0.5)  # half-way through on the vendor's clock
        mid = await p.poll(job)
        assert await p.cancel(job)
    assert first.state == "queued"  # "starting"
    assert mid.state == "running" and mid.progress is not None and 0.25 < mid.progress < 0.85


async def test_cancel_stops_the_job_and_it_is_not_charged(emu):
    emu.configure(latency=5.0)
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        job = await p.submit(request_for("replicate"))
        assert p.supports_cancel and await p.cancel(job)
        status = await p.poll(job)
    assert status.state == "canceled" and isinstance(status.error, JobFailedError)
    stats = emu.stats("replicate")
    assert stats["cancels"] == 1 and stats["charged_usd"] == 0


async def test_deadline_passed_before_start_is_aborted_not_charged(emu):
    emu.configure(latency=10.0)  # "starting" for the first 2 s
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client, poll=PollSettings(deadline=1.0))
        job = await p.submit(request_for("replicate"))
        emu.advance(1.1)  # past the deadline on the vendor's clock, still "starting"
        status = await p.poll(job)
    assert emu.jobs("replicate")[0].data["headers"]["cancel-after"] == "1s"
    assert status.state == "canceled" and status.raw["status"] == "aborted"
    assert "aborted" in str(status.error) and "not charged" in str(status.error)
    assert emu.stats("replicate")["charged_usd"] == 0


async def test_content_policy_failure_is_content_policy_error(emu, tmp_path):
    emu.inject("replicate", "job", "policy")
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        with pytest.raises(ContentPolicyError) as info:
            await run_job(p, request_for("replicate"), tmp_path / "out.mp4")
    job_id = emu.jobs("replicate")[0].id
    text = str(info.value)
    assert "replicate" in text and job_id in text and "(E005)" in text and KEY not in text
    assert info.value.job_id == job_id


async def test_failed_prediction_is_job_failed_error(emu, tmp_path):
    emu.inject("replicate", "job", "fail", message="CUDA out of memory (E1001)")
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        with pytest.raises(JobFailedError) as info:
            await run_job(p, request_for("replicate"), tmp_path / "out.mp4")
    assert "E1001" in str(info.value) and emu.jobs("replicate")[0].id in str(info.value)
    assert not isinstance(info.value, ContentPolicyError)


async def test_bad_key_is_auth_error_without_the_key(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client, key="r8_not-the-right-token")
        with pytest.raises(AuthError) as info:
            await p.submit(request_for("replicate"))
    text = str(info.value)
    assert "replicate" in text and "Unauthenticated" in text and "r8_not-the-right" not in text
    assert emu.stats("replicate")["submits"] == 0


async def test_402_billing_problem_details_is_insufficient_credit(emu):
    emu.inject("replicate", "submit", "http", status=402,
               message="You need to set up billing to run this model.")
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for("replicate"))
    assert "Billing required: You need to set up billing" in str(info.value)
    assert emu.stats("replicate")["submits"] == 0  # refused, never resent


async def test_429_body_retry_after_is_honoured_without_a_header(emu, tmp_path):
    emu.inject("replicate", "submit", "http", status=429,
               message="Request was throttled. Your rate limit resets in ~1s.")
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        started = time.monotonic()
        await p.submit(request_for("replicate"))
        waited = time.monotonic() - started
    assert waited >= 0.9  # FAST_RETRY alone would wait ~0.02 s
    assert emu.stats("replicate")["submits"] == 1


async def test_429_that_persists_carries_the_body_hint(emu):
    emu.inject("replicate", "submit", "http", status=429, times=3,
               message="Request was throttled. Your rate limit resets in ~0.1s.")
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        with pytest.raises(RateLimitedError) as info:
            await p.submit(request_for("replicate"))
    assert info.value.retry_after == pytest.approx(0.1)


async def test_float_duration_is_refused_by_the_schema(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        with pytest.raises(InvalidRequestError) as info:
            await p.submit(request_for("replicate", params={"duration": 6.0}))
    assert "input.duration" in str(info.value) and "integer" in str(info.value)


async def test_unknown_model_is_not_found(emu):
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        with pytest.raises(NotFoundError):
            await p.submit(request_for("replicate", vendor_model="nobody/no-such-model"))


def test_every_catalog_model_has_a_known_input_shape():
    """A model added to replicate.yaml needs its field names in SHAPES (else defaults apply)."""
    from providers.catalog import load_catalog
    from providers.replicate import SHAPES

    for key, info in load_catalog()["replicate"].models.items():
        model = info.vendor_model.partition(":")[0]
        assert model in SHAPES, f"{key}: add {model} to providers/replicate.py SHAPES"
        assert SHAPES[model].image == emu_replicate.IMAGE_FIELDS[model]
