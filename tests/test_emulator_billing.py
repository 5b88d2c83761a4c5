"""The emulator bills like the vendors, from its own table (tests/emulator/prices.py): vendors
without a cancel endpoint answer a cancel as they would and still bill, NanoGPT bills at
submit, every submit fault that follows acceptance leaves a job that bills, and the table
really differs from the product's estimates where the vendors' public figures do."""

from __future__ import annotations

import httpx
import pytest

from providers.catalog import load_catalog
from tests.emulator.core import Emulator
from tests.emulator.prices import PRICES
from tests.provider_kit import make_provider, request_for


async def _job(emu: Emulator, vendor: str, **kw: object):
    async with httpx.AsyncClient() as client:
        p = make_provider(vendor, emu, client)
        job = await p.submit(request_for(vendor, **kw))
    return job, emu.get_job(vendor, job.job_id)


@pytest.mark.parametrize("vendor, method, path", [
    ("perf", "POST", "/v1/video/generations/{id}/cancel"),
    ("perf", "DELETE", "/v1/video/generations/{id}"),
    ("videogenapi", "POST", "/api/v1/cancel/{id}"),
    ("gemini", "POST", "/v1beta/models/{model}/operations/{id}:cancel"),
])
async def test_vendors_without_cancel_answer_404_or_405_and_still_bill(
        emu: Emulator, vendor: str, method: str, path: str) -> None:
    emu.configure(latency=0.5)
    job, emu_job = await _job(emu, vendor)
    url = f"{emu.url}/{vendor}" + path.format(id=emu_job.id, model=emu_job.model)
    async with httpx.AsyncClient() as client:
        resp = await client.request(method, url, headers={"Authorization": "Bearer x"})
    assert resp.status_code in (404, 405), resp.text
    emu_job.created -= 100  # the job ran to its end regardless
    assert emu.state(emu_job) == "succeeded" and emu.charged(emu_job)
    assert emu.stats(vendor)["cancels"] == 0


async def test_runware_has_no_cancel_task(emu: Emulator) -> None:
    job, emu_job = await _job(emu, "runware")
    async with httpx.AsyncClient() as client:
        resp = await client.post(emu.base_url("runware"), json=[
            {"taskType": "cancel", "taskUUID": emu_job.id}],
            headers={"Authorization": "Bearer test-runware-key"})
    assert resp.status_code == 400 and resp.json()["errors"][0]["code"] == "invalidTaskType"
    emu_job.created -= 100
    assert emu.charged(emu_job)


async def test_nanogpt_bills_at_submit_and_never_refunds(emu: Emulator) -> None:
    emu.configure(latency=30)
    emu.inject("nanogpt", "job", "fail")
    job, emu_job = await _job(emu, "nanogpt", duration=5)
    assert emu.state(emu_job) in ("queued", "running")
    assert emu.stats("nanogpt")["charged_usd"] == pytest.approx(1.40)  # already deducted
    emu_job.created -= 100
    assert emu.state(emu_job) == "failed" and emu.charged(emu_job)


@pytest.mark.parametrize("kind, params", [("accept_then_http", {"status": 500}),
                                          ("accept_then_no_id", {}),
                                          ("accept_then_garbage", {})])
@pytest.mark.parametrize("vendor", ["fal", "replicate", "runway", "luma", "huggingface", "perf",
                                    "nanogpt", "videogenapi", "runware", "gemini"])
async def test_accept_faults_leave_one_job_that_bills_on_every_vendor(
        emu: Emulator, vendor: str, kind: str, params: dict) -> None:
    emu.inject(vendor, "submit", kind, **params)
    model = "veo_3" if vendor == "videogenapi" else None  # its default model is free
    async with httpx.AsyncClient() as client:
        p = make_provider(vendor, emu, client)
        try:
            job = await p.submit(request_for(vendor, model=model))
        except Exception as exc:  # what the adapter makes of it is the product's business
            job = exc
    assert emu.stats(vendor)["jobs"] == 1 and emu.stats(vendor)["errors_injected"] == 1
    [emu_job] = emu.jobs(vendor)
    if kind != "accept_then_no_id" and vendor != "runware":
        # the answer carried no usable id (Runware's adapter names the task itself)
        assert getattr(job, "job_id", None) != emu_job.id
    emu_job.created -= 100
    assert emu.charged(emu_job) and emu.stats(vendor)["charged_usd"] > 0


def test_unknown_model_is_a_vendor_404_not_a_free_job(emu: Emulator) -> None:
    resp = httpx.post(f"{emu.base_url('fal')}/fal-ai/made-up/model",
                      json={"prompt": "x"}, headers={"Authorization": "Key test-fal-key"})
    assert resp.status_code == 404 and emu.stats("fal")["jobs"] == 0


def test_prices_differ_from_the_catalog_where_public_figures_do() -> None:
    """The deliberate differences documented in prices.py stay different; a test that
    compares the product's estimate with the emulator's charge can then fail."""
    cat = load_catalog()
    hailuo = cat["runware"].models["hailuo-2.3"]
    assert PRICES["runware"][hailuo.vendor_model].usd(6, "768p") == pytest.approx(0.50)
    assert hailuo.price.estimate(6, "768p") != pytest.approx(0.50)
    ray2 = cat["luma"].models["ray-2"]
    assert PRICES["luma"]["ray-2"].usd(5, "720p") == pytest.approx(1.00)
    assert ray2.price.estimate(5, "720p") != pytest.approx(1.00)
    # and every catalog model has a price of its own in the emulator (none is free by accident)
    for provider, c in cat.items():
        if provider in ("local", "openai"):
            continue
        for info in c.models.values():
            for name in filter(None, (info.vendor_model, info.vendor_model_image)):
                assert name in PRICES[provider], f"{provider}:{name}"
